"""Problem definitions as loaded from NPD JSON or nodemedic YAML: pure, frozen data.

Built by agent.problems.npdconfig and agent.problems.yamlconfig, read by the matcher, the
condition state machine, the checks runner and the detector. Both formats load into these same
types, so everything downstream is format-blind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

RuleKind = Literal["temporary", "permanent", "recovery"]
Attribution = Literal["oom", "hung", "none"]
Plugin = Literal["kmsg", "journald", "filelog"]


@dataclass(frozen=True, slots=True)
class ConditionDef:
    """A NodeCondition a monitor owns and its healthy (default) reason and message."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class LogRule:
    """One pattern: a temporary problem (Event), a permanent one (condition True) or a
    recovery line (condition back to its healthy default; nodemedic extension).

    ``min_count``/``window``: the pattern must match this many times within ``window`` seconds
    (e.g. 5 kubelet starts in 20 minutes). ``clear_after``: a permanent condition set by this rule
    returns to healthy after this many seconds without a new match (None = never by time).
    ``attribute``: find the victim's cgroup (OOM kill, hung task) and report a pod's problem
    against the pod instead of the node."""

    kind: RuleKind
    reason: str
    pattern: str
    regex: re.Pattern[str]
    multiline: bool
    condition: str = ""
    min_count: int = 1
    window: float = 0.0
    clear_after: float | None = None
    attribute: Attribution = "none"
    message: str = ""


@dataclass(frozen=True, slots=True)
class LogSource:
    """Where a log monitor reads: the kernel ring buffer, the journal (filtered by syslog
    identifiers and/or units) or a plain file (with an optional message-extracting regex)."""

    plugin: Plugin
    path: str
    identifiers: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    lookback: float = 300.0
    message_regex: re.Pattern[str] | None = None

    @property
    def key(self) -> str:
        """Monitors with the same key share one reader (one journalctl, one kmsg fd)."""
        if self.plugin == "journald":
            ids = ",".join(sorted(self.identifiers))
            units = ",".join(sorted(self.units))
            return f"journald:{ids}:{units}"
        return f"{self.plugin}:{self.path}"


@dataclass(frozen=True, slots=True)
class LogMonitor:
    """A system-log-monitor: one source, a match buffer, conditions and rules."""

    name: str
    file: str
    source: LogSource
    buffer_size: int
    conditions: tuple[ConditionDef, ...]
    rules: tuple[LogRule, ...]


@dataclass(frozen=True, slots=True)
class CheckRule:
    """One custom plugin: argv (path first), per-rule timeout, and what its result sets.
    ``disabled`` names why it will not run (plugin outside the allowlisted directory, ...)."""

    kind: Literal["temporary", "permanent"]
    reason: str
    argv: tuple[str, ...]
    timeout: float
    condition: str = ""
    disabled: str = ""


@dataclass(frozen=True, slots=True)
class CheckMonitor:
    """A custom-plugin-monitor: NPD's protocol (exit 0 OK, 1 problem, other unknown)."""

    name: str
    file: str
    interval: float
    timeout: float
    max_output: int
    concurrency: int
    conditions: tuple[ConditionDef, ...]
    rules: tuple[CheckRule, ...]


@dataclass(frozen=True, slots=True)
class ProblemSet:
    """Everything loaded from ``--problems.dir``."""

    log_monitors: tuple[LogMonitor, ...] = ()
    check_monitors: tuple[CheckMonitor, ...] = ()
    files: tuple[str, ...] = field(default_factory=tuple)

    def conditions(self) -> dict[str, ConditionDef]:
        """Every condition type we own, first definition wins (several NPD monitors declare
        ReadonlyFilesystem; they share one condition as they do in NPD)."""
        out: dict[str, ConditionDef] = {}
        monitors: tuple[LogMonitor | CheckMonitor, ...] = (*self.log_monitors,
                                                           *self.check_monitors)
        for m in monitors:
            for c in m.conditions:
                out.setdefault(c.type, c)
        return out

    def __len__(self) -> int:
        return len(self.log_monitors) + len(self.check_monitors)
