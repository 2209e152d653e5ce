"""The cgroup collector on the real kernel: OOM kills and CFS throttling in cgroup v1 cgroups at
kubepods paths, and CPU pressure (PSI) in a pod-like cgroup of the v2 (unified) hierarchy.

Needs root and a host with cgroup v1 controllers at /sys/fs/cgroup/{memory,cpu,cpuacct} and
cgroup v2 at /sys/fs/cgroup/unified (the hybrid layout of the development VMs). Every cgroup the
test creates is removed and every process it starts is killed, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.settings import Settings
from agent.structs.metrics import Family

pytestmark = pytest.mark.root

CGROOT = Path("/sys/fs/cgroup")
BUSY = "while True: pass"


def need(*hierarchies: str) -> list[Path]:
    """Skip unless root and every named hierarchy is mounted."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    paths = [CGROOT / h if h else CGROOT for h in hierarchies]
    for p in paths:
        if not (p / "cgroup.procs").exists():
            pytest.skip(f"{p} is not a mounted cgroup hierarchy on this host")
    return paths


class KernelPod:
    """One pod-like cgroup (pod + one container) created in some hierarchies, plus the processes
    started in its container; ``close()`` undoes all of it."""

    def __init__(self, hierarchies: list[Path]) -> None:
        self.uid = str(uuid.uuid4())
        self.cid = uuid.uuid4().hex + uuid.uuid4().hex
        self.hierarchies = hierarchies
        self.created: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.containers: list[Path] = []

    def create(self) -> None:
        for h in self.hierarchies:
            d = h
            for part in ("kubepods", "burstable", f"pod{self.uid}", self.cid):
                d = d / part
                if not d.is_dir():
                    d.mkdir()
                    self.created.append(d)
            self.containers.append(d)

    def container(self, hierarchy: Path) -> Path:
        return self.containers[self.hierarchies.index(hierarchy)]

    def start(self, code: str) -> subprocess.Popen[bytes]:
        """Run ``python -c code`` inside the container cgroup of every hierarchy (the shell
        joins the cgroups before exec, so the process never runs outside them)."""
        joins = "".join(f'echo $$ > "{c}/cgroup.procs" && ' for c in self.containers)
        proc = subprocess.Popen(
            ["sh", "-c", f'{joins}exec "$0" -c "$1"', sys.executable, code],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        for d in reversed(self.created):
            # A just-killed task can take a moment to leave the cgroup (EBUSY).
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                d.rmdir()  # raise: a stray cgroup must fail the test loudly


@contextmanager
def kernel_pod(hierarchies: list[Path]) -> Iterator[KernelPod]:
    pod = KernelPod(hierarchies)
    try:
        pod.create()  # inside try: mkdirs are undone even if a later one fails
        yield pod
    finally:
        pod.close()


async def collect() -> dict[str, Family]:
    ctx = CollectorContext(Settings(path_cgroupfs=CGROOT, cgroup_psi="container"))
    return {f.name: f for f in await CgroupCollector(ctx).collect()}


async def poll(deadline_s: float, *wanted: tuple[str, dict[str, str]]) -> dict[str, Family]:
    """Collect until every (metric, labels) in ``wanted`` is positive in one collection, or the
    deadline passes; return the last collection. Kernel counters move asynchronously (CFS
    throttled time is added at unthrottle, PSI totals per cgroup are aggregated on read), so
    a single read right after starting the load may see some of them still at 0."""
    end = time.monotonic() + deadline_s
    while True:
        fams = await collect()
        if all((fams[m].get(**labels) or 0) > 0 for m, labels in wanted):
            return fams
        if time.monotonic() > end:
            return fams
        await asyncio.sleep(0.1)


async def test_v1_memory_limit_exceeded_reports_oom_kill() -> None:
    """A process exceeding a 64 MiB v1 memory limit at kubepods/burstable/pod<uid>/<id> is
    OOM-killed and the collector reports the kill for that container, with the limit."""
    (memory,) = need("memory")
    with kernel_pod([memory]) as pod:
        if not (pod.container(memory) / "memory.oom_control").read_text().count("oom_kill "):
            pytest.skip("kernel's v1 memory.oom_control has no oom_kill counter (before 4.13)")
        (pod.container(memory) / "memory.limit_in_bytes").write_text(str(64 << 20))
        proc = pod.start("x = b'x' * (512 << 20)")
        assert proc.wait(timeout=60) == -signal.SIGKILL
        fams = await collect()
        labels = {"uid": pod.uid, "container": pod.cid, "qos": "burstable", "pod": ""}
        assert fams["nodemedic_container_oom_kills_total"].get(**labels) == 1
        assert fams["nodemedic_container_memory_limit_bytes"].get(**labels) == 64 << 20
        # The pod-level cgroup has no limit of its own: no limit series, not a huge number.
        assert fams["nodemedic_container_memory_limit_bytes"].get(uid=pod.uid, container="") is None
        # v1 has no OOM-event counter; the collector does not invent one.
        assert fams["nodemedic_container_oom_events_total"].get(uid=pod.uid) is None


async def test_v1_cpu_quota_busy_loop_reports_throttling() -> None:
    """A busy loop in a v1 cpu cgroup with a 10% quota (10000/100000 us) is throttled, and the
    collector reports the quota, throttled periods and throttled seconds for that container."""
    hierarchies = need("cpu", "cpuacct")
    cpu = hierarchies[0]
    with kernel_pod(hierarchies if cpu.resolve() != hierarchies[1].resolve() else [cpu]) as pod:
        (pod.container(cpu) / "cpu.cfs_period_us").write_text("100000")
        (pod.container(cpu) / "cpu.cfs_quota_us").write_text("10000")
        pod.start(BUSY)
        labels = {"uid": pod.uid, "container": pod.cid}
        fams = await poll(
            10.0,
            ("nodemedic_container_cpu_cfs_throttled_periods_total", labels),
            ("nodemedic_container_cpu_cfs_throttled_seconds_total", labels),
        )
        throttled = fams["nodemedic_container_cpu_cfs_throttled_periods_total"].get(**labels)
        assert throttled is not None and throttled > 0
        assert (fams["nodemedic_container_cpu_cfs_throttled_seconds_total"].get(**labels) or 0) > 0
        assert fams["nodemedic_container_cpu_quota_cores"].get(**labels) == pytest.approx(0.1)
        periods = fams["nodemedic_container_cpu_cfs_periods_total"].get(**labels)
        assert periods is not None and periods >= throttled
        assert (fams["nodemedic_container_cpu_usage_seconds_total"].get(**labels) or 0) > 0


async def test_v2_cpu_contention_reports_pressure() -> None:
    """More busy processes than CPUs in a pod-like cgroup of the v2 hierarchy stall on CPU, and
    the collector reports non-zero CPU pressure (PSI) for that container."""
    # The development VMs mount v2 at /sys/fs/cgroup/unified (hybrid); pure-v2 hosts at the root.
    (unified,) = need("") if (CGROOT / "cgroup.controllers").exists() else need("unified")
    with kernel_pod([unified]) as pod:
        if not (pod.container(unified) / "cpu.pressure").exists():
            pytest.skip("PSI is disabled on this kernel (no cpu.pressure; boot with psi=1)")
        for _ in range((os.cpu_count() or 1) + 2):
            pod.start(BUSY)
        labels = {"uid": pod.uid, "container": pod.cid, "resource": "cpu", "kind": "some"}
        pod_labels = {**labels, "container": ""}  # PSI is hierarchical: the pod stalls too
        fams = await poll(10.0, ("nodemedic_container_pressure_seconds_total", labels),
                          ("nodemedic_container_pressure_seconds_total", pod_labels))
        stalled = fams["nodemedic_container_pressure_seconds_total"].get(**labels)
        assert stalled is not None and stalled > 0
        pod_level = fams["nodemedic_container_pressure_seconds_total"].get(**pod_labels)
        assert pod_level is not None and pod_level > 0
        assert fams["nodemedic_container_pressure_avg10_ratio"].get(**labels) is not None
