"""coordination.k8s.io Leases as short-lived cluster-wide locks, written compare-and-swap.

Called by agent.safety.gate (``try_acquire``/``release``), which holds the cordon lock
(``--safety.cordon-lock``) from the moment it counts unschedulable nodes until its cordon has been
written, so that two agents checking the cluster cap in the same second cannot both see room for one
more node. A holder that dies mid-way stops renewing and the lock frees itself after its duration;
every write carries the resourceVersion that was read, so of two contenders exactly one wins (409
for the other). The plain get/create/replace calls are also the failover Leases'
(agent.peers.leader, .heartbeat, .slots), and ``list_leases`` lists the heartbeat Leases for
agent.peers.clockskew. Lease bodies are plain dicts (``_preload_content=False``),
like the rest of agent.kube.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from agent.kube.errors import (
    REQUEST_TIMEOUT_SECONDS,
    KubeConflict,
    KubeNotFound,
    call_json,
    raw_body,
)


def micro_time(ts: float) -> str:
    """metav1.MicroTime text for a Unix time."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: Any) -> float | None:
    """Unix time of a metav1.MicroTime/Time text; None when absent or unparsable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class LockState:
    """The outcome of one acquire attempt: ``held`` by us, else who holds it (may be "")."""

    held: bool
    holder: str


async def get_lease(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """The Lease as a dict; raises KubeNotFound when absent."""
    coord = client.CoordinationV1Api(api)
    return await call_json(
        coord.read_namespaced_lease(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    )


async def list_leases(api: Any, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """The Leases of ``namespace`` matching ``label_selector``, served from the API server's
    watch cache (resourceVersion "0": cheap, possibly a little stale, which suits peer lists)."""
    coord = client.CoordinationV1Api(api)
    body = await call_json(
        coord.list_namespaced_lease(
            namespace, label_selector=label_selector, resource_version="0",
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    )
    return [item for item in body.get("items") or [] if isinstance(item, dict)]


async def create_lease(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create the Lease in ``body``; raises KubeConflict when it already exists."""
    coord = client.CoordinationV1Api(api)
    return await call_json(
        coord.create_namespaced_lease(
            namespace, raw_body(body), _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    )


async def replace_lease(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """PUT carrying ``metadata.resourceVersion``: raises KubeConflict when it changed meanwhile."""
    coord = client.CoordinationV1Api(api)
    return await call_json(
        coord.replace_namespaced_lease(
            str(body["metadata"]["name"]), namespace, raw_body(body), _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    )


def expired(spec: Mapping[str, Any], now: float, default_duration: float = 0.0) -> bool:
    """Whether a Lease spec's holder stopped renewing more than its duration ago (or never did)."""
    renewed = parse_micro_time(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return renewed is None or now - renewed > duration


async def try_acquire(
    api: Any, namespace: str, name: str, holder: str, *, duration: int, now: float
) -> LockState:
    """Take or renew the lock Lease for ``holder`` unless someone else holds it unexpired.

    Raises KubeError when the API cannot be read or written (other than losing a race, which is
    a LockState with held=False): the caller must treat that as "cannot know", never as free.
    """
    coord = client.CoordinationV1Api(api)
    spec = {
        "holderIdentity": holder,
        "leaseDurationSeconds": duration,
        "renewTime": micro_time(now),
    }
    try:
        current = await get_lease(api, namespace, name)
    except KubeNotFound:
        body = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
        try:
            await call_json(
                coord.create_namespaced_lease(
                    namespace, raw_body(body), _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
            )
        except KubeConflict:
            return LockState(False, "")  # created by a contender a moment ago
        return LockState(True, holder)
    cur_spec = current.get("spec") or {}
    owner = str(cur_spec.get("holderIdentity") or "")
    if owner and owner != holder and not expired(cur_spec, now):
        return LockState(False, owner)
    # Replace with the resourceVersion we read: if anyone wrote in between, we get 409 and lose.
    if not await _replace(coord, namespace, name, current, {**cur_spec, **spec}):
        return LockState(False, owner)
    return LockState(True, holder)


async def _replace(coord: Any, namespace: str, name: str, current: dict[str, Any],
                   spec: dict[str, Any]) -> bool:
    """Replace the Lease as read (its resourceVersion) with ``spec``; False on 409: someone
    wrote in between and won."""
    body = {"metadata": current.get("metadata") or {}, "spec": spec}
    try:
        await call_json(
            coord.replace_namespaced_lease(
                name, namespace, raw_body(body), _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        )
    except KubeConflict:
        return False
    return True


async def release(api: Any, namespace: str, name: str, holder: str) -> bool:
    """Free the lock if ``holder`` still holds it; True when released. 409 = someone moved on."""
    coord = client.CoordinationV1Api(api)
    try:
        current = await get_lease(api, namespace, name)
    except KubeNotFound:
        return False
    spec = current.get("spec") or {}
    if spec.get("holderIdentity") != holder:
        return False
    return await _replace(coord, namespace, name, current, {**spec, "holderIdentity": ""})
