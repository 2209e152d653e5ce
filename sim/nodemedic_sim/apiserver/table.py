"""Server-side ``meta.k8s.io/v1`` Table rendering, which kubectl asks for on ``kubectl get``.

Called by nodemedic_sim.apiserver.server when the Accept header contains ``as=Table``. Columns
follow kube-apiserver's printers for nodes and pods (STATUS shows SchedulingDisabled for a cordoned
node, READY counts ready containers); other resources get NAME and AGE, like the default printer.
"""

from __future__ import annotations

import time
from typing import Any

from nodemedic_sim.apiserver.registry import parse_rfc3339
from nodemedic_sim.apiserver.resources import ResourceType

Column = tuple[str, str, int]  # name, type, priority (1 = only with -o wide)

_COLUMNS: dict[str, list[Column]] = {
    "nodes": [
        ("Name", "string", 0),
        ("Status", "string", 0),
        ("Roles", "string", 0),
        ("Age", "string", 0),
        ("Version", "string", 0),
        ("Internal-IP", "string", 1),
        ("External-IP", "string", 1),
        ("OS-Image", "string", 1),
        ("Kernel-Version", "string", 1),
        ("Container-Runtime", "string", 1),
    ],
    "pods": [
        ("Name", "string", 0),
        ("Ready", "string", 0),
        ("Status", "string", 0),
        ("Restarts", "string", 0),
        ("Age", "string", 0),
        ("IP", "string", 1),
        ("Node", "string", 1),
        ("Nominated Node", "string", 1),
        ("Readiness Gates", "string", 1),
    ],
}
_DEFAULT: list[Column] = [("Name", "string", 0), ("Age", "string", 0)]


def _age(obj: dict[str, Any]) -> str:
    ts = obj["metadata"].get("creationTimestamp")
    if not ts:
        return "<unknown>"
    secs = max(0, int(time.time() - parse_rfc3339(ts)))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _node_row(n: dict[str, Any]) -> list[Any]:
    spec, status = n.get("spec") or {}, n.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = (
        "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    )
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = n["metadata"].get("labels") or {}
    roles = sorted(
        k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k
    )
    addrs = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        n["metadata"]["name"],
        state,
        ",".join(roles) or "<none>",
        _age(n),
        info.get("kubeletVersion", ""),
        addrs.get("InternalIP", "<none>"),
        addrs.get("ExternalIP", "<none>"),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


def _default_row(o: dict[str, Any]) -> list[Any]:
    return [o["metadata"]["name"], _age(o)]


def _pod_row(p: dict[str, Any]) -> list[Any]:
    spec, status = p.get("spec") or {}, p.get("status") or {}
    cs = status.get("containerStatuses") or []
    ready = sum(1 for c in cs if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in cs)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    if p["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return [
        p["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        str(restarts),
        _age(p),
        status.get("podIP", "<none>"),
        spec.get("nodeName", "<none>"),
        status.get("nominatedNodeName", "<none>"),
        "<none>",
    ]


def wants_table(accept: str) -> bool:
    """Whether the Accept header asks for a Table (kubectl get does)."""
    return "as=Table" in accept


def table(
    rt: ResourceType,
    objs: list[dict[str, Any]],
    rv: str,
    with_columns: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Table of ``objs``; each row carries the object's metadata as PartialObjectMetadata."""
    cols = _COLUMNS.get(rt.plural, _DEFAULT)
    row_fn = {"nodes": _node_row, "pods": _pod_row}.get(rt.plural, _default_row)
    rows = [
        {
            "cells": row_fn(o),
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            },
        }
        for o in objs
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv, **(extra_meta or {})},
        "columnDefinitions": [
            {
                "name": n,
                "type": t,
                "format": "name" if n == "Name" else "",
                "description": n,
                "priority": prio,
            }
            for n, t, prio in cols
        ]
        if with_columns
        else [],
        "rows": rows,
    }
