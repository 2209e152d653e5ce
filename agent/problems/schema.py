"""Pydantic schemas of the two accepted formats of problem definitions.

- NPD's monitor JSON, accepted unchanged: ``NpdLogMonitor`` (system-log-monitor, plugins kmsg,
  journald, filelog) and ``NpdCustomMonitor`` (custom-plugin-monitor). Like NPD's Go decoder,
  unknown keys are ignored (taint fields, skip_initial_status, ...), so any NPD config loads.
- nodemedic's YAML (``monitors:`` and ``checks:`` lists): strict (unknown keys are errors, so a
  typo is caught by ``check-rules``), snake_case, with the extensions NPD lacks: recovery rules,
  ``clear_after``, ``min_count``/``window`` and explicit workload ``attribute``.

agent.problems.loader validates files against them and builds agent.problems.model types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.structs.durations import parse_duration

_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
_CAMEL = r"^[A-Z][A-Za-z0-9]{0,127}$"


def _duration(v: Any) -> float:
    return parse_duration(v)


class _Npd(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class NpdCondition(_Npd):
    type: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    message: str = ""


class NpdLogRule(_Npd):
    type: Literal["temporary", "permanent"]
    condition: str = ""
    reason: str = Field(min_length=1)
    pattern: str = Field(min_length=1)


class NpdLogMonitor(_Npd):
    plugin: Literal["kmsg", "journald", "filelog"] = "filelog"
    plugin_config: dict[str, str] = Field(default_factory=dict, alias="pluginConfig")
    log_path: str = Field(default="", alias="logPath")
    lookback: float = 0.0
    buffer_size: int = Field(default=10, ge=1, le=1000, alias="bufferSize")
    source: str = Field(min_length=1)
    conditions: list[NpdCondition] = Field(default_factory=list)
    rules: list[NpdLogRule] = Field(default_factory=list)

    _lookback = field_validator("lookback", mode="before")(_duration)


class NpdPluginConfig(_Npd):
    invoke_interval: float = 30.0
    timeout: float = 5.0
    max_output_length: int = Field(default=80, ge=1, le=65536)
    concurrency: int = Field(default=3, ge=1, le=64)

    _durations = field_validator("invoke_interval", "timeout", mode="before")(_duration)


class NpdCheckRule(_Npd):
    type: Literal["temporary", "permanent"]
    condition: str = ""
    reason: str = Field(min_length=1)
    path: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    timeout: float | None = None

    _timeout = field_validator("timeout", mode="before")(
        lambda v: None if v is None else parse_duration(v))


class NpdCustomMonitor(_Npd):
    plugin: Literal["custom"]
    plugin_config: NpdPluginConfig = Field(default_factory=NpdPluginConfig, alias="pluginConfig")
    source: str = Field(min_length=1)
    conditions: list[NpdCondition] = Field(default_factory=list)
    rules: list[NpdCheckRule] = Field(default_factory=list)


# --------------------------------------------------------------------------- nodemedic YAML


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Condition(_Strict):
    type: str = Field(pattern=_CAMEL)
    reason: str = Field(pattern=_CAMEL)
    message: str = Field(default="", max_length=1024)


class Source(_Strict):
    plugin: Literal["kmsg", "journald", "filelog"]
    path: str = ""
    identifiers: list[str] = Field(default_factory=list, max_length=32)
    units: list[str] = Field(default_factory=list, max_length=32)
    lookback: float = 300.0
    message: str = ""  # filelog: regex whose group 1 is the message (NPD pluginConfig.message)

    _lookback = field_validator("lookback", mode="before")(_duration)


class LogRuleYaml(_Strict):
    type: Literal["temporary", "permanent", "recovery"]
    reason: str = Field(pattern=_CAMEL)
    pattern: str = Field(min_length=1, max_length=4096)
    condition: str = ""
    message: str = Field(default="", max_length=1024)
    min_count: int = Field(default=1, ge=1, le=10000)
    window: float = 0.0
    clear_after: float | None = None
    attribute: Literal["oom", "hung", "none"] = "none"

    _durations = field_validator("window", "clear_after", mode="before")(
        lambda v: None if v is None else parse_duration(v))


class MonitorYaml(_Strict):
    name: str = Field(pattern=_NAME)
    source: Source
    buffer_size: int = Field(default=10, ge=1, le=1000)
    conditions: list[Condition] = Field(default_factory=list)
    rules: list[LogRuleYaml] = Field(min_length=1)


class CheckRuleYaml(_Strict):
    type: Literal["temporary", "permanent"]
    reason: str = Field(pattern=_CAMEL)
    argv: list[str] = Field(min_length=1, max_length=64)
    condition: str = ""
    timeout: float | None = None

    _timeout = field_validator("timeout", mode="before")(
        lambda v: None if v is None else parse_duration(v))


class CheckMonitorYaml(_Strict):
    name: str = Field(pattern=_NAME)
    interval: float = 30.0
    timeout: float = 5.0
    max_output: int = Field(default=80, ge=1, le=65536)
    concurrency: int = Field(default=3, ge=1, le=64)
    conditions: list[Condition] = Field(default_factory=list)
    rules: list[CheckRuleYaml] = Field(min_length=1)

    _durations = field_validator("interval", "timeout", mode="before")(_duration)


class ProblemsFile(_Strict):
    """One nodemedic problems YAML document."""

    monitors: list[MonitorYaml] = Field(default_factory=list)
    checks: list[CheckMonitorYaml] = Field(default_factory=list)
