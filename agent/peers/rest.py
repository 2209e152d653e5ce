"""Raw JSON requests and list+watch over the agent's ApiClient for the objects failover needs.

Called by agent.peers.leader, .heartbeat, .slots (Leases: get/create/replace) and
agent.peers.informer (list+watch of Nodes and Leases). agent.kube has no Lease or watch helpers
yet, so this module drives the ApiClient it is given through its generic ``call_api`` (it does not
import kubernetes_asyncio) and reuses agent.kube.errors for the error mapping; it belongs in
agent.kube (leases.py / watch.py) once that package grows them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from agent.kube.errors import REQUEST_TIMEOUT_SECONDS, KubeError, KubeUnavailable, call_json

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
NODES = "/api/v1/nodes"
MAX_WATCH_LINE = 4 * 1024 * 1024  # one watch event; bigger is a broken stream, not an object

_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def _call(
    api: Any,
    path: str,
    method: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> Any:
    return api.call_api(
        path, method,
        query_params=list((query or {}).items()),
        header_params=dict(_HEADERS),
        body=body,
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=False,
        _request_timeout=timeout,
    )


def lease_path(namespace: str, name: str = "") -> str:
    base = LEASES.format(ns=quote(namespace, safe=""))
    return f"{base}/{quote(name, safe='')}" if name else base


async def get_lease(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """Raises KubeNotFound when absent."""
    return await call_json(_call(api, lease_path(namespace, name), "GET"))


async def create_lease(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Raises KubeConflict when it already exists."""
    return await call_json(_call(api, lease_path(namespace), "POST", body=body))


async def replace_lease(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """PUT carrying ``metadata.resourceVersion``: raises KubeConflict when it changed meanwhile."""
    name = str(body["metadata"]["name"])
    return await call_json(_call(api, lease_path(namespace, name), "PUT", body=body))


async def list_objects(
    api: Any, path: str, query: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One LIST (the caller takes ``metadata.resourceVersion`` to start a watch from)."""
    return await call_json(_call(api, path, "GET", query=query, timeout=30.0))


async def watch_objects(
    api: Any, path: str, resource_version: str, query: Mapping[str, str] | None = None,
    timeout_seconds: int = 300,
) -> AsyncIterator[dict[str, Any]]:
    """Yield watch events ({"type", "object"}) from ``resource_version`` until the server ends
    the stream. An ERROR event (e.g. 410 Gone) is yielded like any other; the caller relists."""
    q = {
        **(query or {}),
        "watch": "true",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(timeout_seconds),
    }
    try:
        resp = await _call(api, path, "GET", query=q, timeout=timeout_seconds + 30)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise KubeUnavailable(f"watch {path}: {type(exc).__name__}: {exc}") from exc
    try:
        if resp.status != 200:
            raw = await resp.read()
            raise KubeError(int(resp.status), raw[:200].decode("utf-8", "replace"))
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            if len(buf) > MAX_WATCH_LINE and b"\n" not in buf:
                raise KubeUnavailable(f"watch {path}: event larger than {MAX_WATCH_LINE} bytes")
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise KubeUnavailable(f"watch {path}: garbled event: {exc}") from exc
                if isinstance(event, dict):
                    yield event
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise KubeUnavailable(f"watch {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        resp.release()
