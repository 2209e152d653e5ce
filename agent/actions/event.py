"""``event``: emit a Kubernetes Event on this node or one of its pods.

Run through the safety gate by the remediation stage (informational rules such as CPU
throttling or memory-limit saturation). Repeats aggregate into one Event with a count
(agent.kube.events). Parameters follow agent.rules.schema.Event: ``reason``, ``message`` (rendered
by the engine) and ``event_type`` (Normal or Warning).
"""

from __future__ import annotations

import re

from agent.actions.base import Action, ActionContext, InvalidParams, Plan, describe, outcome
from agent.actions.registry import action
from agent.kube.events import InvolvedObject, record_event
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.remediation import ActionRequest, Decision, Outcome

REASON_RE = re.compile(r"^[A-Z][A-Za-z0-9]{0,127}$")
DEFAULT_REASON = "NodemedicRuleFiring"


def event_fields(req: ActionRequest, settings: Settings) -> tuple[str, str, str]:
    params = req.action.params
    reason = params.get("reason", DEFAULT_REASON)
    if not isinstance(reason, str) or not REASON_RE.match(reason):
        raise InvalidParams("parameter 'reason' must be UpperCamelCase letters and digits")
    type_ = params.get("event_type", "Normal" if req.severity == "info" else "Warning")
    if type_ not in ("Normal", "Warning"):
        raise InvalidParams("parameter 'event_type' must be Normal or Warning")
    text = params.get("message")
    if text is not None and not isinstance(text, str):
        raise InvalidParams("parameter 'message' must be a string")
    # The engine renders message templates; without a message we explain the rule ourselves.
    message = text if text else describe(req)
    return reason, str(type_), message


def involved(req: ActionRequest) -> InvolvedObject:
    if req.target.kind == "pod":
        return InvolvedObject("Pod", req.target.name, req.target.namespace)
    return InvolvedObject("Node", req.target.node)


@action(ap.Event)
class Event(Action):
    targets = ("node", "pod")

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        reason, type_, message = event_fields(req, settings)
        return Plan(
            self.name, req.target.key, f"{type_} Event {reason} on {req.target.key}", (message,)
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        reason, type_, message = event_fields(req, ctx.settings)
        stored = await record_event(
            ctx.api,
            involved(req),
            reason,
            message,
            type_=type_,
            host=ctx.node_name,
            action=req.action.type,
        )
        return outcome(
            decision,
            "success",
            f"Event {reason} on {req.target.key}",
            count=int(stored.get("count") or 1),
        )
