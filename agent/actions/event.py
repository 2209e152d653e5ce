"""``event``: emit a Kubernetes Event on this node or one of its pods.

Run through the safety gate by the remediation stage (informational rules such as CPU
throttling or memory-limit saturation). Repeats aggregate into one Event with a count
(agent.kube.events). Parameters follow agent.rules.schema.Event: ``reason``, ``message`` (rendered
by the engine) and ``event_type`` (Normal or Warning).
"""

from __future__ import annotations

from agent.actions.base import Action, ActionContext, Plan, describe, outcome, params_of
from agent.actions.registry import action
from agent.kube.events import InvolvedObject, record_event
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.remediation import ActionRequest, Decision, Outcome


def event_fields(req: ActionRequest, settings: Settings) -> tuple[str, str, str]:
    p = params_of(req, ap.Event)  # the model checks the reason and the event type
    type_ = p.event_type or ("Normal" if req.severity == "info" else "Warning")
    # The engine renders message templates; without a message we explain the rule ourselves.
    return p.reason, type_, p.message or describe(req)


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
