"""``taint``: add a ``nodemedic.io/...`` taint to this node (NoSchedule or PreferNoSchedule).

Called through the gate by agent.runtime.remediation. NoExecute is refused on purpose: it makes
the kubelet evict every intolerant pod at once without consulting PodDisruptionBudgets; use
``drain``, which does. Idempotent: an identical taint already present is a no-op, a taint with the
same key and effect but another value is updated.
"""

from __future__ import annotations

from typing import Any

from agent.actions.base import (
    Action,
    ActionContext,
    InvalidParams,
    Plan,
    check_key,
    outcome,
    require_local,
)
from agent.actions.registry import action
from agent.kube.nodes import update_node
from agent.settings import Settings
from agent.structs.remediation import ActionRequest, Decision, Outcome

EFFECTS = ("NoSchedule", "PreferNoSchedule")


def taint_params(req: ActionRequest, settings: Settings, *, need_effect: bool) -> dict[str, str]:
    params = req.action.params
    key = params.get("key")
    if not isinstance(key, str):
        raise InvalidParams("parameter 'key' (a nodemedic.io/ taint key) is required")
    check_key(key)
    value = params.get("value", "")
    if not isinstance(value, str) or len(value) > 63:
        raise InvalidParams("parameter 'value' must be a string of at most 63 characters")
    effect = params.get("effect", "NoSchedule" if need_effect else "")
    if effect == "NoExecute":
        raise InvalidParams(
            "effect NoExecute is refused: it bypasses PodDisruptionBudgets; use drain"
        )
    if not isinstance(effect, str) or (effect and effect not in EFFECTS):
        raise InvalidParams(f"parameter 'effect' must be one of {', '.join(EFFECTS)}")
    require_local(req, settings)
    return {"key": key, "value": value, "effect": effect}


def taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    spec = node.setdefault("spec", {})
    current = spec.get("taints")
    if not isinstance(current, list):
        current = []
        spec["taints"] = current
    return current


@action("taint")
class Taint(Action):
    disruptive = True

    def plan(self, req: ActionRequest, settings: Settings) -> Plan:
        self.check_target(req)
        t = taint_params(req, settings, need_effect=True)
        return Plan(
            self.name,
            req.target.key,
            f"taint node {req.target.node}",
            (f"spec.taints += {t['key']}={t['value']}:{t['effect']}",),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        t = taint_params(req, ctx.settings, need_effect=True)

        def mutate(node: dict[str, Any]) -> bool:
            current = taints(node)
            for item in current:
                if item.get("key") == t["key"] and item.get("effect") == t["effect"]:
                    if (item.get("value") or "") == t["value"]:
                        return False
                    item["value"] = t["value"]
                    return True
            entry = {"key": t["key"], "effect": t["effect"]}
            if t["value"]:
                entry["value"] = t["value"]
            current.append(entry)
            return True

        _, changed = await update_node(ctx.api, req.target.node, mutate)
        if not changed:
            return outcome(decision, "noop", f"taint {t['key']}:{t['effect']} already present")
        return outcome(decision, "success", f"tainted node with {t['key']}:{t['effect']}")
