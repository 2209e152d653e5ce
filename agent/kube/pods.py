"""Pod listing, reading, annotation and eviction for drain, evict-pod and annotate.

Called by agent.actions.drain, agent.actions.evict_pod and agent.actions.annotate. Evictions go
through the Eviction subresource only (the API server checks PodDisruptionBudgets and answers 429
when one forbids it); there is deliberately no pod delete here, so nodemedic cannot force-delete.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import REQUEST_TIMEOUT_SECONDS, call_json, raw_body
from agent.kube.update import Mutation, read_modify_replace


async def list_node_pods(api: Any, node: str) -> list[dict[str, Any]]:
    """Every pod bound to ``node`` (field selector spec.nodeName), as JSON dicts."""
    core = client.CoreV1Api(api)
    body = await call_json(
        core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    )
    items = body.get("items") or []
    # Belt and braces: never act on a pod of another node even if a server ignores the selector.
    return [
        i for i in items if isinstance(i, dict) and (i.get("spec") or {}).get("nodeName") == node
    ]


async def get_pod(api: Any, namespace: str, name: str) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    return await call_json(
        core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    )


async def evict_pod(api: Any, namespace: str, name: str, grace_seconds: int, uid: str = "") -> None:
    """POST an Eviction; raises KubeTooManyRequests (PDB), KubeNotFound (gone), KubeError.

    ``uid`` is sent as a precondition so that a pod re-created under the same name (a
    StatefulSet replica) is not evicted by a retry meant for its predecessor.
    """
    core = client.CoreV1Api(api)
    delete_options: dict[str, Any] = {"gracePeriodSeconds": int(grace_seconds)}
    if uid:
        delete_options["preconditions"] = {"uid": uid}
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
        "deleteOptions": delete_options,
    }
    await call_json(
        core.create_namespaced_pod_eviction(
            name,
            namespace,
            raw_body(body),
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    )


async def update_pod(
    api: Any, namespace: str, name: str, mutate: Mutation
) -> tuple[dict[str, Any], bool]:
    """Read-modify-replace of a pod with 409 retries (same contract as nodes.update_node)."""
    core = client.CoreV1Api(api)
    return await read_modify_replace(
        lambda: get_pod(api, namespace, name),
        lambda pod: core.replace_namespaced_pod(
            name,
            namespace,
            raw_body(pod),
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        ),
        mutate,
    )
