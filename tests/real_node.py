"""One real node (hack/k8s/node-up.sh: containerd + runc + the pinned kubelet) under the session's
real control plane, for tests of what only a real kubelet and kernel produce.

Off unless ``NODEMEDIC_K8S_NODES=1``: the node needs root, Debian's containerd, runc,
containernetworking-plugins and busybox-static, and it uses host-wide things (the ``kubepods``
cgroups, /run/netns, a bridge), so two sessions on one host would collide. When it is on and the
node cannot come up, the test fails with node-up.sh's own error, never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.kubelet_client import KubeletClient
from agent.settings import Settings
from agent.structs.metrics import Family
from tests.real_cluster import HACK, Backend, RealCluster

NODES_ENV = "NODEMEDIC_K8S_NODES"
IMAGE = "nodemedic.local/busybox:1"


@dataclass(frozen=True)
class RealNode:
    name: str
    kubelet_url: str  # the kubelet's read-only port (http, no auth): /pods, /stats/summary
    directory: Path  # $K8S_DIR/nodes/<name>: its configs, logs; bound into an nspawn node
    image: str = IMAGE
    leader: int | None = None  # NODE_NSPAWN=1: PID (host's view) of the node container's systemd

    @property
    def cgroupfs(self) -> Path:
        """The cgroupfs as this node's agent sees it: the host's, or (a node with its own
        cgroupRoot) node-up.sh's view with each hierarchy's root bound at <dir>/cgroupfs/<h>."""
        view = self.directory / "cgroupfs"
        return view if view.is_dir() else Path("/sys/fs/cgroup")

    def inside(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command in the nspawn node (its real systemd's systemctl, journalctl ...)."""
        assert self.leader is not None, "not an nspawn node"
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p", "-C", "--", "env", "-i",
             "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", *argv],
            capture_output=True, text=True, timeout=timeout, check=False)


def require_nodes() -> None:
    """Skip (a choice, also under make test's strict skips) unless the tier is switched on."""
    if os.environ.get(NODES_ENV) != "1":
        pytest.skip(f"real nodes are off (set {NODES_ENV}=1; needs root and containerd)")


def real_node(cluster: RealCluster, name: str = "nodemedic-node-1", *, nspawn: bool = False,
              binds: tuple[Path, ...] = (), binds_ro: tuple[Path, ...] = (),
              kube_proxy: bool = False, env: dict[str, str] | None = None
              ) -> Iterator[RealNode]:
    """Generator for a fixture: the node Ready, then torn down (node-down.sh). ``nspawn``: the
    kubelet and containerd as systemd units in a booted nspawn container (hack/k8s/nspawn.sh),
    with ``binds`` / ``binds_ro`` host directories bound into it at the same paths.
    ``kube_proxy``: kube-proxy in iptables mode too (its rules in the host's namespace).
    ``env``: more node-up.sh settings (a second node's NODE_BRIDGE, NODE_POD_CIDR,
    NODE_CGROUP_ROOT)."""
    require_nodes()
    try:
        cluster.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    if cluster.tmp is None:
        pytest.fail("a real node needs the control plane of hack/k8s/up.sh (its CA signs the "
                    "node's certificate); an existing cluster (NODEMEDIC_K8S_KUBECONFIG) has none",
                    pytrace=False)
    env = {**os.environ, "K8S_DIR": str(cluster.tmp / "k8s"), "NODE_NAME": name,
           "NODE_NSPAWN": "1" if nspawn else "0", "NODE_KUBE_PROXY": "1" if kube_proxy else "0",
           "NODE_NSPAWN_BINDS": " ".join(map(str, binds)),
           "NODE_NSPAWN_BINDS_RO": " ".join(map(str, binds_ro)), **(env or {})}
    up = subprocess.run(["bash", str(HACK / "node-up.sh")], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
    if up.returncode != 0:
        pytest.fail(f"the real node did not come up (hack/k8s/node-up.sh exit {up.returncode}):"
                    f"\n{up.stderr[-4000:]}", pytrace=False)
    got_name, url = up.stdout.strip().splitlines()[-1].split()
    directory = cluster.tmp / "k8s" / "nodes" / got_name
    leader_file = directory / "nspawn-leader"
    leader = int(leader_file.read_text()) if leader_file.exists() else None
    try:
        yield RealNode(got_name, url, directory, leader=leader)
    finally:
        subprocess.run(["bash", str(HACK / "node-down.sh")], env=env, capture_output=True,
                       check=False, timeout=180)


def cgroup_file(hierarchy: str, pod_uid: str, container_id: str, name: str) -> Path:
    """The v1 control file of a container the kubelet placed with the cgroupfs driver."""
    base = Path("/sys/fs/cgroup") / hierarchy / "kubepods"
    for qos in ("", "burstable", "besteffort"):
        p = base / qos / f"pod{pod_uid}" / container_id / name
        if p.exists():
            return p
    raise AssertionError(f"no {name} for pod {pod_uid} container {container_id} under {base}")


async def until(kube: Backend, ns: str, name: str, done: Callable[[dict[str, Any]], bool],
                timeout: float = 90.0) -> dict[str, Any]:
    """Poll the pod until ``done(pod)``; fail with its last status otherwise."""
    end = time.monotonic() + timeout
    got: dict[str, Any] | None = None
    while time.monotonic() < end:
        got = await kube.get("Pod", ns, name)
        if got is not None and done(got):
            return got
        await asyncio.sleep(0.5)
    raise AssertionError(f"pod {ns}/{name} not there within {timeout} s: "
                         f"{(got or {}).get('status')}")


def container_status(p: dict[str, Any]) -> dict[str, Any]:
    statuses = p.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def running(p: dict[str, Any]) -> bool:
    return "running" in container_status(p).get("state", {})


async def collect_cgroups(kubelet_url: str, cgroupfs: Path = Path("/sys/fs/cgroup")
                          ) -> dict[str, Family]:
    """One tick of nodemedic's cgroup collector on ``cgroupfs``, fed by the kubelet's /pods."""
    kubelet = KubeletClient(kubelet_url, pods_max_age=0.0)
    try:
        # Every call reads the files now and per container: the tests compare nodemedic's
        # figures with reads of the same files taken around it (the defaults re-serve a read
        # for up to 30 s and keep PSI per pod).
        settings = Settings(path_cgroupfs=cgroupfs, kubelet_url=kubelet_url,
                            cgroup_min_interval=0.0, cgroup_psi="container")
        ctx = CollectorContext(settings, kubelet=kubelet)
        return {f.name: f for f in await CgroupCollector(ctx).collect()}
    finally:
        await kubelet.close()


def node_env(index: int) -> dict[str, str]:
    """node-up.sh settings of the ``index``-th real node on this host (1-based): node 1 in the
    standard kubepods tree, node i > 1 with its own bridge, pod CIDR and cgroupRoot."""
    if index == 1:
        return {}
    return {"NODE_BRIDGE": f"nmbr{index - 1}", "NODE_POD_CIDR": f"10.244.{index}.0/24",
            "NODE_CGROUP_ROOT": f"/nodemedic-node-{index}"}


def real_nodes(cluster: RealCluster, count: int) -> Iterator[list[RealNode]]:
    """Generator for a fixture: ``count`` real nodes (nodemedic-node-1..count, see node_env)
    Ready, then every one torn down, the last one started first."""
    with contextlib.ExitStack() as stack:
        nodes: list[RealNode] = []
        for i in range(1, count + 1):
            up = contextlib.contextmanager(real_node)  # leaving it runs node-down.sh
            nodes.append(stack.enter_context(up(cluster, f"nodemedic-node-{i}", env=node_env(i))))
        yield nodes


def fail_node(node: RealNode) -> list[str]:
    """A node dies: its kubelet is SIGKILLed (its whole process group), then every container
    task in its containerd is SIGKILLed, so its pods really stop and nothing reports on them.
    containerd itself is left running, idle (nothing talks to it with the kubelet gone), so that
    node-down.sh can still delete the dead tasks. Returns the killed task ids."""
    pids = dict(line.split() for line in (node.directory / "pids").read_text().splitlines()
                if line.strip())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(pids["kubelet"]), signal.SIGKILL)
    ctr = ["ctr", "--address", str(node.directory / "containerd" / "containerd.sock"),
           "-n", "k8s.io", "tasks"]
    tasks = subprocess.run([*ctr, "list", "-q"], capture_output=True, text=True, timeout=30,
                           check=False).stdout.split()
    for task in tasks:
        subprocess.run([*ctr, "kill", "-s", "SIGKILL", task], capture_output=True, timeout=30,
                       check=False)
    return tasks


class KubeletNodes:
    """What nodemedic_sim.demo.fleet.Fleet needs of a cluster (tests/real_fleet.RealNodes' part)
    for real nodes: each agent listens on its node's InternalIP (the host's address, shared by
    all nodes here; a port each), and ``stop_kubelet`` is :func:`fail_node`."""

    def __init__(self, kubeconfig: Path, nodes: list[RealNode]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.names = list(self.nodes)
        self.server = self  # Fleet asks cluster.server.write_kubeconfig()
        self._kubeconfig = kubeconfig
        self.log: list[tuple[float, str, str]] = []

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(self._kubeconfig.read_text())
        path.chmod(0o600)
        return path

    def address(self, name: str) -> str:
        return str(urllib.parse.urlsplit(self.nodes[name].kubelet_url).hostname)

    def stop_kubelet(self, name: str) -> None:
        fail_node(self.nodes[name])

    def start_kubelet(self, name: str) -> None:
        raise NotImplementedError("a failed real node comes back only through node-up.sh")

    def record(self, kind: str, detail: str) -> None:
        self.log.append((time.monotonic(), kind, detail))


def spread_workload(ns: str, image: str = IMAGE, replicas: int = 3) -> list[dict[str, Any]]:
    """A Deployment of ``replicas`` sleeping busybox pods, one per node (topology spread that
    ignores tainted nodes, so replacements may skew onto the healthy ones), and a PDB
    (maxUnavailable 1)."""
    labels = {"app": "web"}
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
              "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
              "labelSelector": {"matchLabels": labels}}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                      "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                      "command": ["sleep", "3600"]}],
                      "topologySpreadConstraints": [spread]}}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}},
    ]


async def namespace_pods(kube: Backend, ns: str) -> list[dict[str, Any]]:
    _, body = await kube.request("GET", f"/api/v1/namespaces/{ns}/pods")
    return list(body.get("items", []))


UNREACHABLE_KEY = "node.kubernetes.io/unreachable"
OUT_OF_SERVICE_KEY = "node.kubernetes.io/out-of-service"


@dataclass
class Timeline:
    """Seconds from the failure to each mark (None: not reached), and the last pods seen."""

    marks: dict[str, float | None]
    pods: list[dict[str, Any]]

    def summary(self) -> str:
        return ", ".join(f"{k} {'-' if v is None else f'{v:.1f}s'}" for k, v in self.marks.items())


async def failover_timeline(kube: Backend, ns: str, victim: str, t0: float, limit: float,
                            stop_at: tuple[str, ...] = ("running",), replicas: int = 3
                            ) -> Timeline:
    """Poll (every 0.25 s) the victim Node and the workload's pods from ``t0`` (monotonic, the
    failure) until every mark of ``stop_at`` is reached or ``limit`` s passed. Marks:
    ``cordon`` (unschedulable), ``unreachable`` (the node lifecycle controller's taint),
    ``evicted`` (every pod on the victim terminating or gone), ``fenced`` (out-of-service
    taint), ``gone`` (no pod left on the victim), ``bound`` (``replicas`` live pods, all on
    other nodes), ``running`` (those pods Running with their container running, as their
    kubelets report)."""
    marks: dict[str, float | None] = dict.fromkeys(
        ("cordon", "unreachable", "evicted", "fenced", "gone", "bound", "running"))
    now: list[dict[str, Any]] = []
    while time.monotonic() - t0 < limit and any(marks[k] is None for k in stop_at):
        node = await kube.get("Node", "", victim) or {}
        now = await namespace_pods(kube, ns)
        keys = {t["key"] for t in node.get("spec", {}).get("taints") or []}
        on = [p for p in now if p["spec"].get("nodeName") == victim]
        live = [p for p in now
                if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")]
        moved = len(live) == replicas and all(p["spec"]["nodeName"] != victim for p in live)
        seen = {
            "cordon": bool(node.get("spec", {}).get("unschedulable")),
            "unreachable": UNREACHABLE_KEY in keys,
            "evicted": all(p["metadata"].get("deletionTimestamp") for p in on),
            "fenced": OUT_OF_SERVICE_KEY in keys,
            "gone": not on,
            "bound": moved,
            "running": moved and all(p["status"].get("phase") == "Running" and running(p)
                                     for p in live),
        }
        t = round(time.monotonic() - t0, 1)
        for k, hit in seen.items():
            if hit and marks[k] is None:
                marks[k] = t
        await asyncio.sleep(0.25)
    return Timeline(marks, now)
