"""nodemedic agents on the real control plane of tests/real_cluster.py, one per Node object.

No kubelet runs here (that is issue 14), so :class:`Kubelets` plays the part each node's kubelet
plays for the control plane: it registers the Node (Ready, allocatable, hostname and zone
labels), renews its Lease in kube-node-lease, reports the pods the real scheduler bound to it as
Running and Ready, and finishes their deletion (as a kubelet does once containers stopped).
``kill(node)`` stops all of that for one node at once, as a power cut would; the real node
lifecycle controller, ReplicaSet controller, disruption controller, pod GC and scheduler do the
rest. The agents are real agent.runtime.daemon.Agent instances (nodemedic_sim.demo.fleet.Fleet),
each on its own loopback address, authenticated as the nodemedic ServiceAccount of deploy/rbac.yaml.

Used by tests/integration/k8s/test_failover_real.py and bench/failover_real.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import yaml

from nodemedic_sim.demo.fleet import Fleet, Timings
from tests.real_cluster import Backend, renew_node_lease, rest_path

ZONE = "zone-a"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def address(nodes: list[str], name: str) -> str:
    """The loopback address of a node's agent (nodemedic_sim.demo.fleet gives each its own)."""
    return f"127.0.0.{nodes.index(name) + 2}"


def node_object(name: str, ip: str) -> dict[str, Any]:
    capacity = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                              "topology.kubernetes.io/zone": ZONE,
                                              "kubernetes.io/os": "linux"}},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            # The leader probes an agent only at one of its Node's own addresses.
            "addresses": [{"type": "InternalIP", "address": ip},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now_rfc3339(),
                            "lastTransitionTime": now_rfc3339()}],
        },
    }


class Kubelets:
    """The kubelet side of each node (see the module docstring)."""

    def __init__(self, kube: Backend, nodes: list[str], every: float = 1.0) -> None:
        self.kube = kube
        self.nodes = nodes
        self.alive = set(nodes)
        self.every = every
        self.renewed: dict[str, float] = {}  # node -> wall time of its last Lease renewal
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for name in self.nodes:
            await self.kube.seed(node_object(name, address(self.nodes, name)))
            await self._lease(name, create=True)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def kill(self, node: str) -> None:
        self.alive.discard(node)

    async def _lease(self, node: str, create: bool = False) -> None:
        now = time.time()
        self.renewed[node] = now
        await renew_node_lease(self.kube, node, create=create, now=now)

    async def _loop(self) -> None:
        while True:
            # A harness hiccup (one refused call) must not stop the heartbeats for good.
            with contextlib.suppress(Exception):
                await self._round()
            await asyncio.sleep(self.every)

    async def _round(self) -> None:
        for name in sorted(self.alive):
            await self._lease(name)
        code, pods = await self.kube.request("GET", "/api/v1/pods")
        if code != 200:
            return
        for pod in pods["items"]:
            node = pod["spec"].get("nodeName")
            if node not in self.alive:
                continue
            meta = pod["metadata"]
            path = rest_path("Pod", meta["namespace"], meta["name"])
            if meta.get("deletionTimestamp"):
                await self.kube.request("DELETE", path + "?gracePeriodSeconds=0")
                continue
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (pod.get("status") or {}).get("conditions") or [])
            if not ready:
                stamp = now_rfc3339()
                await self.kube.request("PATCH", path + "/status", {"status": {
                    "phase": "Running", "startTime": stamp,
                    "conditions": [{"type": t, "status": "True", "lastTransitionTime": stamp}
                                   for t in ("PodScheduled", "Initialized", "ContainersReady",
                                             "Ready")]}},
                    "application/strategic-merge-patch+json")


class RealNodes:
    """What nodemedic_sim.demo.fleet.Fleet needs of a cluster, for the real one."""

    def __init__(self, kubeconfig: Path, kubelets: Kubelets) -> None:
        self.names = list(kubelets.nodes)
        self.kubelets = kubelets
        self.server = self  # Fleet asks cluster.server.write_kubeconfig()
        self._kubeconfig = kubeconfig
        self.log: list[tuple[float, str, str]] = []

    @property
    def lease_renew_interval(self) -> float:
        """How often :class:`Kubelets` renews the Leases: Fleet lets the agents' node grace go
        down to twice this (a real kubelet's 10 s would need 20 s)."""
        return self.kubelets.every

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(self._kubeconfig.read_text())
        path.chmod(0o600)
        return path

    def address(self, name: str) -> str:
        return address(self.names, name)

    def stop_kubelet(self, name: str) -> None:
        self.kubelets.kill(name)

    def start_kubelet(self, name: str) -> None:
        self.kubelets.alive.add(name)

    def record(self, kind: str, detail: str) -> None:
        self.log.append((time.monotonic(), kind, detail))


def sa_kubeconfig(path: Path, server: str, ca: str | None, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "real", "cluster": {"server": server,
                                                  "certificate-authority": ca}}],
        "users": [{"name": "nodemedic", "user": {"token": token}}],
        "contexts": [{"name": "nodemedic", "context": {"cluster": "real", "user": "nodemedic"}}],
        "current-context": "nodemedic",
    }))
    path.chmod(0o600)
    return path


def fleet(nodes: RealNodes, timings: Timings, workdir: Path) -> Fleet:
    return Fleet(nodes, timings, workdir=workdir)  # type: ignore[arg-type]  # duck-typed cluster
