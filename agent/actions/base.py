"""The action interface: a pure ``plan()`` and an idempotent ``execute()``, plus shared helpers.

Implemented by one module per action under agent/actions/ (registered with
``agent.actions.registry.action`` on the action's parameter model); called only by
agent.safety.gate (plan, to validate and explain) and agent.actions.executor (execute, after the
gate allowed the request, for the remediation stage and the failover leader alike). Each action
reads its request's validated parameter model as typed attributes (``params_of``): types,
ranges and template fields are the model's checks; an action checks what depends on this node
and its settings (allow-lists, the grace cap, the target) and keeps its safety boundaries
(``check_key``: nodemedic only writes its own keys).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from agent.kube.nodes import ensure_annotations
from agent.settings import Settings
from agent.structs.actionparams import ActionParams
from agent.structs.remediation import (
    ActionRequest,
    Decision,
    Outcome,
    OutcomeKind,
    TargetKind,
)

# Every key nodemedic writes on Kubernetes objects lives under this prefix (DESIGN.md §5).
PREFIX = "nodemedic.io/"
CORDONED_BY = PREFIX + "cordoned-by"
ADMIN_UNCORDONED = PREFIX + "uncordoned-by-admin"
TAINTED_BY = PREFIX + "tainted-by"

P = TypeVar("P", bound=ActionParams)


__all__ = ["ensure_annotations"]  # re-exported for actions that edit annotations


class InvalidParams(ValueError):
    """The request's parameters or target cannot be used by this action (never executed)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What an action would change, for dry-run output, logs and Events."""

    action: str
    target: str
    summary: str
    changes: tuple[str, ...] = ()


@dataclass
class ActionContext:
    """What execute() gets: API client (None when no API), node, settings and injectable parts.

    ``systemctl`` is the binary restart-service runs (tests point it at a recording script);
    ``http`` is the session webhooks use; ``progress`` receives drain progress for the gauges;
    ``started_at`` is when a resumed multi-pass action (drain, evict-pod retries) first started.
    """

    api: Any
    node_name: str
    settings: Settings
    systemctl: str = "/bin/systemctl"
    http: Any = None
    progress: Callable[[str, int, float], None] | None = None
    now: Callable[[], float] = time.time
    started_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Action(ABC):
    """One action type. Subclasses set the class attributes and implement plan/execute."""

    name: ClassVar[str] = ""  # set by the registry from the model
    # Its parameters as rules write them (agent.structs.actionparams), set by ``@action(model)``.
    params_model: ClassVar[type[ActionParams]]
    targets: ClassVar[tuple[TargetKind, ...]] = ("node",)
    needs_api: ClassVar[bool] = True
    # Disruptive actions count against the global hourly cap; informational ones do not, so an
    # Event storm can never use up the budget a cordon needs.
    disruptive: ClassVar[bool] = False
    # Actions that make this node unschedulable are checked against the cluster cordon budget.
    cordons: ClassVar[bool] = False
    # Multi-pass actions: with the API unreachable they wait (outcome retry) instead of failing.
    resumable: ClassVar[bool] = False

    def check_target(self, req: ActionRequest) -> None:
        if req.target.kind not in self.targets:
            raise InvalidParams(
                f"{self.name} applies to {'/'.join(self.targets)} targets, not {req.target.kind}"
            )
        if req.target.kind == "pod" and not (req.target.namespace and req.target.name):
            raise InvalidParams(f"{self.name}: pod target needs namespace and name")

    def plan(self, req: ActionRequest, settings: Settings) -> Plan:
        """Validate and describe the change; pure (no I/O). Raises InvalidParams."""
        self.check_target(req)
        return self.explain(req, settings)

    @abstractmethod
    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        """``plan()`` of a request whose target kind was checked: the parameters and the Plan."""

    @abstractmethod
    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        """Do it. Must converge when re-run after a crash (check state before changing it)."""


def require_local(req: ActionRequest, settings: Settings, scope: str = "this node") -> None:
    """Refuse a target on another node. RBAC cannot say "only your own node", so for node-local
    actions this check is the boundary (the failover leader acts on other nodes through
    agent.peers.remedy, not through these plans)."""
    if req.target.node != settings.node_name:
        raise InvalidParams(f"{req.action.type} only acts on {scope} ({settings.node_name})")


def outcome(decision: Decision, kind: OutcomeKind, message: str, **details: Any) -> Outcome:
    return Outcome(decision=decision, kind=kind, message=message, details=details)


def params_of(req: ActionRequest, model: type[P]) -> P:
    """The request's validated parameters as ``model`` (the action's own, ``@action(model)``),
    to read as typed attributes. The request's action type is its model's, so this only refuses
    a request routed to the wrong action."""
    params = req.action.params
    if not isinstance(params, model):
        raise InvalidParams(f"{model.action_name()} cannot run {req.action.type} parameters")
    return params


def check_key(key: str) -> str:
    """Only keys under nodemedic.io/ may be written, so we never clobber someone else's."""
    if not key.startswith(PREFIX) or len(key) == len(PREFIX) or len(key) > 253 + 63:
        raise InvalidParams(f"key {key!r} must start with {PREFIX} (nodemedic only writes its own)")
    return key


def describe(req: ActionRequest) -> str:
    """One sentence for Events and logs: rule, step, reason and observed values."""
    observed = ", ".join(f"{k}={v:g}" for k, v in sorted(req.observed.items()))
    parts = [f"rule {req.rule}"]
    if req.step:
        parts.append(f"step {req.step}")
    if req.reason:
        parts.append(req.reason)
    if observed:
        parts.append(f"observed {observed}")
    if req.runbook:
        parts.append(f"runbook {req.runbook}")
    return "; ".join(parts)
