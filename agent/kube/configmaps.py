"""Read one ConfigMap's data: the cluster-wide pause switch of the safety gate.

Called by agent.safety.pause. A missing ConfigMap is not an error (it means "not paused").
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import REQUEST_TIMEOUT_SECONDS, KubeNotFound, call_json


async def get_configmap_data(api: Any, namespace: str, name: str) -> dict[str, str] | None:
    """Return ``data`` of the ConfigMap, or None when it does not exist."""
    core = client.CoreV1Api(api)
    try:
        body = await call_json(
            core.read_namespaced_config_map(
                name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        )
    except KubeNotFound:
        return None
    data = body.get("data") or {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
