"""The parameters of every rule action, declared once: one pydantic model per action.

Each model is what a rule writes for one action (``{type: drain, timeout: 10m, ...}``): its class
docstring and field descriptions are the reference in docs/ (agent.docs_schema), its fields and
validators the rule schema fragment (agent.rules.schema builds rules/schema.json and validates
rule files with them, once, at load), and its class variables say where the action may be used
(``rule_targets``: node and/or pod rules; ``in_undo``: allowed in undo lists, which may only
reverse or report, never disrupt). The validated model travels in
agent.structs.remediation.ActionSpec to the action's ``plan()``/``execute()`` (agent.actions: each
action class names its model with ``@action(Model)`` and reads its typed attributes); requests
made in code validate through the same model (``ActionSpec.of``). ``params()`` is the mapping of
its parameters (durations in seconds, without ``type``) that logs and the ledger record. Pure
data: imported by agent.rules (which must not import agent.actions) and agent.actions.

Design: actions are flat mappings discriminated by ``type`` so each one validates on its own; a
``drain`` *requires* ``grace_period_cap`` and ``timeout`` (there is no unbounded drain); units are
unit names, templates ``str.format`` fields from a fixed list, webhooks URLs: nothing runs as code.
"""

from __future__ import annotations

import math
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.structs.durations import parse_duration
from agent.structs.templates import check_template

MAX_DURATION_SECONDS = 7 * 86400.0
MAX_DRAIN_GRACE_SECONDS = 3600.0
MAX_DRAIN_TIMEOUT_SECONDS = 4 * 3600.0
MAX_WEBHOOK_TIMEOUT_SECONDS = 30.0

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


class StrictModel(BaseModel):
    """Base of every rule-file model (here and in agent.rules.schema)."""

    # strict: YAML already yields proper types, so "yes" must not become a bool or 5 a string.
    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=False, allow_inf_nan=False
    )


_NAMES: dict[type[ActionParams], str] = {}


class ActionParams(StrictModel):
    """One action as a rule (or code, through ActionSpec.of) wrote it, validated."""

    rule_targets: ClassVar[tuple[str, ...]] = ("node", "pod")
    in_undo: ClassVar[bool] = False

    @classmethod
    def action_name(cls) -> str:
        """The action's name: the one value of its ``type`` field (``ActionSpec.type``, read
        for every request: cached)."""
        name = _NAMES.get(cls)
        if name is None:
            name = _NAMES[cls] = str(typing.get_args(cls.model_fields["type"].annotation)[0])
        return name

    def params(self) -> dict[str, Any]:
        """The validated parameters (durations in seconds), without ``type``: what logs and the
        ledger record (actions read the typed attributes)."""
        return self.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)


def _nodemedic_key(v: str) -> str:
    if not _NODEMEDIC_KEY.match(v):
        raise ValueError("must be nodemedic.io/<name> (letters, digits, -, _, .; max 63)")
    return v


NodemedicKey = Annotated[str, BeforeValidator(lambda v: _nodemedic_key(v) if isinstance(v, str)
                                              else v)]


class Cordon(ActionParams):
    """Mark this node unschedulable (recorded as done by nodemedic)."""
    rule_targets = ("node",)

    type: Literal["cordon"]


class Uncordon(ActionParams):
    """Make this node schedulable again, only if nodemedic cordoned it."""
    in_undo = True

    type: Literal["uncordon"]


class Taint(ActionParams):
    """Add a ``nodemedic.io/`` taint to this node."""
    rule_targets = ("node",)

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


class Untaint(ActionParams):
    """Remove a ``nodemedic.io/`` taint from this node."""
    in_undo = True

    type: Literal["untaint"]
    key: NodemedicKey


class Drain(ActionParams):
    """Cordon, then evict this node's pods through the Eviction API (PDBs respected, never a
    force delete)."""
    rule_targets = ("node",)

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


class EvictPod(ActionParams):
    """Evict the pod the rule fired for (pod-target rules only)."""
    rule_targets = ("pod",)

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


class RestartService(ActionParams):
    """Restart a systemd unit on this node; the unit must also be in the agent's allow-list."""
    rule_targets = ("node",)  # restarting a node service disrupts every pod

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


class Annotate(ActionParams):
    """Set a ``nodemedic.io/`` annotation on the node, the pod, or the pod's owner."""
    in_undo = True

    type: Literal["annotate"]
    key: NodemedicKey
    value: str = Field(description="template: {rule}, {value}, {pod}, ...")
    target: Literal["node", "pod", "owner"] = "node"

    @field_validator("value")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)


class Event(ActionParams):
    """Emit a Kubernetes Event on the node (node rules) or the pod (pod rules)."""
    in_undo = True

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


class Webhook(ActionParams):
    """POST the request as JSON to a URL, with a timeout."""
    in_undo = True

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


Action = Annotated[
    Cordon | Uncordon | Taint | Untaint | Drain | EvictPod | RestartService | Annotate | Event
    | Webhook,
    Field(discriminator="type"),
]

# Every action by name, in the order above (the one list of action types).
ACTION_MODELS: dict[str, type[ActionParams]] = {
    m.action_name(): m for m in typing.get_args(typing.get_args(Action)[0])
}
# Actions that change the node for everyone (or, restart-service, disrupt every pod on it): not
# allowed from a pod-target rule, one bad pod must never cordon or drain a node.
NODE_ONLY = frozenset(n for n, m in ACTION_MODELS.items() if m.rule_targets == ("node",))
POD_ONLY = frozenset(n for n, m in ACTION_MODELS.items() if m.rule_targets == ("pod",))
UNDO_ACTIONS = frozenset(n for n, m in ACTION_MODELS.items() if m.in_undo)


def action_params(action: ActionParams) -> dict[str, Any]:
    """The validated parameters of an action (durations in seconds), without ``type``."""
    return action.params()
