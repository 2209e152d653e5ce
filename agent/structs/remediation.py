"""What the rules engine asks for and what the safety gate decides: pure data.

Flow (docs/actions.md): agent.rules.engine turns a Snapshot into ``ActionRequest``s;
agent.safety.gate turns each request into a ``Decision``; agent.actions executes allowed ones and
returns an ``Outcome``; agent.runtime records all three (metric, log, Event, annotation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.structs.actionparams import ACTION_MODELS, ActionParams

TargetKind = Literal["node", "pod", "service"]
Severity = Literal["info", "warning", "critical"]

# Action type names (settings, the action registry), from the one declaration of each action.
ACTION_TYPES = tuple(ACTION_MODELS)

@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action: its validated parameter model (agent.structs.actionparams), which names the
    action (``type``). A rule's comes from the loader; a request made in code (the failover
    path, a ledger restored from JSON, tests) is built with :meth:`of`, which validates through
    the same model, so a bad parameter fails where the request is made, not in the action."""

    params: ActionParams

    @property
    def type(self) -> str:
        """The action's name (``drain``, ``evict-pod``, ...)."""
        return self.params.action_name()

    @classmethod
    def of(cls, name: str, params: Mapping[str, Any] | None = None) -> ActionSpec:
        """The action ``name`` with ``params`` (as a rule writes them: ``{"timeout": "1h"}``),
        validated by the action's model; ValueError (a pydantic ValidationError) on an unknown
        action or a parameter the model refuses."""
        model = ACTION_MODELS.get(name)
        if model is None:
            raise ValueError(f"no action named {name!r}")
        return cls(model.model_validate({**(params or {}), "type": name}))

    def with_params(self, **changes: Any) -> ActionSpec:
        """The same action with some parameters replaced (a rendered template), still typed."""
        return ActionSpec(self.params.model_copy(update=changes))


@dataclass(frozen=True, slots=True)
class Target:
    """What an action applies to. For pods ``namespace``/``name`` are set; ``node`` always is."""

    kind: TargetKind
    node: str
    namespace: str = ""
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.kind == "node":
            return f"node/{self.node}"
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """The engine's request to run one action for one firing rule on one target.

    ``step`` is the index in the rule's escalation ladder (0 = first action set); ``undo`` marks
    requests made after the healthy delay to reverse what the rule did (e.g. uncordon).
    ``observed`` carries the values that made the rule fire, for Events and logs; ``metrics``
    names every metric the rule reads (its conditions and ``divide_by``): the stage refuses the
    request as ``missing_data`` while a collector behind one of them failed. A request made in
    code reads nothing (``()``); ``None`` means unknown (restored from a state written before
    requests recorded it): then any failed collector refuses it.
    """

    rule: str
    action: ActionSpec
    target: Target
    step: int = 0
    severity: Severity = "warning"
    dry_run: bool = False
    undo: bool = False
    observed: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    runbook: str = ""
    cooldown_seconds: float = 0.0
    max_per_hour: int = 0  # 0 = no per-rule hourly cap beyond the global one
    # Pod Event reasons meaning "a pod shows this rule's problem" (rule option workload_reasons):
    # before a disruptive node action, agent.safety.attribution looks for the same owner's pods
    # showing them on other nodes. Empty: the problem is the node's, no check.
    workload_reasons: tuple[str, ...] = ()
    metrics: tuple[str, ...] | None = ()


DecisionKind = Literal["allowed", "dry_run", "denied"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The safety gate's verdict on one request; ``reason`` is a stable machine-readable word
    (e.g. ``ok``, ``dry_run``, ``paused``, ``cooldown``, ``rule_hourly_cap``, ``cluster_cap``,
    ``missing_data``, ``not_leader``) and ``detail`` a sentence for humans."""

    request: ActionRequest
    kind: DecisionKind
    reason: str
    detail: str = ""
    # The action the gate looked up for the request (an agent.actions.base.Action, typed
    # loosely: agent.structs imports nothing of agent.actions); the executor and the ledger use
    # it instead of looking it up again. None when the gate found none (a denial).
    action: object = field(default=None, compare=False, repr=False)


OutcomeKind = Literal["success", "failure", "retry", "noop", "skipped"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of executing (or simulating) one allowed request."""

    decision: Decision
    kind: OutcomeKind
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
