"""The synthetic 250-pod node of bench/synthetic_node.py reads back whole through the collector."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.settings import Settings
from agent.structs.pods import PodRef
from bench.synthetic_node import Advancer, build_node, pause_process, pods_json


class _Kubelet:
    def __init__(self, refs: list[PodRef]) -> None:
        self.refs = refs

    async def pods(self) -> list[PodRef]:
        return self.refs


@pytest.mark.parametrize("layout", ["v2-systemd", "v1-cgroupfs"])
async def test_collector_reads_back_250_pods_by_2_containers(tmp_path: Path, layout: str) -> None:
    """All 250 pods and 500 containers of the synthetic node are found and attributed."""
    refs = build_node(tmp_path, pods=250, containers=2, layout=layout)  # type: ignore[arg-type]
    ctx = CollectorContext(Settings(path_cgroupfs=tmp_path), kubelet=_Kubelet(refs))
    fams = {f.name: f for f in await CgroupCollector(ctx).collect()}
    assert fams["nodemedic_cgroup_cgroups"].get(level="pod") == 250
    assert fams["nodemedic_cgroup_cgroups"].get(level="container") == 500
    assert sum(v for _, v in fams["nodemedic_cgroup_read_errors_total"].samples) == 0
    ws = fams["nodemedic_container_memory_working_set_bytes"]
    assert len(ws.samples) == 750
    by_name = {(lbl["namespace"], lbl["pod"], lbl["container"]) for lbl, _ in ws.series()}
    want = {(r.namespace, r.name, c) for r in refs for c in ("", *r.containers.values())}
    assert by_name == want
    qos = {r.uid: r.qos_class.lower() for r in refs}
    assert all(lbl["qos"] == qos[lbl["uid"]] for lbl, _ in ws.series())
    assert all(v > 0 for _, v in ws.samples)
    assert fams["nodemedic_container_cpu_cfs_throttled_periods_total"].samples


def test_pods_json_matches_the_tree(tmp_path: Path) -> None:
    """pods_json gives one PodList item per pod with containerd:// IDs of its cgroups."""
    refs = build_node(tmp_path, pods=3, containers=2)
    doc = pods_json(refs)
    assert doc["kind"] == "PodList"
    assert [i["metadata"]["uid"] for i in doc["items"]] == [r.uid for r in refs]
    ids = {cs["containerID"] for i in doc["items"] for cs in i["status"]["containerStatuses"]}
    assert ids == {f"containerd://{cid}" for r in refs for cid in r.containers}
    for item, ref in zip(doc["items"], refs, strict=True):
        assert item["status"]["qosClass"] == ref.qos_class


@pytest.mark.parametrize("layout", ["v2-systemd", "v1-cgroupfs"])
async def test_sandboxes_of_the_real_node_bench_are_counted_not_read(tmp_path: Path,
                                                                     layout: str) -> None:
    """With a sandbox per pod (bench/synthetic_node.py ``sandbox_pid``, a real process named
    pause), the collector reads the same 750 cgroups and counts 250 sandboxes."""
    with pause_process() as pid:
        refs = build_node(tmp_path, pods=250, containers=2, layout=layout,  # type: ignore[arg-type]
                          sandbox_pid=pid)
        ctx = CollectorContext(Settings(path_cgroupfs=tmp_path), kubelet=_Kubelet(refs))
        fams = {f.name: f for f in await CgroupCollector(ctx).collect()}
    levels = fams["nodemedic_cgroup_cgroups"]
    assert (levels.get(level="pod"), levels.get(level="container"),
            levels.get(level="sandbox")) == (250, 500, 250)
    assert len(fams["nodemedic_container_memory_working_set_bytes"].samples) == 750


async def test_advancer_moves_the_counters_the_rules_read(tmp_path: Path) -> None:
    """After one step every cgroup's CPU counter grew; limited cgroups counted CFS periods and
    at least one throttled cgroup more throttled periods: the bench's series change like a live
    node's."""
    refs = build_node(tmp_path, pods=20, containers=2)
    ctx = CollectorContext(Settings(path_cgroupfs=tmp_path, cgroup_min_interval=0),
                           kubelet=_Kubelet(refs))
    c = CgroupCollector(ctx)

    async def read() -> dict[str, dict[tuple[str, ...], float]]:
        return {f.name: dict(f.samples) for f in await c.collect()}

    before = await read()
    Advancer(tmp_path, every=10).step()
    after = await read()
    cpu = "nodemedic_container_cpu_usage_seconds_total"
    assert all(after[cpu][k] > v for k, v in before[cpu].items())
    periods = "nodemedic_container_cpu_cfs_periods_total"
    assert any(before[periods].values())  # 100 ms periods over the 10 s step; none unlimited
    assert all(after[periods][k] == (v + 100 if v else 0) for k, v in before[periods].items())
    throttled = "nodemedic_container_cpu_cfs_throttled_periods_total"
    assert any(after[throttled][k] > v for k, v in before[throttled].items())
