"""``uncordon``: reverse nodemedic's own cordon, never an admin's.

Run through the safety gate by the remediation stage, usually as a rule's undo step after its
healthy delay. The node is re-read and the cordon checked as it is *now*
(agent.actions.cordon.cordon_is_ours): it becomes schedulable only when it is still the cordon
nodemedic made and no other rule still holds it (the rules listed in ``nodemedic.io/cordoned-by``).
A cordon without that annotation is an admin's and is left alone; so is one an admin took over
(uncordoned, maybe cordoned again): then our claim is released and the outcome says why. Also
ends the "admin uncordoned it" episode for the rule by clearing its marker.
"""

from __future__ import annotations

from typing import Any

from agent.actions.base import (
    ADMIN_UNCORDONED,
    CORDONED_BY,
    Action,
    ActionContext,
    Plan,
    outcome,
    require_local,
)
from agent.actions.cordon import cordon_is_ours, marker, marker_rules, release_claim
from agent.actions.registry import action
from agent.kube.nodes import ensure_annotations, is_unschedulable, update_node
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.remediation import ActionRequest, Decision, Outcome


@action(ap.Uncordon)
class Uncordon(Action):
    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        require_local(req, settings)
        return Plan(
            self.name,
            req.target.key,
            f"uncordon node {req.target.node} if no other rule holds nodemedic's cordon",
            (f"annotation {CORDONED_BY} -= {req.rule}", "spec.unschedulable=false when empty"),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        now = ctx.now()
        state: list[str] = []
        why: list[str] = []

        def mutate(node: dict[str, Any]) -> bool:
            state.clear()
            why.clear()
            ann = ensure_annotations(node)
            changed = False
            overridden = marker_rules(ann, ADMIN_UNCORDONED)
            if req.rule in overridden:
                rest = [r for r in overridden if r != req.rule]
                if rest:
                    ann[ADMIN_UNCORDONED] = marker(rest, now)
                else:
                    del ann[ADMIN_UNCORDONED]
                changed = True
                state.append("episode_cleared")
            if CORDONED_BY not in ann:
                state.append("admin" if is_unschedulable(node) else "schedulable")
                return changed
            ours, reason = cordon_is_ours(node)
            if not ours:  # the cordon we made is not the one that exists: never undo an admin's
                release_claim(node, now, ended=req.rule)
                why.append(reason)
                state.append("released")
                return True
            holders = [r for r in marker_rules(ann, CORDONED_BY) if r not in (req.rule, "?")]
            if holders:
                ann[CORDONED_BY] = marker(holders, now)
                state.append("held")
                return True
            del ann[CORDONED_BY]
            node.setdefault("spec", {})["unschedulable"] = False
            state.append("uncordoned")
            return True

        await update_node(ctx.api, req.target.node, mutate)
        last = state[-1] if state else "schedulable"
        node = req.target.node
        if last == "uncordoned":
            return outcome(decision, "success", f"uncordoned node {node}")
        if last == "released":
            return outcome(
                decision,
                "skipped",
                f"{why[0]}; released nodemedic's claim and left node {node} as the admin set it",
                reason="admin_override",
            )
        if last == "held":
            return outcome(decision, "noop", "other rules still hold nodemedic's cordon")
        if last == "admin":
            return outcome(decision, "noop", f"node {node} was cordoned by an admin; leaving it")
        return outcome(decision, "noop", f"node {node} is schedulable")
