"""Node conditions owned by nodemedic's problem detector: read back and patch by type.

Called by agent.problems.detector. Writes go to the node's ``status`` subresource as a strategic
merge patch of ``status.conditions`` holding only our condition types: the API server merges the
list by its ``type`` key, so the kubelet's conditions (Ready, MemoryPressure, ...) and any other
agent's are never sent, never overwritten and never removed.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import REQUEST_TIMEOUT_SECONDS, call_json, raw_body
from agent.kube.nodes import get_node

STRATEGIC_MERGE = "application/strategic-merge-patch+json"


async def read_conditions(api: Any, node: str) -> list[dict[str, Any]]:
    """The node's current status.conditions (raises KubeNotFound / KubeUnavailable)."""
    obj = await get_node(api, node)
    conds = (obj.get("status") or {}).get("conditions") or []
    return [c for c in conds if isinstance(c, dict)]


async def patch_conditions(api: Any, node: str, conditions: list[dict[str, Any]]) -> None:
    """Merge ``conditions`` (complete condition objects, our types only) into the node status."""
    core = client.CoreV1Api(api)
    # _content_type is accepted at run time but missing from the generated signature.
    opts: dict[str, Any] = {"_content_type": STRATEGIC_MERGE}
    await call_json(
        core.patch_node_status(
            node, raw_body({"status": {"conditions": conditions}}),
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS, **opts,
        )
    )
