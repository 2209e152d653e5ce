"""Pod sandboxes (the runtime's pause container) in the cgroup collector: left out of the
per-container series and counted, on the v2 fixture tree with a procfs of our own making.

The fixture's sandbox scope (tests/fixtures/cgroup, ``cri-containerd-0badc0ffee…aa.scope``) has
no ``cgroup.procs``, like the captures it is built from; each test writes the one the runtime
would (the pause process's PID) and a ``<procfs>/<pid>/comm`` for it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.collectors.cgroupfs import scan
from agent.collectors.cgroupfs.layout import ListingCache, is_sandbox
from agent.settings import Settings
from agent.structs.metrics import Family
from tests.unit.collectors.test_cgroup_collector import (
    DAEMONSET,
    DS_CID,
    SANDBOX,
    FakeKubelet,
    real_pod_refs,
    v2_container,
)

PAUSE_PID = "4242"


@pytest.fixture
def tree(v2_copy: Path) -> Path:
    """The writable v2 fixture tree (conftest.py)."""
    return v2_copy


@pytest.fixture
def procfs(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    proc(root, PAUSE_PID, "pause")
    return root


def proc(root: Path, pid: str, comm: str) -> None:
    (root / pid).mkdir(parents=True, exist_ok=True)
    (root / pid / "comm").write_text(comm + "\n")


def procs(tree: Path, cid: str, *pids: str) -> None:
    (v2_container(tree, DAEMONSET, cid) / "cgroup.procs").write_text(
        "".join(p + "\n" for p in pids))


def collector(tree: Path, procfs: Path, kubelet: object | None = None) -> CgroupCollector:
    ctx = CollectorContext(Settings(path_cgroupfs=tree, path_procfs=procfs, cgroup_psi="container",
                                    cgroup_min_interval=0))
    if kubelet is not None:
        ctx.kubelet = kubelet
    return CgroupCollector(ctx)


async def collect(c: CgroupCollector) -> dict[str, Family]:
    return {f.name: f for f in await c.collect()}


def containers(fams: dict[str, Family]) -> set[str]:
    usage = fams["nodemedic_container_memory_usage_bytes"]
    return {lv[3] for lv, _ in usage.samples if lv[2] == DAEMONSET and lv[3]}


def level(fams: dict[str, Family], name: str) -> float | None:
    return fams["nodemedic_cgroup_cgroups"].get(level=name)


@pytest.mark.parametrize("kubelet", [True, False], ids=["kubelet", "no-kubelet"])
async def test_sandbox_is_left_out_and_counted(tree: Path, procfs: Path, kubelet: bool) -> None:
    """A cgroup whose one process is ``pause`` gives no per-container series (its usage is in
    the pod's), with or without the kubelet's pod list; the pod and its container still do."""
    procs(tree, SANDBOX, PAUSE_PID)
    fams = await collect(collector(tree, procfs, FakeKubelet(real_pod_refs()) if kubelet else None))
    names = containers(fams)
    assert SANDBOX not in names
    assert names == ({"compute-pi-digits"} if kubelet else {DS_CID})
    assert fams["nodemedic_container_memory_usage_bytes"].get(uid=DAEMONSET, container="") \
        == 10498404352
    assert level(fams, "sandbox") == 1
    before = await collect(collector(tree, procfs / "none"))  # no such process: not told
    assert level(before, "container") == level(fams, "container") + 1  # type: ignore[operator]


async def test_a_container_the_kubelet_lists_is_never_a_sandbox(tree: Path, procfs: Path) -> None:
    """An overprovisioning pod runs the pause image as its container: the kubelet lists it, so
    it stays (under its name), though its one process is ``pause``."""
    procs(tree, SANDBOX, PAUSE_PID)
    refs = [dataclasses.replace(r, containers={**r.containers, SANDBOX: "balloon"})
            if r.uid == DAEMONSET else r for r in real_pod_refs()]
    c = collector(tree, procfs, FakeKubelet(refs))
    await collect(c)  # the first read tells the listing cache what the kubelet lists
    fams = await collect(c)
    assert containers(fams) == {"compute-pi-digits", "balloon"}
    assert level(fams, "sandbox") == 0


@pytest.mark.parametrize(("pids", "comm"), [
    ((PAUSE_PID, "4243"), "pause"),  # a second process: not a pause sandbox
    ((PAUSE_PID,), "sleep"),
    ((PAUSE_PID,), "pause-helper"),
])
async def test_anything_else_is_a_container(tree: Path, procfs: Path, pids: tuple[str, ...],
                                            comm: str) -> None:
    proc(procfs, PAUSE_PID, comm)
    proc(procfs, "4243", "pause")
    procs(tree, SANDBOX, *pids)
    fams = await collect(collector(tree, procfs))
    assert SANDBOX in containers(fams)
    assert level(fams, "sandbox") == 0


async def test_a_sandbox_seen_before_its_process_is_asked_again(tree: Path, procfs: Path) -> None:
    """An empty cgroup (the runtime made it, pause not started yet) is read as a container and
    asked again on the next read, not remembered as one."""
    procs(tree, SANDBOX)
    c = collector(tree, procfs)
    assert SANDBOX in containers(await collect(c))
    procs(tree, SANDBOX, PAUSE_PID)
    fams = await collect(c)
    assert SANDBOX not in containers(fams)
    assert level(fams, "sandbox") == 1


def test_told_once_then_from_the_cache(tree: Path, procfs: Path) -> None:
    """The two reads happen once per new cgroup: a told sandbox stays told while it is seen
    (its comm cannot change under a running process), and is forgotten once gone."""
    procs(tree, SANDBOX, PAUSE_PID)
    cache = ListingCache(full_every=1, procfs=str(procfs))
    assert scan(tree, cache=cache).sandboxes == 1
    shutil.rmtree(procfs / PAUSE_PID)
    assert scan(tree, cache=cache).sandboxes == 1  # not asked again
    sandbox = v2_container(tree, DAEMONSET, SANDBOX)
    sandbox.rename(sandbox.with_name("gone"))
    assert scan(tree, cache=cache).sandboxes == 0
    sandbox.with_name("gone").rename(sandbox)
    assert scan(tree, cache=cache).sandboxes == 0  # forgotten, and pause is gone now


def test_is_sandbox_reads_bounded_and_odd_files(tmp_path: Path) -> None:
    """One process named pause: True; none, one that is gone or the runtime's init: not told
    yet (None); more, a non-PID, or PID 0 (outside our PID namespace: never told) are
    containers (False)."""
    (tmp_path / "proc").mkdir()
    proc(tmp_path / "proc", "7", "pause")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert is_sandbox(str(cg), str(tmp_path / "proc")) is None  # no cgroup.procs
    for text, told in [("", None), ("7\n", True), ("7\n8\n", False), ("x\n", False),
                       ("9\n", None), ("7" * 100, False), ("0\n", False)]:
        (cg / "cgroup.procs").write_text(text)
        assert is_sandbox(str(cg), str(tmp_path / "proc")) is told, text
    # Between create and exec the one process is the runtime's init: not told yet.
    (cg / "cgroup.procs").write_text("7\n")
    for comm, told in [("runc:[2:INIT]", None), ("crun", None), ("sleep", False)]:
        proc(tmp_path / "proc", "7", comm)
        assert is_sandbox(str(cg), str(tmp_path / "proc")) is told, comm
