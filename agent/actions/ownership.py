"""Noticing, as soon as the node shows it, that an admin undid a cordon or taint nodemedic made.

Called by agent.collectors.node on every change its watch of this Node delivers. The undo actions
(agent.actions.uncordon, agent.actions.untaint) already check ownership against the node as it is
when they run; this releases our claims the moment an admin's change is seen, so that
- the admin learns it at once (Event ``NodemedicClaimReleased``), and nothing waits for the rule
  to resolve before the annotations tell the truth;
- a change the undo could not see later is caught while it happens: an admin who removes our
  taint and adds an identical one a minute after (Kubernetes records no owner per taint) has
  already ended our claim when the taint comes back, so the undo leaves it alone.
Released rules are marked overridden, as the actions do: they do not cordon or taint again until
they resolve. ``reversed_claims`` is pure and cheap (it runs on every watch event);
``release_reversed`` re-checks and writes in one resourceVersion-guarded update.
"""

from __future__ import annotations

from typing import Any

from agent.actions.base import CORDONED_BY
from agent.actions.cordon import cordon_is_ours, marker_rules, release_claim
from agent.actions.taint import claimed_taint, claims, override, write_claims
from agent.kube.nodes import read_annotations, update_node


def reversed_claims(node: dict[str, Any]) -> list[str]:
    """One sentence per claim of ours that the node shows an admin undid (empty: none)."""
    out: list[str] = []
    if CORDONED_BY in read_annotations(node):
        ours, why = cordon_is_ours(node)
        if not ours:
            rules = ", ".join(marker_rules(read_annotations(node), CORDONED_BY))
            out.append(f"{why} (rules {rules})")
    for slot, claim in sorted(claims(node).items()):
        key, _, effect = slot.rpartition(":")
        if not claim.get("rules"):
            continue
        state = claimed_taint(node, key, effect)
        if state in ("removed", "replaced"):
            out.append(f"an admin {state} nodemedic's taint {slot} (rules "
                       f"{', '.join(claim['rules'])})")
    return out


async def release_reversed(api: Any, node_name: str, now: float) -> list[str]:
    """Release every claim the node shows an admin undid; returns what was released."""
    released: list[str] = []

    def mutate(node: dict[str, Any]) -> bool:
        released[:] = reversed_claims(node)
        if not released:
            return False
        if CORDONED_BY in read_annotations(node) and not cordon_is_ours(node)[0]:
            release_claim(node, now)
        data = claims(node)
        for slot, claim in data.items():
            key, _, effect = slot.rpartition(":")
            if claim.get("rules") and claimed_taint(node, key, effect) in ("removed", "replaced"):
                override(claim)
        write_claims(node, data)
        return True

    await update_node(api, node_name, mutate)
    return released
