"""The one executor of allowed actions, with one error policy, and the one record of a decision.

Called by agent.runtime.remediation (rule actions on this node) and agent.peers.remedy (the
leader's failover actions on a peer node), always after the safety gate allowed the request:
``run`` executes the action the gate looked up (``Decision.action``); whatever goes wrong
becomes an ``Outcome``, never an exception:
- the API unreachable (``KubeUnavailable``): ``retry`` for a resumable action (drain, evict-pod:
  ``Action.resumable``) or a continuing pass, so it waits for the API; ``failure`` otherwise;
- any other Kubernetes error: ``failure`` with the API's message;
- anything else (a ValueError, an OSError, an aiohttp error, a timeout): ``failure`` naming the
  exception, logged with its traceback as ``action_crashed``: one broken action never takes
  down the tick or the leader's failover stage.
``asyncio.CancelledError`` (shutdown, a cancelled task) is not an error and propagates.
``record`` counts the decision in ``nodemedic_actions_total`` and, for a first pass that ran,
remembers the execution for cooldowns and caps; ``fields`` is the one set of structured-log
fields both callers log a decision with, ``event_text`` the one Event text of an executed action.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from agent.actions.base import Action, ActionContext, describe
from agent.kube.errors import KubeError, KubeUnavailable
from agent.structs.remediation import Decision, Outcome, OutcomeKind

log = structlog.get_logger("nodemedic.actions")


class Recorder(Protocol):
    """What ``record`` needs of agent.safety.gate.SafetyGate."""

    def count(self, decision: Decision, outcome: Outcome | None) -> None: ...
    def record_execution(self, decision: Decision, outcome: Outcome) -> None: ...


async def run(decision: Decision, ctx: ActionContext, *, continuing: bool = False) -> Outcome:
    """Execute the allowed ``decision``'s action; never raises but for cancellation."""
    req = decision.request
    act = decision.action  # looked up once, by the gate that allowed it
    if not isinstance(act, Action):  # the gate denies unknown actions: a failure, not an assert
        return Outcome(decision, "failure", f"no action named {req.action.type!r}")
    try:
        return await act.execute(decision, ctx)
    except KubeUnavailable as exc:
        # Resumable work waits for the API to come back; one-shot actions report failure.
        kind: OutcomeKind = "retry" if continuing or act.resumable else "failure"
        return Outcome(decision, kind, f"API unreachable: {exc.reason}")
    except KubeError as exc:
        return Outcome(decision, "failure", str(exc))
    except Exception as exc:  # one broken action must never take the tick (or the leader) down
        log.exception("action_crashed", action=req.action.type, rule=req.rule,
                      target=req.target.key)
        return Outcome(decision, "failure", f"{type(exc).__name__}: {exc}")


def record(gate: Recorder, decision: Decision, outcome: Outcome | None, continuing: bool) -> None:
    """Count the decision; remember a first pass that ran (cooldowns, caps, cordon budget)."""
    gate.count(decision, outcome)
    if outcome is not None and not continuing:
        gate.record_execution(decision, outcome)


def _camel(action: str) -> str:
    return "".join(part.capitalize() for part in action.split("-"))


def event_text(decision: Decision, outcome: Outcome) -> tuple[str, str, str]:
    """(reason, message, type) of the Kubernetes Event that explains one executed action."""
    req = decision.request
    type_ = "Warning" if outcome.kind == "failure" else "Normal"
    message = f"{req.action.type} {outcome.kind}: {outcome.message}. {describe(req)}"
    return f"Nodemedic{_camel(req.action.type)}", message, type_


def fields(decision: Decision, outcome: Outcome | None, continuing: bool) -> dict[str, Any]:
    """Every field of one decision for its structured log line (and /status)."""
    req = decision.request
    return {
        "rule": req.rule,
        "action": req.action.type,
        "params": req.action.params.params(),
        "target": req.target.key,
        "node": req.target.node,
        "step": req.step,
        "undo": req.undo,
        "severity": req.severity,
        "decision": decision.kind,
        "reason": decision.reason,
        "detail": decision.detail,
        "outcome": outcome.kind if outcome is not None else "none",
        "message": outcome.message if outcome is not None else "",
        "details": dict(outcome.details) if outcome is not None else {},
        "observed": dict(req.observed),
        "rule_reason": req.reason,
        "runbook": req.runbook,
        "continuing": continuing,
        "dry_run": decision.kind == "dry_run",
    }
