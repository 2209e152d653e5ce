"""Node reads and resourceVersion-guarded node updates for the actions and the safety gate.

Called by agent.actions (cordon, uncordon, taint, untaint, annotate, drain), agent.safety (pause
annotation, cluster cordon budget, persisted state) through plain dicts. Every write is a
read-modify-replace (PUT) carrying the resourceVersion that was read, so a concurrent change by an
admin or another controller yields 409 and we re-read and re-apply instead of overwriting it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import (
    LIST_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    KubeConflict,
    call_json,
    raw_body,
)

# A mutation edits the node dict in place and returns False when nothing needed to change.
NodeMutation = Callable[[dict[str, Any]], bool]

CONFLICT_RETRIES = 5


async def get_node(api: Any, name: str) -> dict[str, Any]:
    """Return the Node as a JSON dict (raises KubeNotFound / KubeUnavailable)."""
    core = client.CoreV1Api(api)
    return await call_json(
        core.read_node(name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    )


async def list_nodes(api: Any) -> list[dict[str, Any]]:
    """Return every Node as a JSON dict."""
    core = client.CoreV1Api(api)
    body = await call_json(
        core.list_node(_preload_content=False, _request_timeout=LIST_TIMEOUT_SECONDS),
        limit_seconds=LIST_TIMEOUT_SECONDS,
    )
    items = body.get("items") or []
    return [i for i in items if isinstance(i, dict)]


async def count_nodes(api: Any) -> tuple[int, list[str]]:
    """(number of nodes, names of unschedulable nodes) without listing every Node object:
    a field-selected LIST of cordoned nodes plus a ``limit=1`` LIST whose remainingItemCount
    gives the total. Cheap enough for every agent to run before each cordon."""
    core = client.CoreV1Api(api)
    cordoned = await call_json(
        core.list_node(
            field_selector="spec.unschedulable=true",
            _preload_content=False,
            _request_timeout=LIST_TIMEOUT_SECONDS,
        ),
        limit_seconds=LIST_TIMEOUT_SECONDS,
    )
    names = [
        str((i.get("metadata") or {}).get("name", ""))
        for i in cordoned.get("items") or []
        if isinstance(i, dict) and is_unschedulable(i)
    ]
    page = await call_json(
        core.list_node(limit=1, _preload_content=False, _request_timeout=LIST_TIMEOUT_SECONDS),
        limit_seconds=LIST_TIMEOUT_SECONDS,
    )
    meta = page.get("metadata") or {}
    remaining = meta.get("remainingItemCount")
    if isinstance(remaining, int) and not isinstance(remaining, bool):
        return len(page.get("items") or []) + remaining, names
    if not meta.get("continue"):
        return len(page.get("items") or []), names
    return len(await list_nodes(api)), names  # server did not count for us: list them all


async def update_node(api: Any, name: str, mutate: NodeMutation) -> tuple[dict[str, Any], bool]:
    """Apply ``mutate`` to the current Node and replace it, retrying on 409.

    Returns (node as stored, changed). ``mutate`` is re-run on a fresh read after each conflict,
    so it must decide from the node it is given, never from earlier state.
    """
    core = client.CoreV1Api(api)
    last: KubeConflict | None = None
    for _ in range(CONFLICT_RETRIES):
        node = await get_node(api, name)
        if not mutate(node):
            return node, False
        try:
            stored = await call_json(
                core.replace_node(
                    name,
                    raw_body(node),
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
            )
        except KubeConflict as exc:
            last = exc
            continue
        return stored, True
    assert last is not None
    raise last


def ensure_annotations(obj: dict[str, Any]) -> dict[str, str]:
    """The object's annotations, created empty in place when absent (for mutations)."""
    meta = obj.setdefault("metadata", {})
    ann = meta.get("annotations")
    if not isinstance(ann, dict):
        ann = {}
        meta["annotations"] = ann
    return ann


def read_annotations(obj: dict[str, Any]) -> dict[str, str]:
    """The object's annotations without modifying it."""
    ann = (obj.get("metadata") or {}).get("annotations")
    return dict(ann) if isinstance(ann, dict) else {}


def is_unschedulable(node: dict[str, Any]) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))
