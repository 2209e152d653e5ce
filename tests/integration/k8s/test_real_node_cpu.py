"""CPU throttling and PSI of real pods on a real node (tests/real_node.py): a container with a
100m CPU limit spins (a busybox ``sh`` loop) beside a BestEffort pod that sleeps. nodemedic's
cgroup collector, fed by the real kubelet's /pods, reports the spinning container's throttled
periods and time, and none for the BestEffort one; each figure lies between two reads of the
kernel's own file taken just before and just after nodemedic's (cgroup v1 ``cpu.stat``
nr_periods / nr_throttled / throttled_time, ``cpuacct.usage``), and the CPU use agrees with the
kubelet's /stats/summary.

PSI: this host is cgroup v1 with a v2 ``unified`` mount (hybrid). runc places every container in
the unified tree as well (``/sys/fs/cgroup/unified/kubepods/...``), whose ``cpu.pressure`` is
real per-container PSI even with no v2 controller enabled; nodemedic reads it there and its
figures are checked against those files. Where a pod has no cgroup on the unified mount, nodemedic
must report no PSI series for it (missing, never zeros).

Off unless NODEMEDIC_K8S_NODES=1 (see tests/real_node.py).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.structs.metrics import Family
from tests.real_cluster import Backend, RealCluster
from tests.real_node import (
    RealNode,
    cgroup_file,
    collect_cgroups,
    container_status,
    real_node,
    running,
    until,
)

pytestmark = [pytest.mark.backends, pytest.mark.real_only]

NS = "default"
SPIN = ["sh", "-c", "while :; do :; done"]
UNIFIED = Path("/sys/fs/cgroup/unified")


@pytest.fixture(scope="module")
def node(real_cluster: RealCluster) -> Iterator[RealNode]:
    yield from real_node(real_cluster)


@dataclass(frozen=True)
class Placed:
    name: str
    uid: str
    cid: str
    qos: str

    def labels(self) -> dict[str, str]:
        return {"namespace": NS, "pod": self.name, "container": "c", "uid": self.uid,
                "qos": self.qos}

    def v1(self, hierarchy: str, name: str) -> Path:
        return cgroup_file(hierarchy, self.uid, self.cid, name)


def manifest(name: str, on: RealNode, command: list[str],
             limits: dict[str, str] | None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "c", "image": on.image, "command": command}
    if limits:
        c["resources"] = {"limits": limits}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"nodeName": on.name, "restartPolicy": "Never",
                     "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                     "containers": [c]}}


@pytest_asyncio.fixture
async def pods(kube: Backend, node: RealNode) -> AsyncIterator[tuple[Placed, Placed]]:
    """The spinning 100m-limited pod (Guaranteed: requests default to limits) and a BestEffort
    pod, both running."""
    suffix = uuid.uuid4().hex[:6]
    spec = {f"spin-{suffix}": (SPIN, {"cpu": "100m", "memory": "32Mi"}, "guaranteed"),
            f"idle-{suffix}": (["sleep", "3600"], None, "besteffort")}
    placed: list[Placed] = []
    try:
        for name, (command, limits, _qos) in spec.items():
            code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/pods",
                                            manifest(name, node, command, limits))
            assert code == 201, body
        for name, (_c, _l, qos) in spec.items():
            got = await until(kube, NS, name, running)
            cid = container_status(got)["containerID"].split("://", 1)[1]
            placed.append(Placed(name, got["metadata"]["uid"], cid, qos))
        yield placed[0], placed[1]
    finally:
        for name in spec:
            await kube.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}"
                                         "?gracePeriodSeconds=0")


def cpu_stat(p: Placed) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in
                                   p.v1("cpu", "cpu.stat").read_text().splitlines())}


def kernel(spin: Placed, idle: Placed) -> dict[str, dict[str, float]]:
    """What the kernel says now, per pod: the figures nodemedic must report."""
    out: dict[str, dict[str, float]] = {}
    for p in (spin, idle):
        st = cpu_stat(p)
        out[p.name] = {"periods": st["nr_periods"], "throttled": st["nr_throttled"],
                       "throttled_s": st["throttled_time"] / 1e9,
                       "usage_s": int(p.v1("cpuacct", "cpuacct.usage").read_text()) / 1e9}
    return out


def reported(fams: dict[str, Family], p: Placed) -> dict[str, float | None]:
    lv = p.labels()
    return {"periods": fams["nodemedic_container_cpu_cfs_periods_total"].get(**lv),
            "throttled": fams["nodemedic_container_cpu_cfs_throttled_periods_total"].get(**lv),
            "throttled_s": fams["nodemedic_container_cpu_cfs_throttled_seconds_total"].get(**lv),
            "usage_s": fams["nodemedic_container_cpu_usage_seconds_total"].get(**lv),
            "quota": fams["nodemedic_container_cpu_quota_cores"].get(**lv)}


def summary(node: RealNode) -> dict[str, Any]:
    with urllib.request.urlopen(f"{node.kubelet_url}/stats/summary", timeout=10) as r:
        doc: dict[str, Any] = json.load(r)
    return {p["podRef"]["name"]: p for p in doc["pods"]}


async def test_the_limited_container_is_throttled_and_the_best_effort_one_is_not(
        node: RealNode, pods: tuple[Placed, Placed]) -> None:
    spin, idle = pods
    end = time.monotonic() + 60
    while cpu_stat(spin)["nr_throttled"] < 20:  # 100 ms periods: ~2 s of spinning
        assert time.monotonic() < end, f"never throttled: {cpu_stat(spin)}"
        await asyncio.sleep(0.5)
    before = kernel(spin, idle)
    fams = await collect_cgroups(node.kubelet_url)
    after = kernel(spin, idle)
    s, i = reported(fams, spin), reported(fams, idle)
    for key in ("periods", "throttled", "throttled_s", "usage_s"):
        assert s[key] is not None, (key, s)
        assert before[spin.name][key] <= s[key] <= after[spin.name][key], (key, before, s, after)
    assert s["throttled"] and s["throttled"] >= 20 and s["throttled_s"], s
    assert s["quota"] == pytest.approx(0.1), s  # cpu.cfs_quota_us / cpu.cfs_period_us
    # BestEffort: cpu.cfs_quota_us is -1, the kernel counts no CFS period and throttles nothing;
    # nodemedic reports its CPU use and no throttling series (not a zero it did not read).
    assert idle.v1("cpu", "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert after[idle.name]["throttled"] == after[idle.name]["periods"] == 0, after
    assert i["usage_s"] is not None
    assert before[idle.name]["usage_s"] <= i["usage_s"] <= after[idle.name]["usage_s"], i
    assert i["periods"] is i["throttled"] is i["throttled_s"] is i["quota"] is None, i


async def test_cpu_use_agrees_with_the_kubelets_summary(
        node: RealNode, pods: tuple[Placed, Placed]) -> None:
    """The kubelet's summary (cadvisor) gives CPU use, not throttling: its usage of the spinning
    container is no more than what nodemedic read after it, and both see at most the 100m limit."""
    spin, _idle = pods
    t0, first = time.monotonic(), reported(await collect_cgroups(node.kubelet_url), spin)
    await asyncio.sleep(5)
    # The kubelet's usageNanoCores is a rate between two of its own samples: the first summary
    # of a young container says 0 (CI saw exactly that). Ask again until it has two samples.
    end = time.monotonic() + 60
    while True:
        (cpu,) = [c["cpu"] for c in summary(node)[spin.name]["containers"] if c["name"] == "c"]
        if int(cpu.get("usageNanoCores") or 0) > 0:
            break
        assert time.monotonic() < end, f"the kubelet never reported a CPU rate: {cpu}"
        await asyncio.sleep(1)
    t1, second = time.monotonic(), reported(await collect_cgroups(node.kubelet_url), spin)
    assert first["usage_s"] is not None and second["usage_s"] is not None
    rate = (second["usage_s"] - first["usage_s"]) / (t1 - t0)
    assert int(cpu["usageCoreNanoSeconds"]) / 1e9 <= second["usage_s"], (cpu, second)
    cores = int(cpu["usageNanoCores"]) / 1e9
    # The quota caps both at 0.1 core (+ a period's jitter); the host is shared, so no floor
    # beyond "it ran".
    assert 0.0 < rate <= 0.12, rate
    assert 0.0 < cores <= 0.12, cpu


def psi_file(p: Placed, resource: str) -> Path | None:
    for qos in ("", "besteffort", "burstable"):
        f = UNIFIED / "kubepods" / qos / f"pod{p.uid}" / p.cid / f"{resource}.pressure"
        if f.exists():
            return f
    return None


def psi_total(f: Path) -> dict[str, float]:
    """{"some": seconds, "full": seconds} from a pressure file (total= is in microseconds)."""
    out = {}
    for line in f.read_text().splitlines():
        kind, *fields = line.split()
        out[kind] = int(dict(x.split("=") for x in fields)["total"]) / 1e6
    return out


def psi_avg10(f: Path) -> float:
    """The "some" avg10 (percent) of a pressure file."""
    fields = f.read_text().splitlines()[0].split()[1:]
    return float(dict(x.split("=") for x in fields)["avg10"])


async def test_psi_comes_from_the_unified_mount_and_matches_its_files(
        node: RealNode, pods: tuple[Placed, Placed]) -> None:
    spin, idle = pods
    files = {p.name: psi_file(p, "cpu") for p in pods}
    spin_file = files[spin.name]
    end = time.monotonic() + 60
    while spin_file is not None and psi_avg10(spin_file) < 5.0:  # avg10 takes ~10 s to rise
        assert time.monotonic() < end, spin_file.read_text()
        await asyncio.sleep(1)
    before = {n: psi_total(f) for n, f in files.items() if f is not None}
    fams = await collect_cgroups(node.kubelet_url)
    after = {n: psi_total(f) for n, f in files.items() if f is not None}
    seconds = fams["nodemedic_container_pressure_seconds_total"]
    avg10 = fams["nodemedic_container_pressure_avg10_ratio"]
    for p in pods:
        for kind in ("some", "full"):
            got = seconds.get(**p.labels(), resource="cpu", kind=kind)
            if files[p.name] is None:
                # No cgroup of this pod on the v2 mount: PSI is missing, never reported as 0.
                assert got is None, (p.name, kind, got)
                continue
            assert got is not None, (p.name, kind, seconds.samples)
            assert before[p.name][kind] <= got <= after[p.name][kind], (p.name, kind, got)
    # On this host runc puts the containers in the unified tree: the test is about real PSI.
    assert files[spin.name] is not None and files[idle.name] is not None, files
    # A container held to 0.1 core while it wants a whole one stalls most of the time.
    spin_avg10 = avg10.get(**spin.labels(), resource="cpu", kind="some")
    assert spin_avg10 is not None and spin_avg10 > 0.05, avg10.samples
    assert after[spin.name]["some"] > 0.5, after
