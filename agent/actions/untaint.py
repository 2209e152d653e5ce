"""``untaint``: remove a ``nodemedic.io/...`` taint from this node (any effect unless given).

Called through the gate by agent.runtime.remediation, typically as the undo of ``taint``. Only
keys under nodemedic.io/ are accepted, so an admin's taints can never be removed by a rule.
"""

from __future__ import annotations

from typing import Any

from agent.actions.base import Action, ActionContext, Plan, outcome
from agent.actions.registry import action
from agent.actions.taint import taint_params
from agent.kube.nodes import update_node
from agent.settings import Settings
from agent.structs.remediation import ActionRequest, Decision, Outcome


@action("untaint")
class Untaint(Action):
    def plan(self, req: ActionRequest, settings: Settings) -> Plan:
        self.check_target(req)
        t = taint_params(req, settings, need_effect=False)
        return Plan(
            self.name,
            req.target.key,
            f"untaint node {req.target.node}",
            (f"spec.taints -= {t['key']}{':' + t['effect'] if t['effect'] else ''}",),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        t = taint_params(req, ctx.settings, need_effect=False)

        def mutate(node: dict[str, Any]) -> bool:
            spec = node.setdefault("spec", {})
            current = spec.get("taints") or []
            keep = [
                item
                for item in current
                if not (
                    item.get("key") == t["key"]
                    and (not t["effect"] or item.get("effect") == t["effect"])
                )
            ]
            if len(keep) == len(current):
                return False
            spec["taints"] = keep
            return True

        _, changed = await update_node(ctx.api, req.target.node, mutate)
        if not changed:
            return outcome(decision, "noop", f"no taint {t['key']} on node {req.target.node}")
        return outcome(decision, "success", f"removed taint {t['key']} from node {req.target.node}")
