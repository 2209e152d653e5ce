"""Conversion between core/v1 Events and events.k8s.io/v1 Events.

Both API groups serve the same stored events in kube-apiserver; this module does the field
renames (``message`` <-> ``note``, ``involvedObject`` <-> ``regarding``, ``source`` <->
``deprecatedSource`` ...) for nodemedic_sim.apiserver.server when a request or response uses the
events.k8s.io representation. Storage always holds the core/v1 form.
"""

from __future__ import annotations

from typing import Any

from nodemedic_sim.apiserver.resources import ResourceType

# (events.k8s.io/v1 field, core/v1 field)
_RENAMES = (
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
)


def needs_conversion(rt: ResourceType) -> bool:
    return rt.group == "events.k8s.io"


def to_storage(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Request body (in ``rt``'s form) -> stored core/v1 form."""
    if not needs_conversion(rt):
        return obj
    out = dict(obj)
    for new, old in _RENAMES:
        if new in out:
            out[old] = out.pop(new)
    out["kind"] = "Event"
    out.pop("apiVersion", None)
    return out


def from_storage(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Stored core/v1 form -> ``rt``'s form (a shallow copy only when renames are needed)."""
    if not needs_conversion(rt):
        return obj
    out = dict(obj)
    for new, old in _RENAMES:
        if old in out:
            out[new] = out.pop(old)
    return out
