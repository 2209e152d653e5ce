"""The cluster-wide cordon budget: parse ``--safety.max-cordoned`` and apply it (pure).

Called by agent.safety.gate right before a cordon or drain, with node counts it just read from
the API. "N" is an absolute number of unschedulable nodes; "N%" a share of all nodes, rounded
down but never below 1, so that a small cluster can still take one node out. "0" forbids cordons.
"""

from __future__ import annotations

import math


def cordon_limit(spec: str, total_nodes: int) -> int:
    """Maximum number of unschedulable nodes allowed in a cluster of ``total_nodes``."""
    text = spec.strip()
    if text.endswith("%"):
        pct = float(text[:-1])
        if pct <= 0:
            return 0
        return max(1, math.floor(total_nodes * pct / 100.0))
    return int(text)


def cordon_allowed(spec: str, total_nodes: int, unschedulable_others: int) -> tuple[bool, int]:
    """(allowed, limit): may this node become unschedulable, given how many others already are?"""
    limit = cordon_limit(spec, total_nodes)
    return unschedulable_others + 1 <= limit, limit
