"""One real node (hack/k8s/node-up.sh: containerd + runc + the pinned kubelet) under the session's
real control plane, for tests of what only a real kubelet and kernel produce.

Off unless ``NODEMEDIC_K8S_NODES=1``: the node needs root, Debian's containerd, runc,
containernetworking-plugins and busybox-static, and it uses host-wide things (the ``kubepods``
cgroups, /run/netns, a bridge), so two sessions on one host would collide. When it is on and the
node cannot come up, the test fails with node-up.sh's own error, never skips.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
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
        settings = Settings(path_cgroupfs=cgroupfs, kubelet_url=kubelet_url)
        ctx = CollectorContext(settings, kubelet=kubelet)
        return {f.name: f for f in await CgroupCollector(ctx).collect()}
    finally:
        await kubelet.close()
