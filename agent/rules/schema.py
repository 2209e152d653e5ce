"""Pydantic models of the YAML rule format, and the JSON Schema (rules/schema.json) built from them.

Called by agent.rules.loader (which validates parsed YAML against :class:`RuleFile` and locates
every error at its file:line:column), by agent.rules.engine (which compiles validated rules) and
by ``python -m agent.rules.schema`` that regenerates rules/schema.json for editors.

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
import math
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.structs.durations import parse_duration
from agent.structs.gatespec import parse_selector, parse_window
from agent.structs.remediation import ACTION_TYPES

# Relative ``runbook:`` values are resolved against this (overridable per file).
RUNBOOK_BASE_URL = "https://github.com/nodemedic/nodemedic/blob/main/"

# Safety floors and caps: values outside these are rejected by check-rules.
MIN_COOLDOWN_SECONDS = 60.0
MAX_PER_HOUR_LIMIT = 60
MIN_WINDOW_SECONDS = 30.0
MAX_WINDOW_SECONDS = 86400.0
MIN_ESCALATION_AFTER_SECONDS = 30.0
MAX_DURATION_SECONDS = 7 * 86400.0
MAX_DRAIN_GRACE_SECONDS = 3600.0
MAX_DRAIN_TIMEOUT_SECONDS = 4 * 3600.0
MAX_WEBHOOK_TIMEOUT_SECONDS = 30.0
MAX_TEMPLATE_LENGTH = 1024

# Fields an event message / annotation value template may use; filled by the engine.
TEMPLATE_FIELDS = frozenset(
    {"rule", "severity", "node", "target", "namespace", "pod", "container", "metric",
     "value", "step", "runbook", "description"}
)
_TEMPLATE_SAMPLE: dict[str, object] = {
    name: ("x" if name not in ("value", "step") else 1) for name in TEMPLATE_FIELDS
}
_TEMPLATE_SAMPLE["value"] = 1.5

_RULE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_METRIC_NAME = r"^nodemedic_[a-zA-Z0-9_]+$"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_QUALIFIED = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_NODEMEDIC_KEY = re.compile(rf"^nodemedic\.io/{_QUALIFIED}$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# systemd unit names: no spaces, no shell metacharacters, and only .service units.
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,240}\.service$")
_REASON = re.compile(r"^[A-Z][A-Za-z0-9]{0,127}$")
_SHELLISH = re.compile(r"[\s;|&$`<>()'\"]")


def _duration(value: Any) -> float:
    if isinstance(value, (list, dict)):
        raise ValueError("expected a duration like 10s, 2m or 1h30m")
    seconds = parse_duration(value)
    if not math.isfinite(seconds) or seconds > MAX_DURATION_SECONDS:
        raise ValueError("duration longer than 7d is not supported")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "duration: 30s, 2m, 1h30m (or plain seconds)",
        }
    ),
]


def check_template(text: str) -> str:
    """Validate an ``str.format`` template: only names from TEMPLATE_FIELDS, no attribute access,
    no indexing, no nested fields; raise ValueError saying what is wrong."""
    if len(text) > MAX_TEMPLATE_LENGTH:
        raise ValueError(f"template longer than {MAX_TEMPLATE_LENGTH} characters")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc} (write {{{{ and }}}} for literal braces)") from exc
    for _literal, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"unknown template field {{{field_name}}}; allowed: "
                + ", ".join(sorted(TEMPLATE_FIELDS))
            )
        if conversion not in (None, "s", "r"):
            raise ValueError(f"bad conversion !{conversion} in {{{field_name}}}")
        if spec and "{" in spec:
            raise ValueError(f"nested fields are not allowed in {{{field_name}:{spec}}}")
        if spec:
            try:
                format(_TEMPLATE_SAMPLE[field_name], spec)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"bad format spec in {{{field_name}:{spec}}}: {exc}") from exc
    return text


def render_template(text: str, fields: dict[str, object]) -> str:
    """Render a validated template; never raises (a broken render returns the raw template)."""
    values = {name: fields.get(name, "") for name in TEMPLATE_FIELDS}
    try:
        return text.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError):
        return text


class _Model(BaseModel):
    # strict: YAML already yields proper types, so "yes" must not become a bool or 5 a string.
    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=False, allow_inf_nan=False
    )


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


# --------------------------------------------------------------------------- actions


def _nodemedic_key(v: str) -> str:
    if not _NODEMEDIC_KEY.match(v):
        raise ValueError("must be nodemedic.io/<name> (letters, digits, -, _, .; max 63)")
    return v


NodemedicKey = Annotated[str, BeforeValidator(lambda v: _nodemedic_key(v) if isinstance(v, str)
                                              else v)]


class Cordon(_Model):
    """Mark this node unschedulable (recorded as done by nodemedic)."""

    type: Literal["cordon"]


class Uncordon(_Model):
    """Make this node schedulable again, only if nodemedic cordoned it."""

    type: Literal["uncordon"]


class Taint(_Model):
    """Add a ``nodemedic.io/`` taint to this node."""

    type: Literal["taint"]
    key: NodemedicKey
    value: str = ""
    # NoExecute parses (so the error can say why) but the schema does not offer it.
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        json_schema_extra={"enum": ["NoSchedule", "PreferNoSchedule"]})

    @field_validator("effect")
    @classmethod
    def _effect(cls, v: str) -> str:
        if v == "NoExecute":
            raise ValueError("NoExecute evicts pods without consulting PodDisruptionBudgets; "
                             "use NoSchedule with a drain")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        if not _LABEL_VALUE.match(v):
            raise ValueError("taint value must be a label value (max 63 letters, digits, -_.)")
        return v


class Untaint(_Model):
    """Remove a ``nodemedic.io/`` taint from this node."""

    type: Literal["untaint"]
    key: NodemedicKey


class Drain(_Model):
    """Cordon, then evict this node's pods through the Eviction API (PDBs respected, never a
    force delete)."""

    type: Literal["drain"]
    grace_period_cap: Duration = Field(
        description="upper bound on each pod's grace period (at most 1h)")
    timeout: Duration = Field(description="give up (and report) after this long (1m to 4h)")
    ignore_daemonsets: Literal[True] = True
    evict_unmanaged: bool = Field(default=False,
                                  description="also evict pods without a controller (lost!)")

    @model_validator(mode="after")
    def _bounds(self) -> Drain:
        if self.grace_period_cap > MAX_DRAIN_GRACE_SECONDS:
            raise ValueError("grace_period_cap must be at most 1h")
        if not 60.0 <= self.timeout <= MAX_DRAIN_TIMEOUT_SECONDS:
            raise ValueError("timeout must be between 1m and 4h")
        return self


class EvictPod(_Model):
    """Evict the pod the rule fired for (pod-target rules only)."""

    type: Literal["evict-pod"]
    grace_period_cap: Duration = Field(
        description="upper bound on the pod's grace period (at most 1h)")
    timeout: Duration = Field(default=600.0,
                              description="give up retrying after this long (10s to 1h)")

    @field_validator("grace_period_cap")
    @classmethod
    def _cap(cls, v: float) -> float:
        if v > MAX_DRAIN_GRACE_SECONDS:
            raise ValueError("grace_period_cap must be at most 1h")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 10.0 <= v <= MAX_DRAIN_GRACE_SECONDS:
            raise ValueError("timeout must be between 10s and 1h")
        return v


class RestartService(_Model):
    """Restart a systemd unit on this node; the unit must also be in the agent's allow-list."""

    type: Literal["restart-service"]
    unit: str = Field(description="systemd unit name, e.g. kubelet.service")

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        if _SHELLISH.search(v) or not _UNIT.match(v):
            raise ValueError(
                "must be a systemd .service unit name like kubelet.service, never a command line"
            )
        return v


class Annotate(_Model):
    """Set a ``nodemedic.io/`` annotation on the node, the pod, or the pod's owner."""

    type: Literal["annotate"]
    key: NodemedicKey
    value: str = Field(description="template: {rule}, {value}, {pod}, ...")
    target: Literal["node", "pod", "owner"] = "node"

    @field_validator("value")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)


class Event(_Model):
    """Emit a Kubernetes Event on the node (node rules) or the pod (pod rules)."""

    type: Literal["event"]
    reason: str = Field(description="CamelCase reason, e.g. OOMStorm")
    message: str = Field(description="template: {rule}, {value:.1f}, {pod}, ...")
    event_type: Literal["Normal", "Warning"] | None = Field(
        default=None, description="default: Normal for severity info, else Warning")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not _REASON.match(v):
            raise ValueError("must be CamelCase letters and digits, e.g. OOMStorm")
        return v

    @field_validator("message")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)


class Webhook(_Model):
    """POST the request as JSON to a URL, with a timeout."""

    type: Literal["webhook"]
    url: str = Field(description="http:// or https:// URL; must also be in the allow-list")
    timeout: Duration = Field(default=5.0, description="more than 0, at most 30s")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+[^\s]*$", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= MAX_WEBHOOK_TIMEOUT_SECONDS:
            raise ValueError("timeout must be more than 0 and at most 30s")
        return v


ACTION_MODELS: dict[str, type[_Model]] = {
    "cordon": Cordon, "uncordon": Uncordon, "taint": Taint, "untaint": Untaint,
    "drain": Drain, "evict-pod": EvictPod, "restart-service": RestartService,
    "annotate": Annotate, "event": Event, "webhook": Webhook,
}
assert tuple(ACTION_MODELS) == ACTION_TYPES, "schema and agent.structs.remediation disagree"

Action = Annotated[
    Cordon | Uncordon | Taint | Untaint | Drain | EvictPod | RestartService | Annotate | Event
    | Webhook,
    Field(discriminator="type"),
]

# Actions that change the node for everyone: not allowed from a pod-target rule (one bad pod
# must never cordon or drain a node).
NODE_DISRUPTIVE = frozenset({"cordon", "taint", "drain"})
# Not allowed from a pod-target rule either: restarting a node service disrupts every pod.
NODE_ONLY = NODE_DISRUPTIVE | {"restart-service"}
POD_ONLY = frozenset({"evict-pod"})


def action_params(action: BaseModel) -> dict[str, Any]:
    """The validated parameters of an action (durations in seconds), without ``type``."""
    return action.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)


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
