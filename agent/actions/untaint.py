"""``untaint``: remove nodemedic's own ``nodemedic.io/...`` taint from this node.

Run through the safety gate by the remediation stage (and the failover path), typically as the
undo of ``taint``. Only keys under nodemedic.io/ are accepted, so an admin's taints can never be
removed by a rule, and of those only the ones nodemedic still owns, checked against the node as
it is now (agent.actions.taint.claimed_taint): the rule leaves the claim in
``nodemedic.io/tainted-by``, and the taint goes once no other rule holds it. A taint with our key
that we never claimed, or that an admin removed or replaced since, is left alone (the claim is
released and the outcome says so). Also ends the "admin removed it" episode for the rule.
"""

from __future__ import annotations

from typing import Any

from agent.actions.base import Action, ActionContext, Plan, outcome
from agent.actions.registry import action
from agent.actions.taint import EFFECTS, claimed_taint, claims, override, taints, untaint_key
from agent.actions.taint import write_claims as write
from agent.kube.nodes import update_node
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.remediation import ActionRequest, Decision, Outcome


@action(ap.Untaint)
class Untaint(Action):
    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        slot = untaint_key(req, settings)
        what = f"untaint node {req.target.node} if the taint is still nodemedic's"
        return Plan(self.name, req.target.key, what, (f"spec.taints -= {slot}",))

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        key = untaint_key(req, ctx.settings)
        said: dict[str, str] = {}

        def mutate(node: dict[str, Any]) -> bool:
            said.clear()
            data = claims(node)
            changed = False
            for effect in EFFECTS:
                slot = f"{key}:{effect}"
                state = claimed_taint(node, key, effect)
                claim = data.get(slot)
                if claim is not None and req.rule in (claim.get("overridden") or []):
                    claim["overridden"] = [r for r in claim["overridden"] if r != req.rule]
                    changed = True
                if state == "absent":
                    continue
                if state == "unclaimed":
                    said[slot] = "not_ours"
                    continue
                assert claim is not None
                if state in ("removed", "replaced"):
                    override(claim, keep=req.rule)
                    said[slot] = state
                    changed = True
                    continue
                holders = [r for r in claim["rules"] if r != req.rule]
                claim["rules"] = holders
                changed = True
                if holders:
                    said[slot] = "held"
                    continue
                node["spec"]["taints"] = [
                    i for i in taints(node) if not (i.get("key") == key
                                                    and i.get("effect") == effect)]
                said[slot] = "removed_ours"
            if changed:
                write(node, data)
            return changed

        await update_node(ctx.api, req.target.node, mutate)
        node = req.target.node
        done = [s for s, v in said.items() if v == "removed_ours"]
        if done:
            return outcome(decision, "success", f"removed taint {', '.join(done)} from node {node}")
        gone = [s for s, v in said.items() if v in ("removed", "replaced")]
        if gone:
            return outcome(
                decision, "skipped",
                f"an admin removed or changed nodemedic's taint {', '.join(gone)} on node {node};"
                " released nodemedic's claim and left the node's taints as they are",
                reason="admin_override",
            )
        if any(v == "held" for v in said.values()):
            return outcome(decision, "noop", "other rules still hold nodemedic's taint")
        if said:
            return outcome(decision, "noop",
                           f"taint {key} on node {node} is not nodemedic's; left alone")
        return outcome(decision, "noop", f"no taint {key} on node {node}")
