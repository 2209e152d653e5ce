"""Node reads and resourceVersion-guarded node updates for the actions and the safety gate.

Called by agent.actions (cordon, uncordon, taint, untaint, annotate, drain), agent.safety (pause
annotation, cluster cordon budget, persisted state) through plain dicts. Every write is a
read-modify-replace (PUT) carrying the resourceVersion that was read, so a concurrent change by an
admin or another controller yields 409 and we re-read and re-apply instead of overwriting it.
Every write carries the field manager ``nodemedic``, so the API server's ``managedFields`` say
which of a Node's fields we set last; ``field_owners`` reads them (the cordon ownership check in
agent.actions.cordon asks who set ``spec.unschedulable``).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import LIST_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS, call_json, raw_body
from agent.kube.update import Mutation, read_modify_replace

NodeMutation = Mutation
# The field manager of every node write; also what kube-apiserver derives from our User-Agent
# (nodemedic/<version>), so writes of earlier versions are recorded under the same name.
FIELD_MANAGER = "nodemedic"


async def get_node(api: Any, name: str) -> dict[str, Any]:
    """Return the Node as a JSON dict (raises KubeNotFound / KubeUnavailable)."""
    core = client.CoreV1Api(api)
    return await call_json(
        core.read_node(name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    )


async def _list_node_body(api: Any, **params: Any) -> dict[str, Any]:
    """One raw Node LIST response (``params`` are list_node's selectors / paging)."""
    core = client.CoreV1Api(api)
    return await call_json(
        core.list_node(**params, _preload_content=False, _request_timeout=LIST_TIMEOUT_SECONDS),
        limit_seconds=LIST_TIMEOUT_SECONDS,
    )


async def list_nodes(api: Any) -> list[dict[str, Any]]:
    """Return every Node as a JSON dict."""
    body = await _list_node_body(api)
    items = body.get("items") or []
    return [i for i in items if isinstance(i, dict)]


async def count_nodes(api: Any) -> tuple[int, list[str]]:
    """(number of nodes, names of unschedulable nodes) without listing every Node object:
    a field-selected LIST of cordoned nodes plus a ``limit=1`` LIST whose remainingItemCount
    gives the total. Cheap enough for every agent to run before each cordon."""
    cordoned = await _list_node_body(api, field_selector="spec.unschedulable=true")
    names = [
        str((i.get("metadata") or {}).get("name", ""))
        for i in cordoned.get("items") or []
        if isinstance(i, dict) and is_unschedulable(i)
    ]
    page = await _list_node_body(api, limit=1)
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
    return await read_modify_replace(
        lambda: get_node(api, name),
        lambda node: core.replace_node(
            name,
            raw_body(node),
            field_manager=FIELD_MANAGER,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        ),
        mutate,
    )


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


def field_owners(obj: dict[str, Any], *path: str) -> list[tuple[str, str]] | None:
    """(manager, time) of every ``managedFields`` entry owning the field at ``path`` (e.g.
    ``"spec", "unschedulable"``), or None when the object carries no managedFields at all (a
    server that does not track them: then nobody can say who set the field)."""
    entries = (obj.get("metadata") or {}).get("managedFields")
    if not isinstance(entries, list) or not entries:
        return None
    owners: list[tuple[str, str]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        fields: Any = entry.get("fieldsV1")
        for part in path:
            fields = fields.get("f:" + part) if isinstance(fields, dict) else None
        if fields is not None:
            owners.append((str(entry.get("manager", "")), str(entry.get("time", ""))))
    return owners
