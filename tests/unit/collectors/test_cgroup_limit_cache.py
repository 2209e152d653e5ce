"""Limit files are kept between cgroup reads while the kubelet's pod list is unchanged.

memory.max / cpu.max (v1: memory.limit_in_bytes, cpu.cfs_quota_us + cpu.cfs_period_us) change
only when the kubelet resizes a pod or someone writes them by hand. These tests pin what a user
sees: a changed limit shows on the first read after the kubelet's pod list changed, or after at
most LIMITS_FULL_EVERY reads without; a new container, a limit file that could not be read, and
every read while the pod list is unavailable are read afresh; and the files really are not opened
otherwise (the CPU saving of issue 17).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import LIMITS_FULL_EVERY, CgroupCollector
from agent.collectors.cgroupfs import scan
from agent.collectors.cgroupfs.read import LimitCache
from agent.kubelet_client import KubeletClient
from agent.settings import Settings
from agent.structs.metrics import Family
from agent.structs.pods import PodRef
from bench.synthetic_node import build_node, pods_json
from nodemedic_sim.fake_kubelet import FakeKubelet as HTTPKubelet
from nodemedic_sim.fake_kubelet import Override

MEMORY_LIMIT = "nodemedic_container_memory_limit_bytes"
CPU_QUOTA = "nodemedic_container_cpu_quota_cores"
CFS_PERIODS = "nodemedic_container_cpu_cfs_periods_total"
V2_LIMIT_FILES = ("memory.max", "cpu.max")
V1_LIMIT_FILES = ("memory.limit_in_bytes", "cpu.cfs_quota_us", "cpu.cfs_period_us")


class Kubelet:
    """A kubelet client like KubeletClient: ``pods()`` and a ``pods_generation`` that changes
    with the pod list (``changed()``: a resize the kubelet reports)."""

    def __init__(self, refs: list[PodRef]) -> None:
        self.refs = refs
        self.pods_generation = 1
        self.error: Exception | None = None

    async def pods(self) -> list[PodRef]:
        if self.error is not None:
            raise self.error
        return self.refs

    def changed(self) -> None:
        self.pods_generation += 1


class PlainKubelet:
    """A pod lister that cannot tell whether its list changed (no ``pods_generation``)."""

    def __init__(self, refs: list[PodRef]) -> None:
        self.refs = refs

    async def pods(self) -> list[PodRef]:
        return self.refs


def make(root: Path, kubelet: object | None) -> CgroupCollector:
    ctx = CollectorContext(Settings(path_cgroupfs=root, cgroup_min_interval=0))
    ctx.kubelet = kubelet
    return CgroupCollector(ctx)


async def read(c: CgroupCollector) -> dict[str, Family]:
    return {f.name: f for f in await c.collect()}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Names of the control files opened (relative to a cgroup directory fd) since the last
    ``clear()``."""
    names: Counter[str] = Counter()
    real = os.open

    def counting(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            names[os.fspath(path)] += 1
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", counting)
    yield names


def limits(fams: dict[str, Family], ref: PodRef, cid: str) -> tuple[float | None, float | None]:
    """(memory limit, CPU quota) of container ``cid`` of ``ref``, named by the kubelet or not."""
    attributed = fams["nodemedic_cgroup_pod_attribution"].get() == 1
    labels = {"uid": ref.uid, "container": ref.containers[cid] if attributed else cid}
    return fams[MEMORY_LIMIT].get(**labels), fams[CPU_QUOTA].get(**labels)


def limited(refs: list[PodRef]) -> list[PodRef]:
    return [r for r in refs if r.qos_class != "BestEffort"]


def unlimited(refs: list[PodRef]) -> list[PodRef]:
    return [r for r in refs if r.qos_class == "BestEffort"]


def v2_dir(root: Path, cid: str) -> Path:
    return next(root.glob(f"kubepods.slice/**/cri-containerd-{cid}.scope"))


def v1_dirs(root: Path, cid: str) -> tuple[Path, Path]:
    return (next(root.glob(f"memory/kubepods/**/{cid}")),
            next(root.glob(f"cpu,cpuacct/kubepods/**/{cid}")))


def resize_v2(d: Path, memory: int, quota: int) -> None:
    (d / "memory.max").write_text(f"{memory}\n")
    (d / "cpu.max").write_text(f"{quota} 100000\n")


async def warm(c: CgroupCollector) -> dict[str, Family]:
    """The first two reads: both read every limit (the first pod list is learnt alongside the
    first read); from the third on limits come from the cache."""
    await read(c)
    return await read(c)


async def test_v2_resize_is_seen_on_the_read_after_the_pod_list_changes(
    tmp_path: Path, opened: Counter[str]
) -> None:
    refs = build_node(tmp_path, pods=8, containers=1)
    kubelet = Kubelet(refs)
    c = make(tmp_path, kubelet)
    pod = limited(refs)[0]
    (cid,) = pod.containers
    before = limits(await warm(c), pod, cid)
    assert before[0] is not None and before[1] is not None

    resize_v2(v2_dir(tmp_path, cid), 3 << 30, 150000)
    opened.clear()
    fams = await read(c)  # the pod list is unchanged: limits are not read
    assert limits(fams, pod, cid) == before
    assert not any(opened[f] for f in V2_LIMIT_FILES)
    assert opened["memory.current"] == 8 + 8  # while everything else still is, every read

    kubelet.changed()  # the kubelet reports the resize
    opened.clear()
    assert limits(await read(c), pod, cid) == (3 << 30, 1.5)
    assert opened["memory.max"] == opened["cpu.max"] == 16

    resize_v2(v2_dir(tmp_path, cid), 1 << 30, 50000)
    assert limits(await read(c), pod, cid) == (3 << 30, 1.5)  # cached again


async def test_a_limit_changed_outside_the_kubelet_is_seen_within_the_bound(
    tmp_path: Path,
) -> None:
    """No pod-list change at all (a limit written by hand): the LIMITS_FULL_EVERY-th read after
    the last full one reads it, 5 minutes at the default --cgroup.min-interval=30s."""
    assert LIMITS_FULL_EVERY >= 2 and LIMITS_FULL_EVERY * Settings().cgroup_min_interval <= 300
    refs = build_node(tmp_path, pods=6, containers=1)
    c = make(tmp_path, Kubelet(refs))
    pod = limited(refs)[0]
    (cid,) = pod.containers
    before = limits(await warm(c), pod, cid)
    resize_v2(v2_dir(tmp_path, cid), 5 << 30, 300000)
    for _ in range(LIMITS_FULL_EVERY - 1):
        assert limits(await read(c), pod, cid) == before
    assert limits(await read(c), pod, cid) == (5 << 30, 3.0)


async def test_a_new_container_is_read_at_once(tmp_path: Path) -> None:
    """A container that appears while the pod list is unchanged (the kubelet has not reported it
    yet) gets its limits read on its first read, while known containers' limits stay cached."""
    refs = build_node(tmp_path, pods=6, containers=1)
    c = make(tmp_path, Kubelet(refs))
    pod = limited(refs)[0]
    (cid,) = pod.containers
    before = limits(await warm(c), pod, cid)
    old = v2_dir(tmp_path, cid)
    new_id = "e" * 64
    shutil.copytree(old, old.parent / f"cri-containerd-{new_id}.scope")
    resize_v2(old.parent / f"cri-containerd-{new_id}.scope", 7 << 20, 20000)
    resize_v2(old, 9 << 20, 90000)
    fams = await read(c)
    assert fams[MEMORY_LIMIT].get(uid=pod.uid, container=new_id) == 7 << 20
    assert fams[CPU_QUOTA].get(uid=pod.uid, container=new_id) == 0.2
    assert limits(fams, pod, cid) == before


async def test_an_unreadable_limit_is_retried_not_taken_for_unlimited(
    tmp_path: Path, opened: Counter[str]
) -> None:
    """A garbage or missing limit file is not cached (as "no limit" or at all): the next read
    reads that file again, and only it, and shows the limit once it can be read."""
    refs = build_node(tmp_path, pods=6, containers=1)
    kubelet = Kubelet(refs)
    c = make(tmp_path, kubelet)
    # Garbage from the first read on: the first two reads fail to parse it.
    pod = limited(refs)[0]
    (cid,) = pod.containers
    d = v2_dir(tmp_path, cid)
    (d / "memory.max").write_text("garbage\n")
    (d / "cpu.max").unlink()
    fams = await warm(c)
    assert limits(fams, pod, cid) == (None, None)
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="parse") == 2
    assert fams["nodemedic_cgroup_read_errors_total"].get(reason="missing") == 2

    resize_v2(d, 123 << 20, 40000)
    opened.clear()
    fams = await read(c)
    assert limits(fams, pod, cid) == (123 << 20, 0.4)
    assert opened["memory.max"] == opened["cpu.max"] == 1  # that cgroup's, no other

    resize_v2(d, 1 << 20, 10000)
    assert limits(await read(c), pod, cid) == (123 << 20, 0.4)  # now it is cached


async def test_without_the_pod_list_limits_are_read_every_time(tmp_path: Path) -> None:
    """Nothing tells us about resizes while the kubelet's pod list fails, or from a client that
    cannot tell a changed list: then every read reads every limit, as before the cache."""
    refs = build_node(tmp_path, pods=6, containers=1)
    pod = limited(refs)[0]
    (cid,) = pod.containers
    d = v2_dir(tmp_path, cid)

    kubelet = Kubelet(refs)
    c = make(tmp_path, kubelet)
    await warm(c)
    kubelet.error = ConnectionRefusedError("kubelet down")
    await read(c)  # this read's fetch fails: the next reads read every limit
    resize_v2(d, 11 << 20, 11000)
    fams = await read(c)
    assert fams[MEMORY_LIMIT].get(uid=pod.uid, container=cid) == 11 << 20
    resize_v2(d, 12 << 20, 12000)
    fams = await read(c)
    assert fams[MEMORY_LIMIT].get(uid=pod.uid, container=cid) == 12 << 20
    kubelet.error = None
    resize_v2(d, 13 << 20, 13000)
    assert limits(await read(c), pod, cid) == (13 << 20, 0.13)  # the list is back with this read
    resize_v2(d, 14 << 20, 14000)
    assert limits(await read(c), pod, cid) == (14 << 20, 0.14)  # read once more after it, then
    resize_v2(d, 15 << 20, 15000)
    assert limits(await read(c), pod, cid) == (14 << 20, 0.14)  # cached again

    for client in (PlainKubelet(refs), None):
        c = make(tmp_path, client)
        await warm(c)
        for size in (15 << 20, 16 << 20):
            resize_v2(d, size, 20000)
            assert limits(await read(c), pod, cid)[0] == size


async def test_v1_quota_and_limit_cached_unlimited_cpu_stat_still_skipped(
    tmp_path: Path, opened: Counter[str]
) -> None:
    """v1: memory.limit_in_bytes and the CFS quota/period come from the cache; a container
    without a quota still gets no cpu.stat read (its CFS counters cannot move); a quota set by a
    resize is seen, with its CFS counters, after the pod list changes."""
    refs = build_node(tmp_path, pods=10, containers=1, layout="v1-cgroupfs")
    kubelet = Kubelet(refs)
    c = make(tmp_path, kubelet)
    capped, free = limited(refs)[0], unlimited(refs)[0]
    (ccid,), (fcid,) = capped.containers, free.containers
    fams = await warm(c)
    before = limits(fams, capped, ccid)
    assert before[0] is not None and before[1] is not None
    assert limits(fams, free, fcid) == (None, None)
    assert fams[CFS_PERIODS].get(uid=free.uid, container=free.containers[fcid]) is None
    n_limited = sum(1 for s in scan(tmp_path).stats if s.cpu_quota_cores is not None)

    cmem, ccpu = v1_dirs(tmp_path, ccid)
    (cmem / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    (ccpu / "cpu.cfs_quota_us").write_text("250000\n")
    _, fcpu = v1_dirs(tmp_path, fcid)
    (fcpu / "cpu.cfs_quota_us").write_text("50000\n")
    opened.clear()
    fams = await read(c)
    assert limits(fams, capped, ccid) == before
    assert limits(fams, free, fcid) == (None, None)
    assert not any(opened[f] for f in V1_LIMIT_FILES)
    assert opened["cpu.stat"] == n_limited  # limited cgroups only, as before the cache
    assert opened["memory.usage_in_bytes"] == 10 + 10

    kubelet.changed()
    fams = await read(c)
    assert limits(fams, capped, ccid) == (2 << 30, 2.5)
    assert limits(fams, free, fcid) == (None, 0.5)
    assert fams[CFS_PERIODS].get(uid=free.uid, container=free.containers[fcid]) is not None


def hybrid_node(root: Path) -> list[PodRef]:
    """The v1 synthetic node plus an unified v2 tree without controllers that carries PSI only,
    as systemd's hybrid mode has it."""
    refs = build_node(root, pods=6, containers=1, layout="v1-cgroupfs")
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("")
    psi = "some avg10=1.00 avg60=0.50 avg300=0.25 total=1000000\n"
    for d in (root / "memory").glob("kubepods/**/"):
        u = root / "unified" / d.relative_to(root / "memory")
        u.mkdir(parents=True, exist_ok=True)
        for r in ("cpu", "memory", "io"):
            (u / f"{r}.pressure").write_text(psi + psi.replace("some", "full"))
    return refs


async def test_hybrid_limits_cached_from_v1_psi_still_read(
    tmp_path: Path, opened: Counter[str]
) -> None:
    refs = hybrid_node(tmp_path)
    kubelet = Kubelet(refs)
    c = make(tmp_path, kubelet)
    pod = limited(refs)[0]
    (cid,) = pod.containers
    fams = await warm(c)
    before = limits(fams, pod, cid)
    assert before[0] is not None
    assert fams["nodemedic_container_pressure_seconds_total"].get(
        uid=pod.uid, container="", resource="cpu", kind="some") == 1.0
    mem, _ = v1_dirs(tmp_path, cid)
    (mem / "memory.limit_in_bytes").write_text(f"{3 << 30}\n")
    pod_psi = tmp_path / "unified" / mem.parent.relative_to(tmp_path / "memory")
    (pod_psi / "cpu.pressure").write_text(
        "some avg10=2.00 avg60=1.00 avg300=0.50 total=4000000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    opened.clear()
    fams = await read(c)
    assert limits(fams, pod, cid) == before
    assert not any(opened[f] for f in V1_LIMIT_FILES)
    assert opened["cpu.pressure"] == 6  # pod cgroups (the default --cgroup.psi=pod), every read
    assert fams["nodemedic_container_pressure_seconds_total"].get(
        uid=pod.uid, container="", resource="cpu", kind="some") == 4.0
    kubelet.changed()
    assert limits(await read(c), pod, cid)[0] == 3 << 30


def test_the_cache_holds_only_live_cgroups(tmp_path: Path) -> None:
    """Removed pods leave the cache; its size follows the cgroups read."""
    refs = build_node(tmp_path, pods=10, containers=2)
    cache = LimitCache(full_every=100)
    scan(tmp_path, limits=cache)
    assert len(cache) == 10 * 3
    for ref in refs[:4]:
        (cid, _) = ref.containers
        shutil.rmtree(v2_dir(tmp_path, cid).parent)
    result = scan(tmp_path, limits=cache)
    assert len(result.stats) == len(cache) == 6 * 3
    assert cache.hits == 6 * 3 * 2


async def test_real_client_generation_follows_the_pods_body(tmp_path: Path) -> None:
    """Through KubeletClient over HTTP: an identical /pods body keeps the limits cached; a
    changed one (the kubelet reporting a resize) makes the next read read them."""
    refs = build_node(tmp_path / "node", pods=6, containers=1)
    pod = limited(refs)[0]
    (cid,) = pod.containers
    fake = HTTPKubelet(tmp_path)
    fake.overrides["/pods"] = Override(200, json.dumps(pods_json(refs)).encode(),
                                       "application/json")
    url = await fake.start()
    client = KubeletClient(url, pods_max_age=0.0)
    try:
        c = make(tmp_path / "node", client)
        before = limits(await warm(c), pod, cid)
        generation = client.pods_generation
        resize_v2(v2_dir(tmp_path / "node", cid), 2 << 30, 200000)
        assert limits(await read(c), pod, cid) == before
        assert client.pods_generation == generation
        doc = pods_json(refs)
        doc["items"][refs.index(pod)]["status"]["resize"] = "InProgress"
        fake.overrides["/pods"] = Override(200, json.dumps(doc).encode(), "application/json")
        assert limits(await read(c), pod, cid) == before  # the fetch alongside sees it
        assert client.pods_generation == generation + 1
        assert limits(await read(c), pod, cid) == (2 << 30, 2.0)
    finally:
        await client.close()
        await fake.stop()
