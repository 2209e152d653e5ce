"""``cordon``: mark this node unschedulable, recording that nodemedic (and which rules) did it.

Run through the safety gate by the remediation stage; ``ensure_cordoned`` is also used by
agent.actions.drain, and ``cordon_is_ours``/``release_claim`` by agent.actions.uncordon and the
safety gate. Ownership lives in the node annotation ``nodemedic.io/cordoned-by``
(``{"rules": [...], "at": ...}``), our *claim*. A claim only covers the cordon we made, so it is
checked against the node as it is now, every time (``cordon_is_ours``):
- the node is schedulable: an admin uncordoned it by hand;
- the node is cordoned, but the API server's managedFields say ``spec.unschedulable`` was last
  set by another field manager (``kubectl-cordon``...): an admin uncordoned it and cordoned it
  again, maybe while we were down. The cordon that exists is the admin's, not ours.
In both cases the claim is released: the rules it listed go to
``nodemedic.io/uncordoned-by-admin``, so they do not cordon again until the rule resolves (its
uncordon clears the marker) or someone deletes the annotation, and the node is left as the admin
set it. Without managedFields (a server that does not track them) only the first case can be
seen: an uncordon and re-cordon both made between two of our reads look like our own cordon.
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
from agent.kube.nodes import (
    FIELD_MANAGER,
    ensure_annotations,
    field_owners,
    is_unschedulable,
    read_annotations,
    update_node,
)
from agent.settings import Settings
from agent.structs import actionparams as ap
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


def cordon_is_ours(node: dict[str, Any]) -> tuple[bool, str]:
    """Whether the node's cordon, as it is now, is the one nodemedic made, and why not."""
    if CORDONED_BY not in read_annotations(node):
        return False, "nodemedic has no claim on this node"
    if not is_unschedulable(node):
        return False, "an admin uncordoned the node after nodemedic cordoned it"
    owners = field_owners(node, "spec", "unschedulable")
    if owners and all(manager != FIELD_MANAGER for manager, _ in owners):
        manager, at = owners[-1]
        return False, (
            f"an admin uncordoned and cordoned the node again after nodemedic cordoned it "
            f"(spec.unschedulable last set by {manager} at {at})"
        )
    return True, "nodemedic's cordon"


def release_claim(node: dict[str, Any], now: float, ended: str | None = None) -> list[str]:
    """Drop our claim on a cordon an admin took over (see the module docstring); the rules it
    held, except ``ended`` (a rule whose episode ends now), are marked admin-overridden.
    Returns the rules that held the claim. Mutates ``node``; the caller writes it."""
    ann = ensure_annotations(node)
    held = marker_rules(ann, CORDONED_BY) if CORDONED_BY in ann else []
    ann.pop(CORDONED_BY, None)
    overridden = [r for r in held if r not in (ended, "?")]
    if overridden:
        ann[ADMIN_UNCORDONED] = marker([*marker_rules(ann, ADMIN_UNCORDONED), *overridden], now)
    return held


def admin_override_rules(node: dict[str, Any]) -> list[str]:
    """Rules whose cordon an admin reversed (read by the safety gate)."""
    ann = read_annotations(node)
    rules = marker_rules(ann, ADMIN_UNCORDONED)
    if CORDONED_BY in ann and not cordon_is_ours(node)[0]:
        rules += marker_rules(ann, CORDONED_BY)  # reversed by hand, not yet noticed by us
    return rules


async def ensure_cordoned(api: Any, node_name: str, rule: str, now: float) -> CordonResult:
    """Cordon ``node_name`` for ``rule`` unless an admin decided otherwise; idempotent."""
    result: list[CordonResult] = []

    def mutate(node: dict[str, Any]) -> bool:
        result.clear()
        ann = ensure_annotations(node)
        changed = False
        if CORDONED_BY in ann and not cordon_is_ours(node)[0]:
            release_claim(node, now)  # an admin reversed our cordon: it is no longer ours
            changed = True
        ours = marker_rules(ann, CORDONED_BY) if CORDONED_BY in ann else None
        if is_unschedulable(node):
            if ours is None:
                # An admin's cordon: never claim it. If it replaced ours (an admin uncordoned and
                # cordoned again), the rule's episode is the admin's now: a drain stops.
                overridden = rule in marker_rules(ann, ADMIN_UNCORDONED)
                result.append("admin_override" if overridden else "admin_cordoned")
                return changed
            result.append("joined")
            if rule in ours:
                return False
            ann[CORDONED_BY] = marker([*ours, rule], now)
            return True
        if rule in marker_rules(ann, ADMIN_UNCORDONED):
            result.append("admin_override")
            return changed
        node.setdefault("spec", {})["unschedulable"] = True
        ann[CORDONED_BY] = marker([rule], now)
        result.append("cordoned")
        return True

    await update_node(api, node_name, mutate)
    return result[0]


@action(ap.Cordon)
class Cordon(Action):
    disruptive = True
    cordons = True

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
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
