"""Pydantic models of the YAML rule format, and the JSON Schema (rules/schema.json) built from them.

Called by agent.rules.loader (which validates parsed YAML against :class:`RuleFile` and locates
every error at its file:line:column), by agent.rules.engine (which compiles validated rules) and
by ``python -m agent.rules.schema`` that regenerates rules/schema.json for editors. The actions'
models (their parameters, where they may be used) are not declared here but once each in
agent.structs.actionparams, shared with agent.actions; this module puts them into rules.

Design notes (how others express the same ideas, and what we took):
- medik8s NodeHealthCheck: ``unhealthyConditions`` with a ``duration`` and
  ``escalatingRemediations`` ordered by ``order`` with a ``timeout`` each. We keep the
  duration as ``for:`` (the Prometheus spelling users already know) and the ladder as
  ``escalate: [{after, actions}]`` where ``after`` is the timeout of the previous step.
- draino: node conditions plus a drain with ``--max-grace-period`` and a drain buffer. Our
  ``drain`` *requires* ``grace_period_cap`` and ``timeout``: there is no unbounded drain.
- Robusta playbooks: ``triggers`` + an ordered ``actions`` list whose items name the action
  with its parameters. StackStorm rules: ``criteria`` (key/type/pattern) + one ``action`` with
  ``parameters``. We use structured conditions (``metric``/``labels``/``op``/``value`` combined
  with ``all``/``any``/``not``) rather than a PromQL string, so the JSON Schema can autocomplete
  every field and the loader can point at the exact line of a mistake; actions are flat
  mappings discriminated by ``type`` (``{type: cordon}``) so each one validates on its own.
- None of them has "undo after healthy for N": we add ``healthy_for`` plus per-step ``undo``
  lists, so an uncordon only ever reverses a cordon this rule's ladder actually reached.
- Nothing in a rule is executed as code: units are unit names, templates are
  ``str.format`` fields from a fixed list, webhooks are URLs. Unknown keys are errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from agent.structs.actionparams import (
    ACTION_MODELS,
    NODE_ONLY,
    POD_ONLY,
    UNDO_ACTIONS,
    Action,
    Duration,
    action_params,
)
from agent.structs.actionparams import StrictModel as _Model
from agent.structs.gatespec import parse_selector, parse_window
from agent.structs.remediation import ACTION_TYPES
from agent.structs.templates import TEMPLATE_FIELDS, check_template, render_template

# Re-exported for agent.rules.loader/engine and agent.docs_schema: actions are declared in
# agent.structs.actionparams, templates in agent.structs.templates.
__all__ = ["ACTION_MODELS", "NODE_ONLY", "POD_ONLY", "TEMPLATE_FIELDS", "UNDO_ACTIONS", "Action",
           "Duration", "action_params", "check_template", "render_template"]

# Relative ``runbook:`` values are resolved against this (overridable per file).
RUNBOOK_BASE_URL = "https://github.com/nodemedic/nodemedic/blob/main/"

# Safety floors and caps: values outside these are rejected by check-rules.
MIN_COOLDOWN_SECONDS = 60.0
MAX_PER_HOUR_LIMIT = 60
MIN_WINDOW_SECONDS = 30.0
MAX_WINDOW_SECONDS = 86400.0
MIN_ESCALATION_AFTER_SECONDS = 30.0


_RULE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_METRIC_NAME = r"^nodemedic_[a-zA-Z0-9_]+$"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


# --------------------------------------------------------------------------- conditions

MatchOp = Literal["=", "!=", "=~", "!~"]
CompareOp = Literal[">", ">=", "<", "<=", "==", "!="]


class Matcher(_Model):
    """One label matcher with an explicit operator: ``{"!~": "kube-.*"}`` (exactly one key)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    eq: str | None = Field(default=None, alias="=")
    ne: str | None = Field(default=None, alias="!=")
    regex: str | None = Field(default=None, alias="=~")
    not_regex: str | None = Field(default=None, alias="!~")

    @model_validator(mode="after")
    def _exactly_one(self) -> Matcher:
        chosen = [(op, v) for op, v in self.items() if v is not None]
        if len(chosen) != 1:
            raise ValueError('a matcher needs exactly one of "=", "!=", "=~", "!~"')
        op, value = chosen[0]
        if op in ("=~", "!~"):
            if len(value) > 512:
                raise ValueError("regular expression longer than 512 characters")
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression: {exc}") from exc
        return self

    def items(self) -> list[tuple[MatchOp, str | None]]:
        return [("=", self.eq), ("!=", self.ne), ("=~", self.regex), ("!~", self.not_regex)]

    def op_value(self) -> tuple[MatchOp, str]:
        for op, value in self.items():
            if value is not None:
                return op, value
        raise AssertionError("validated matcher has no operator")


LabelMatch = Annotated[
    Annotated[str, Tag("equals")] | Annotated[Matcher, Tag("matcher")],
    Discriminator(
        lambda v: "equals" if isinstance(v, str) else "matcher" if isinstance(v, (dict, Matcher))
        else None,
        custom_error_type="label_matcher",
        custom_error_message='expected a string (equality) or {"=", "!=", "=~", "!~": string}',
    ),
]


class MetricCondition(_Model):
    """A comparison over the series of one metric (optionally ``rate``/``increase`` over a window,
    optionally divided by another metric with the same labels)."""

    metric: str = Field(pattern=_METRIC_NAME, description="a nodemedic_ metric name")
    labels: dict[str, LabelMatch] = Field(
        default_factory=dict,
        description='label -> value (equality) or {"=", "!=", "=~", "!~": value}',
    )
    function: Literal["value", "rate", "increase"] = "value"
    window: Duration | None = Field(default=None, description="required for rate/increase")
    divide_by: str | None = Field(
        default=None, pattern=_METRIC_NAME,
        description="divide by this metric's series with identical labels (ratios)",
    )
    aggregate: Literal["none", "sum", "max", "min", "avg", "count"] = Field(
        default="none",
        description="combine the target's series before comparing (none = any series)",
    )
    op: CompareOp
    value: float
    clear: float | None = Field(
        default=None,
        description="hysteresis: once firing, stay firing until the value crosses this",
    )

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, LabelMatch]) -> dict[str, LabelMatch]:
        for name in v:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"bad label name {name!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MetricCondition:
        if self.function != "value":
            if self.window is None:
                raise ValueError(f"function {self.function} needs a window (e.g. window: 10m)")
            if not MIN_WINDOW_SECONDS <= self.window <= MAX_WINDOW_SECONDS:
                raise ValueError("window must be between 30s and 24h")
        elif self.window is not None:
            raise ValueError("window is only used with function rate or increase")
        if self.clear is not None:
            if self.op in ("==", "!="):
                raise ValueError("clear (hysteresis) needs op >, >=, < or <=")
            if self.op in (">", ">=") and self.clear > self.value:
                raise ValueError(f"clear must be <= value for op {self.op}")
            if self.op in ("<", "<=") and self.clear < self.value:
                raise ValueError(f"clear must be >= value for op {self.op}")
        return self


class AllOf(_Model):
    """True when every sub-condition is true for the target."""

    all: list[Condition] = Field(min_length=1, max_length=32)


class AnyOf(_Model):
    """True when at least one sub-condition is true for the target."""

    any: list[Condition] = Field(min_length=1, max_length=32)


class NotOf(_Model):
    """True when the sub-condition is false for the target."""

    not_: Condition = Field(alias="not")


def _condition_tag(v: Any) -> str | None:
    if isinstance(v, BaseModel):
        return {MetricCondition: "metric-condition", AllOf: "all-of", AnyOf: "any-of",
                NotOf: "not-of"}.get(type(v))
    if not isinstance(v, dict):
        return None
    for key, tag in (("metric", "metric-condition"), ("all", "all-of"), ("any", "any-of"),
                     ("not", "not-of")):
        if key in v:
            return tag
    return None


Condition: TypeAlias = Annotated[
    Annotated[MetricCondition, Tag("metric-condition")]
    | Annotated[AllOf, Tag("all-of")]
    | Annotated[AnyOf, Tag("any-of")]
    | Annotated[NotOf, Tag("not-of")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition",
        custom_error_message="expected a condition: a mapping with metric, all, any or not",
    ),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


# --------------------------------------------------------------------------- rules


class EscalationStep(_Model):
    """The next rung of the ladder: run ``actions`` if still firing ``after`` the previous step."""

    after: Duration
    actions: list[Action] = Field(min_length=1, max_length=16)
    undo: list[Action] = Field(default_factory=list, max_length=16)

    @field_validator("after")
    @classmethod
    def _after(cls, v: float) -> float:
        if v < MIN_ESCALATION_AFTER_SECONDS:
            raise ValueError("after must be at least 30s")
        return v


# Validated item by item, so that check-rules points at the bad entry's line.
AlertText = Annotated[str, AfterValidator(lambda v: parse_selector(v).text)]
WindowText = Annotated[str, AfterValidator(lambda v: parse_window(v).text)]


class RuleGates(_Model):
    """This rule's alert gate and maintenance windows (docs/gates.md); added to the global ones
    (--safety.alert-gate-alerts, --safety.allow-windows, --safety.deny-windows)."""

    actions: list[Literal[ACTION_TYPES]] | None = Field(  # type: ignore[valid-type]
        default=None, max_length=len(ACTION_TYPES),
        description="which of this rule's actions the alerts and windows hold "
                    "(default: --safety.gated-actions); a freeze holds disruptive ones anyway")
    alerts: list[AlertText] = Field(
        default_factory=list, max_length=32,
        description='held while one of these fires: NAME or {label="v", severity=~"a|b"}')
    allow_windows: list[WindowText] = Field(
        default_factory=list, max_length=32,
        description="run only inside one of these, e.g. 'Mon-Fri 09:00-17:00 Europe/Berlin'")
    deny_windows: list[WindowText] = Field(
        default_factory=list, max_length=32,
        description="never run inside these, e.g. 'Sat,Sun 00:00-24:00 UTC'")


class Rule(_Model):
    """One remediation rule."""

    name: str = Field(pattern=_RULE_NAME, max_length=63,
                      description="lower-case DNS label; unique across all files")
    description: str = Field(default="", max_length=1024)
    enabled: bool = True
    severity: Literal["info", "warning", "critical"] = "warning"
    runbook: str | None = Field(default=None, description="URL, or a path under the base URL")
    target: Literal["node", "pod"] = Field(
        default="node", description="node: one instance; pod: one instance per namespace/pod"
    )
    when: Condition
    for_: Duration = Field(default=0.0, alias="for")
    resolve: Condition | None = Field(
        default=None, description="separate healthy condition (default: `when` no longer true)"
    )
    healthy_for: Duration = Field(default=300.0, description="healthy this long before undo")
    cooldown: Duration = Field(default=600.0, description="minimum time between two actions")
    max_per_hour: int = Field(default=6, ge=1, le=MAX_PER_HOUR_LIMIT)
    dry_run: bool = False
    workload_reasons: list[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]{0,127}$")]] = Field(
        default_factory=list, max_length=16,
        description="reasons of the Events nodemedic writes on pods (OOMKilling, OOMStorm, "
                    "CPUThrottled...) that mean a pod shows this problem: before a cordon, drain "
                    "or taint, the gate denies it (workload_not_node) when pods of the same owner "
                    "show one of them on other nodes too (docs/safety.md)")
    actions: list[Action] = Field(min_length=1, max_length=16)
    undo: list[Action] = Field(default_factory=list, max_length=16)
    escalate: list[EscalationStep] = Field(default_factory=list, max_length=8)
    gates: RuleGates | None = Field(
        default=None, description="alerts and time windows that hold this rule's actions")

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, v: float) -> float:
        if v < MIN_COOLDOWN_SECONDS:
            raise ValueError("cooldown must be at least 1m (an action loop is worse than none)")
        return v

    @field_validator("runbook")
    @classmethod
    def _runbook(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if re.match(r"^https?://\S+$", v) or re.match(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$", v):
            if ".." in v.split("/"):
                raise ValueError("relative runbook paths must not contain ..")
            return v
        raise ValueError("must be an http(s) URL or a relative path like docs/runbooks/X.md")


class RuleFile(_Model):
    """One YAML document: a list of rules (and optionally the base URL of relative runbooks)."""

    runbook_base_url: str = Field(default=RUNBOOK_BASE_URL, pattern=r"^https?://\S+/$")
    rules: list[Rule] = Field(max_length=1000)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one rule file (what rules/schema.json contains)."""
    schema = RuleFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = RUNBOOK_BASE_URL + "rules/schema.json"
    schema["title"] = "nodemedic rule file"
    return schema


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path) -> None:
    path.write_text(render_json_schema())


if __name__ == "__main__":  # pragma: no cover - `python -m agent.rules.schema rules/schema.json`
    import sys

    write_json_schema(Path(sys.argv[1] if len(sys.argv) > 1 else "rules/schema.json"))
