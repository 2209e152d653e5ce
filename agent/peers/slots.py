"""The cluster-wide cap on concurrent failed-node remediations, enforced with Leases.

Called by agent.peers.stage (leader only) before it starts remediating a node and when that
remediation ends. The cap is ``max_concurrent`` Leases ``nodemedic-remediation-<i>`` in the lease
namespace; holding one (holderIdentity = the node being remediated) is the right to act on that
node. State lives in the API, not in the leader's memory, so the cap holds across agents and
across leader changes: a new leader finds the slots its predecessor took and resumes those nodes
first. A slot whose holder stopped renewing for ``slot_seconds`` is free again, so a crashed
leader cannot hold the cap forever. Every write carries the resourceVersion read (409 = lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.kube import leases
from agent.kube.errors import KubeConflict, KubeError, KubeNotFound

SLOT_PREFIX = "nodemedic-remediation-"


class Slots:
    """Acquire/renew/release remediation slots for target nodes."""

    def __init__(
        self, api: Any, namespace: str, max_concurrent: int, *, slot_seconds: int = 600,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.max_concurrent = max_concurrent
        self.slot_seconds = slot_seconds
        self.wall = wall
        self.denied = 0

    def _name(self, i: int) -> str:
        return f"{SLOT_PREFIX}{i}"

    def _free(self, lease: dict[str, Any], now: float) -> bool:
        spec = lease.get("spec") or {}
        return not spec.get("holderIdentity") or leases.expired(spec, now, self.slot_seconds)

    def _body(
        self, i: int, node: str, now: float, current: dict[str, Any] | None
    ) -> dict[str, Any]:
        meta = dict((current or {}).get("metadata") or {"name": self._name(i),
                                                          "namespace": self.namespace})
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": node, "leaseDurationSeconds": self.slot_seconds,
                     "acquireTime": leases.micro_time(now), "renewTime": leases.micro_time(now)},
        }

    async def holders(self) -> dict[int, str]:
        """Slot index -> node currently holding it (expired slots omitted)."""
        now = self.wall()
        out: dict[int, str] = {}
        for i in range(self.max_concurrent):
            try:
                lease = await leases.get_lease(self.api, self.namespace, self._name(i))
            except KubeNotFound:
                continue
            if not self._free(lease, now):
                out[i] = str((lease.get("spec") or {}).get("holderIdentity"))
        return out

    async def acquire(self, node: str) -> bool:
        """Take (or renew, if already ours) a slot for ``node``; False when the cap is full.

        Raises KubeError when the API cannot be read: not knowing means not acting.
        """
        now = self.wall()
        free: list[tuple[int, dict[str, Any] | None]] = []
        for i in range(self.max_concurrent):
            try:
                lease: dict[str, Any] | None = await leases.get_lease(
                    self.api, self.namespace, self._name(i)
                )
            except KubeNotFound:
                lease = None
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == node:
                await leases.replace_lease(
                    self.api, self.namespace, self._body(i, node, now, lease)
                )
                return True
            if lease is None or self._free(lease, now):
                free.append((i, lease))
        for i, lease in free:
            try:
                if lease is None:
                    await leases.create_lease(self.api, self.namespace,
                                            self._body(i, node, now, None))
                else:
                    await leases.replace_lease(self.api, self.namespace,
                                             self._body(i, node, now, lease))
                return True
            except KubeConflict:
                continue  # someone took it first: try the next free one
        self.denied += 1
        return False

    async def release(self, node: str) -> None:
        """Free every slot ``node`` holds (best effort: an unreleased slot expires)."""
        for i in range(self.max_concurrent):
            try:
                lease = await leases.get_lease(self.api, self.namespace, self._name(i))
                spec = dict(lease.get("spec") or {})
                if spec.get("holderIdentity") != node:
                    continue
                spec["holderIdentity"] = ""
                spec["renewTime"] = leases.micro_time(self.wall())
                await leases.replace_lease(self.api, self.namespace, {**lease, "spec": spec})
            except KubeError:
                continue
