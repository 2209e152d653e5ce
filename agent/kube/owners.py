"""Find a pod's top-level controller (Deployment, StatefulSet, DaemonSet, Job...) and annotate it.

Called by agent.actions.annotate for ``target: owner`` (e.g. "annotate the owner of a pod that
keeps getting OOM-killed", so the team that owns the workload sees it). Follows controller
ownerReferences pod -> ReplicaSet -> Deployment (and Job -> CronJob); stops at kinds it does not
know. Writes are resourceVersion-guarded replaces with 409 retries (agent.kube.update).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import REQUEST_TIMEOUT_SECONDS, call_json
from agent.kube.update import Mutation, read_modify_replace

_METHODS: dict[str, tuple[str, str, str]] = {
    # kind: (api class, read method, replace method)
    "ReplicaSet": ("AppsV1Api", "read_namespaced_replica_set", "replace_namespaced_replica_set"),
    "Deployment": ("AppsV1Api", "read_namespaced_deployment", "replace_namespaced_deployment"),
    "StatefulSet": ("AppsV1Api", "read_namespaced_stateful_set", "replace_namespaced_stateful_set"),
    "DaemonSet": ("AppsV1Api", "read_namespaced_daemon_set", "replace_namespaced_daemon_set"),
    "Job": ("BatchV1Api", "read_namespaced_job", "replace_namespaced_job"),
    "CronJob": ("BatchV1Api", "read_namespaced_cron_job", "replace_namespaced_cron_job"),
}
MAX_DEPTH = 4


def controller_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object's controller ownerReference, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("kind", "")), str(ref.get("name", ""))
    return None


async def _read(api: Any, kind: str, namespace: str, name: str) -> dict[str, Any]:
    cls, read, _ = _METHODS[kind]
    method = getattr(getattr(client, cls)(api), read)
    return await call_json(
        method(name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS)
    )


async def top_owner(api: Any, pod: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the outermost known controller of ``pod``, or None for a bare pod."""
    namespace = str((pod.get("metadata") or {}).get("namespace", ""))
    ref = controller_of(pod)
    if ref is None or ref[0] not in _METHODS:
        return None
    found = ref
    for _ in range(MAX_DEPTH):
        obj = await _read(api, found[0], namespace, found[1])
        parent = controller_of(obj)
        if parent is None or parent[0] not in _METHODS:
            return found
        found = parent
    return found


async def update_owner(
    api: Any, kind: str, namespace: str, name: str, mutate: Mutation
) -> tuple[dict[str, Any], bool]:
    """Read-modify-replace of a controller object with 409 retries."""
    cls, _, replace = _METHODS[kind]
    method = getattr(getattr(client, cls)(api), replace)
    return await read_modify_replace(
        lambda: _read(api, kind, namespace, name),
        lambda obj: method(
            name, namespace, obj, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
        ),
        mutate,
    )
