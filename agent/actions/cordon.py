"""``cordon``: mark this node unschedulable, recording that nodemedic (and which rules) did it.

Called through the gate by agent.runtime.remediation; ``ensure_cordoned`` is also used by
agent.actions.drain. Ownership lives in the node annotation ``nodemedic.io/cordoned-by``
(``{"rules": [...], "at": ...}``) so that uncordon only ever reverses our own cordon. If that
annotation is present but the node is schedulable, an admin uncordoned it by hand: we record
``nodemedic.io/uncordoned-by-admin`` for those rules and do not cordon again for them until the
rule resolves (its uncordon clears the marker) or someone deletes the annotation.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from agent.actions.base import (
    ADMIN_UNCORDONED,
    CORDONED_BY,
    Action,
    ActionContext,
    Plan,
    outcome,
    require_local,
)
from agent.actions.registry import action
from agent.kube.nodes import ensure_annotations, is_unschedulable, read_annotations, update_node
from agent.settings import Settings
from agent.structs.remediation import ActionRequest, Decision, Outcome

CordonResult = Literal["cordoned", "joined", "admin_cordoned", "admin_override"]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def marker_rules(ann: dict[str, str], key: str) -> list[str]:
    """Rules listed in one of our JSON marker annotations; garbage reads as 'no rules'."""
    raw = ann.get(key)
    if raw is None:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return ["?"]  # present but unreadable: still ours, treat as owned by an unknown rule
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return ["?"]
    return [str(r) for r in rules]


def marker(rules: list[str], ts: float) -> str:
    return json.dumps({"rules": sorted(set(rules)), "at": iso(ts)}, separators=(",", ":"))


def admin_override_rules(node: dict[str, Any]) -> list[str]:
    """Rules whose cordon an admin reversed (read by the safety gate)."""
    ann = read_annotations(node)
    rules = marker_rules(ann, ADMIN_UNCORDONED)
    if CORDONED_BY in ann and not is_unschedulable(node):
        rules += marker_rules(ann, CORDONED_BY)  # uncordoned by hand, not yet noticed by us
    return rules


async def ensure_cordoned(api: Any, node_name: str, rule: str, now: float) -> CordonResult:
    """Cordon ``node_name`` for ``rule`` unless an admin decided otherwise; idempotent."""
    result: list[CordonResult] = []

    def mutate(node: dict[str, Any]) -> bool:
        result.clear()
        ann = ensure_annotations(node)
        ours = marker_rules(ann, CORDONED_BY) if CORDONED_BY in ann else None
        if is_unschedulable(node):
            if ours is None:
                result.append("admin_cordoned")  # an admin's cordon: never claim it as ours
                return False
            result.append("joined")
            if rule in ours:
                return False
            ann[CORDONED_BY] = marker([*ours, rule], now)
            return True
        overridden = marker_rules(ann, ADMIN_UNCORDONED)
        if ours is not None:
            # We cordoned it and it is schedulable now: an admin uncordoned it by hand.
            ann[ADMIN_UNCORDONED] = marker([*overridden, *ours], now)
            del ann[CORDONED_BY]
            overridden = [*overridden, *ours]
            if rule in overridden:
                result.append("admin_override")
                return True
        elif rule in overridden:
            result.append("admin_override")
            return False
        node.setdefault("spec", {})["unschedulable"] = True
        ann[CORDONED_BY] = marker([rule], now)
        result.append("cordoned")
        return True

    await update_node(api, node_name, mutate)
    return result[0]


@action("cordon")
class Cordon(Action):
    disruptive = True
    cordons = True

    def plan(self, req: ActionRequest, settings: Settings) -> Plan:
        self.check_target(req)
        require_local(req, settings)
        return Plan(
            self.name,
            req.target.key,
            f"cordon node {req.target.node}",
            ("spec.unschedulable=true", f"annotation {CORDONED_BY} += {req.rule}"),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        res = await ensure_cordoned(ctx.api, req.target.node, req.rule, ctx.now())
        if res == "cordoned":
            return outcome(decision, "success", f"cordoned node {req.target.node}")
        if res == "joined":
            return outcome(
                decision, "noop", f"node {req.target.node} already cordoned by nodemedic"
            )
        if res == "admin_cordoned":
            return outcome(decision, "noop", f"node {req.target.node} was cordoned by an admin")
        return outcome(
            decision,
            "skipped",
            f"an admin uncordoned node {req.target.node}; not cordoning again for rule {req.rule}",
            reason="admin_override",
        )
