"""A simulated Kubernetes cluster on the in-memory API server, for the demo, tests and benchmarks.

Used by nodemedic_sim.demo.fleet / nodemedic_sim.demo.command (``nodemedic demo``),
tests/integration/failover and bench/failover.py. It plays the control-plane and node parts
nodemedic reacts to, writing through the server's own object layer (no HTTP: it *is* the cluster,
nodemedic is the client):
- kubelets renewing their ``kube-node-lease`` Lease every ``lease_renew`` seconds while alive;
- the node lifecycle controller: a node whose lease is older than ``node_monitor_grace`` turns
  Ready=Unknown, gets the ``node.kubernetes.io/unreachable`` taints and its pods turn NotReady;
- a scheduler + ReplicaSet/StatefulSet controllers: a Deployment ``web`` (a PDB allows one
  unavailable) and a StatefulSet ``db`` whose pods are recreated on schedulable nodes (a
  StatefulSet pod only once the old one is *gone*: this is why fencing matters);
- PodGC for ``node.kubernetes.io/out-of-service``: pods of a NotReady node carrying it are
  force-deleted, as Kubernetes does.
``kill()`` cuts a node's power (kubelet and agent), ``stop_kubelet()`` only its kubelet. ``log``
records what happened (time since start, kind, detail) from the cluster's point of view.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodemedic_sim.apiserver import ApiServer

ZONE_LABEL = "topology.kubernetes.io/zone"
UNREACHABLE = "node.kubernetes.io/unreachable"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
NS = "demo"


def micro(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def second(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SimConfig:
    """Cluster shape and control-plane timings (Kubernetes: renew 10 s, grace 40-50 s)."""

    nodes: int = 6
    zones: int = 2
    lease_renew: float = 0.5
    node_monitor_grace: float = 3.0
    web_replicas: int = 6
    db_replicas: int = 2
    period: float = 0.1
    with_workloads: bool = True


@dataclass(frozen=True)
class LogEntry:
    at: float  # seconds since the cluster started
    kind: str
    detail: str


class SimCluster:
    """The simulated cluster; ``await start()`` then ``kill()``/``revive()`` nodes."""

    def __init__(self, cfg: SimConfig | None = None, server: ApiServer | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.server = server or ApiServer()
        self.names = [f"node-{i + 1}" for i in range(self.cfg.nodes)]
        self.kubelet_alive = dict.fromkeys(self.names, True)
        self.log: list[LogEntry] = []
        self.listeners: list[Callable[[LogEntry], None]] = []
        self._renewed: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()
        self._seq = 0
        self._seen_pods: dict[str, tuple[str, str, bool]] = {}  # uid -> (name, node, term)
        self._seen_nodes: dict[str, tuple[bool, tuple[str, ...]]] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    def zone(self, i: int) -> str:
        return f"zone-{'abcdefgh'[i % self.cfg.zones]}"

    def address(self, name: str) -> str:
        return f"127.0.0.{self.names.index(name) + 2}"

    async def start(self) -> None:
        if not self.server.running:
            await self.server.start()
        self._t0 = time.monotonic()
        now = time.time()
        for i, name in enumerate(self.names):
            self.server.create(self._node(name, i, now))
            self.server.create({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                         "renewTime": micro(now)},
            })
            self._renewed[name] = now
        if self.cfg.with_workloads:
            self.server.create({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web", "namespace": NS},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
            })
            self._reconcile_workloads()
        self._snapshot_state(quiet=True)
        self._task = asyncio.create_task(self._loop(), name="sim-cluster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.server.stop()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def record(self, kind: str, detail: str) -> None:
        entry = LogEntry(round(self.elapsed(), 3), kind, detail)
        self.log.append(entry)
        for fn in self.listeners:
            fn(entry)

    @property
    def lease_renew_interval(self) -> float:
        """How often the simulated kubelets renew their Leases (nodemedic_sim.demo.fleet lets
        the agents' node grace go down to twice this, instead of twice a real kubelet's 10 s)."""
        return self.cfg.lease_renew

    def last_heartbeat(self, name: str) -> float:
        """Wall-clock time of the node's last kube-node-lease renewal."""
        return self._renewed[name]

    def first(self, kind: str, contains: str = "") -> LogEntry | None:
        for e in self.log:
            if e.kind == kind and contains in e.detail:
                return e
        return None

    # ---- faults ----------------------------------------------------------------------------
    def stop_kubelet(self, name: str) -> None:
        """The kubelet stops heartbeating and confirming pod deletions; the machine runs on."""
        self.kubelet_alive[name] = False
        self.server.set_kubelet_alive(name, False)
        self.record("kubelet_stopped", name)

    def start_kubelet(self, name: str) -> None:
        self.kubelet_alive[name] = True
        self.server.set_kubelet_alive(name, True)
        self.record("kubelet_started", name)

    # ---- objects ---------------------------------------------------------------------------
    def _node(self, name: str, i: int, now: float) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                ZONE_LABEL: self.zone(i), "kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "addresses": [{"type": "InternalIP", "address": self.address(name)},
                              {"type": "Hostname", "address": name}],
                "conditions": [self._ready("True", now)],
            },
        }

    @staticmethod
    def _ready(status: str, now: float) -> dict[str, str]:
        reason = {"True": "KubeletReady", "Unknown": "NodeStatusUnknown"}[status]
        return {"type": "Ready", "status": status, "reason": reason,
                "lastHeartbeatTime": second(now), "lastTransitionTime": second(now)}

    def _pod(self, name: str, app: str, owner_kind: str, node: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": app},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind,
                                              "name": app, "uid": f"uid-{app}",
                                              "controller": True}]},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": app, "image": f"example/{app}:1"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }

    # ---- the control loop ------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.period)
            try:
                self.tick()
            except Exception as exc:  # a sim bug must show, not silently freeze the cluster
                self.record("sim_error", repr(exc))

    def tick(self) -> None:
        now = time.time()
        self._kubelets(now)
        self._lifecycle(now)
        self._podgc()
        if self.cfg.with_workloads:
            self._reconcile_workloads()
            self._snapshot_state()

    def _kubelets(self, now: float) -> None:
        for name in self.names:
            if self.kubelet_alive[name] and now - self._renewed[name] >= self.cfg.lease_renew:
                self.server.patch("leases", "kube-node-lease", name,
                                  {"spec": {"renewTime": micro(now)}})
                self._renewed[name] = now

    def _lifecycle(self, now: float) -> None:
        for name in self.names:
            node = self.server.get("nodes", "", name)
            if node is None:
                continue
            ready: dict[str, Any] = next((c for c in node["status"].get("conditions", [])
                                          if c.get("type") == "Ready"), {})
            stale = now - self._renewed[name] > self.cfg.node_monitor_grace
            taints = [t for t in node.get("spec", {}).get("taints") or []
                      if t.get("key") != UNREACHABLE]
            if stale and ready.get("status") == "True":
                self.server.patch("nodes", "", name, {"status": {
                    "conditions": [self._ready("Unknown", now)]}}, subresource="status")
                self.server.patch("nodes", "", name, {"spec": {"taints": [
                    *taints, {"key": UNREACHABLE, "effect": "NoSchedule"},
                    {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": second(now)}]}})
                for pod in self._pods_on(name):
                    self.server.patch("pods", NS, pod["metadata"]["name"], {"status": {
                        "conditions": [{"type": "Ready", "status": "False"}]}},
                        subresource="status")
                self.record("node_not_ready", f"{name}: Ready=Unknown, unreachable taints added")
            elif not stale and ready.get("status") != "True":
                self.server.patch("nodes", "", name, {"status": {
                    "conditions": [self._ready("True", now)]}}, subresource="status")
                self.server.patch("nodes", "", name, {"spec": {"taints": taints}})
                self.record("node_ready", f"{name}: Ready=True")

    def _podgc(self) -> None:
        for name in self.names:
            node = self.server.get("nodes", "", name)
            if node is None:
                continue
            oos = any(t.get("key") == OUT_OF_SERVICE for t in node["spec"].get("taints") or [])
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in node["status"].get("conditions", []))
            if oos and not ready:
                for pod in self._pods_on(name):
                    self.server.delete("pods", NS, pod["metadata"]["name"], grace_period=0)

    def _pods_on(self, node: str) -> list[dict[str, Any]]:
        return [p for p in self.server.list("pods", NS) if p["spec"].get("nodeName") == node]

    def schedulable(self) -> list[str]:
        out = []
        for name in self.names:
            node = self.server.get("nodes", "", name)
            if node is None or node["spec"].get("unschedulable"):
                continue
            if any(t.get("effect") in ("NoSchedule", "NoExecute")
                   for t in node["spec"].get("taints") or []):
                continue
            if not any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in node["status"].get("conditions", [])):
                continue
            out.append(name)
        return out

    def _place(self) -> str | None:
        nodes = self.schedulable()
        if not nodes:
            return None
        load = {n: 0 for n in nodes}
        for p in self.server.list("pods", NS):
            if p["spec"].get("nodeName") in load:
                load[p["spec"]["nodeName"]] += 1
        return min(nodes, key=lambda n: (load[n], n))

    def _reconcile_workloads(self) -> None:
        pods = self.server.list("pods", NS)
        web = [p for p in pods if p["metadata"]["labels"].get("app") == "web"
               and not p["metadata"].get("deletionTimestamp")]
        for _ in range(self.cfg.web_replicas - len(web)):
            node = self._place()
            if node is None:
                break
            self._seq += 1
            self.server.create(self._pod(f"web-{self._seq:04d}", "web", "ReplicaSet", node))
        names = {p["metadata"]["name"] for p in pods}
        for i in range(self.cfg.db_replicas):
            if f"db-{i}" not in names:  # a StatefulSet waits until the old pod is gone
                node = self._place()
                if node is not None:
                    self.server.create(self._pod(f"db-{i}", "db", "StatefulSet", node))

    # ---- observing --------------------------------------------------------------------------
    def _snapshot_state(self, quiet: bool = False) -> None:
        # Node changes first: within one sample a cordon precedes the evictions it causes.
        for n in self.server.list("nodes"):
            name = n["metadata"]["name"]
            taints = n["spec"].get("taints") or []
            state = (bool(n["spec"].get("unschedulable")),
                     tuple(sorted(f"{t['key']}:{t['effect']}" for t in taints)))
            old_state = self._seen_nodes.get(name)
            if old_state is not None and not quiet:
                if state[0] != old_state[0]:
                    self.record("cordoned" if state[0] else "uncordoned", name)
                for t in sorted(set(state[1]) - set(old_state[1])):
                    self.record("taint_added", f"{name} {t}")
                for t in sorted(set(old_state[1]) - set(state[1])):
                    self.record("taint_removed", f"{name} {t}")
            self._seen_nodes[name] = state
        # Keyed by uid: a StatefulSet pod re-created under the same name is a new pod.
        pods = {p["metadata"]["uid"]: (p["metadata"]["name"], p["spec"].get("nodeName", ""),
                                       bool(p["metadata"].get("deletionTimestamp")))
                for p in self.server.list("pods", NS)}
        if not quiet:
            for uid, (name, node, _) in self._seen_pods.items():
                if uid not in pods:
                    self.record("pod_deleted", f"{name} on {node}")
            for uid, (name, node, term) in pods.items():
                old = self._seen_pods.get(uid)
                if old is None:
                    self.record("pod_running", f"{name} on {node}")
                elif term and not old[2]:
                    self.record("pod_terminating", f"{name} on {node}")
        self._seen_pods = pods

    def pods_by_node(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.names}
        for p in self.server.list("pods", NS):
            out.setdefault(p["spec"].get("nodeName", ""), []).append(p["metadata"]["name"])
        return out
