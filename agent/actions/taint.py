"""``taint``: add a ``nodemedic.io/...`` taint to this node (NoSchedule or PreferNoSchedule).

Run through the safety gate by the remediation stage (also for the failover path's failed-node
taint); ``untaint_key``, ``claims`` and ``write_claims`` are shared with agent.actions.untaint.
NoExecute is refused on purpose: it makes the kubelet evict every intolerant pod at once without
consulting PodDisruptionBudgets; use ``drain``, which does.

Ownership, as for the cordon: the node annotation ``nodemedic.io/tainted-by`` is our claim,
``{"KEY:EFFECT": {"rules": [...], "value": "...", "overridden": [...]}}``. A taint is ours only
while the claim exists *and* the node carries that key and effect with the value we wrote
(``claimed_taint``). If the claim exists but the taint is gone, or holds another value, an admin
removed or replaced it: its rules move to ``overridden`` and are not re-added until the rule
resolves (its untaint clears them), and a taint with our key that we never claimed is left
alone. Kubernetes records no owner per taint (``spec.taints`` is one atomic list in
managedFields), so a taint an admin removed and re-added identically while no nodemedic read the
node in between cannot be told from ours. Idempotent: an identical claimed taint is a no-op.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from agent.actions.base import (
    TAINTED_BY,
    Action,
    ActionContext,
    InvalidParams,
    Plan,
    check_key,
    outcome,
    params_of,
    require_local,
)
from agent.actions.cordon import iso
from agent.actions.registry import action
from agent.kube.nodes import ensure_annotations, update_node
from agent.settings import Settings
from agent.structs import actionparams as ap
from agent.structs.remediation import ActionRequest, Decision, Outcome

EFFECTS = ("NoSchedule", "PreferNoSchedule")
TaintState = Literal["ours", "removed", "replaced", "unclaimed", "absent"]


def taint_params(req: ActionRequest, settings: Settings) -> dict[str, str]:
    """Key, value and effect of a taint request on this node."""
    p = params_of(req, ap.Taint)
    if p.effect not in EFFECTS:  # the model refuses it too: this is the safety boundary
        raise InvalidParams(
            "effect NoExecute is refused: it bypasses PodDisruptionBudgets; use drain"
        )
    require_local(req, settings)
    return {"key": check_key(p.key), "value": p.value, "effect": p.effect}


def untaint_key(req: ActionRequest, settings: Settings) -> str:
    """The key of an untaint request on this node (its taint goes for every effect)."""
    key = check_key(params_of(req, ap.Untaint).key)
    require_local(req, settings)
    return key


def taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    spec = node.setdefault("spec", {})
    current = spec.get("taints")
    if not isinstance(current, list):
        current = []
        spec["taints"] = current
    return current


def claims(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Our taint claims by ``KEY:EFFECT``; an unreadable annotation claims nothing."""
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(TAINTED_BY)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def write_claims(node: dict[str, Any], data: dict[str, dict[str, Any]]) -> None:
    ann = ensure_annotations(node)
    data = {k: v for k, v in data.items() if v.get("rules") or v.get("overridden")}
    if data:
        ann[TAINTED_BY] = json.dumps(data, separators=(",", ":"), sort_keys=True)
    else:
        ann.pop(TAINTED_BY, None)


def claimed_taint(node: dict[str, Any], key: str, effect: str) -> TaintState:
    """Whether the taint ``key:effect`` on the node is the one nodemedic claimed."""
    claim = claims(node).get(f"{key}:{effect}")
    present = [t for t in taints(node) if t.get("key") == key and t.get("effect") == effect]
    if not claim or not claim.get("rules"):
        return "unclaimed" if present else "absent"
    if not present:
        return "removed"
    if (present[0].get("value") or "") != claim.get("value", ""):
        return "replaced"
    return "ours"


def override(claim: dict[str, Any], keep: str | None = None) -> None:
    """An admin removed or replaced the claimed taint: its rules (but ``keep``, whose episode
    ends now) may not add it again until they resolve."""
    rules = [r for r in claim.get("rules") or [] if r != keep]
    claim["overridden"] = sorted({*(claim.get("overridden") or []), *rules})
    claim["rules"] = []


@action(ap.Taint)
class Taint(Action):
    disruptive = True

    def explain(self, req: ActionRequest, settings: Settings) -> Plan:
        t = taint_params(req, settings)
        return Plan(
            self.name,
            req.target.key,
            f"taint node {req.target.node}",
            (f"spec.taints += {t['key']}={t['value']}:{t['effect']}",
             f"annotation {TAINTED_BY} += {req.rule}"),
        )

    async def execute(self, decision: Decision, ctx: ActionContext) -> Outcome:
        req = decision.request
        t = taint_params(req, ctx.settings)
        slot = f"{t['key']}:{t['effect']}"
        result: list[str] = []

        def mutate(node: dict[str, Any]) -> bool:
            result.clear()
            data = claims(node)
            claim = data.setdefault(slot, {"rules": [], "value": t["value"]})
            state = claimed_taint(node, t["key"], t["effect"])
            changed = False
            if state in ("removed", "replaced"):
                override(claim)
                changed = True
            if req.rule in (claim.get("overridden") or []):
                result.append("admin_override")
            elif state == "unclaimed":
                result.append("not_ours")
            elif state == "ours":
                current = next(i for i in taints(node)
                               if i.get("key") == t["key"] and i.get("effect") == t["effect"])
                if (current.get("value") or "") != t["value"] or req.rule not in claim["rules"]:
                    result.append("updated")
                    _set_value(current, t["value"])
                    claim["rules"] = sorted({*claim["rules"], req.rule})
                    claim["value"] = t["value"]
                    changed = True
                else:
                    result.append("present")
            else:  # absent (or just released): add it and claim it
                entry = {"key": t["key"], "effect": t["effect"]}
                _set_value(entry, t["value"])
                taints(node).append(entry)
                claim["rules"] = [req.rule]
                claim["value"] = t["value"]
                result.append("added")
                changed = True
            if changed:
                claim["at"] = iso(ctx.now())
                write_claims(node, data)
            return changed

        await update_node(ctx.api, req.target.node, mutate)
        what = f"taint {slot}"
        if result[0] == "added":
            return outcome(decision, "success", f"tainted node with {slot}")
        if result[0] == "updated":
            return outcome(decision, "success", f"{what} updated (value {t['value']!r})")
        if result[0] == "present":
            return outcome(decision, "noop", f"{what} already present")
        if result[0] == "not_ours":
            return outcome(decision, "noop",
                           f"{what} is on the node but not nodemedic's (an admin's); left alone")
        return outcome(
            decision, "skipped",
            f"an admin removed or changed nodemedic's {what}; not adding it again for rule "
            f"{req.rule}", reason="admin_override",
        )


def _set_value(entry: dict[str, Any], value: str) -> None:
    if value:
        entry["value"] = value
    else:
        entry.pop("value", None)
