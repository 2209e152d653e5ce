"""A pod discovered with no readable value is reported, not left as silent absence or zeros
(issue 16 item 7): the cgroup and kubelet collectors count such pods and /status names them."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.collectors.kubelet import summary_families
from agent.collectors.podgaps import summary_pods_without_stats
from agent.settings import Settings
from agent.structs.pods import PodRef

FIX = Path(__file__).resolve().parents[2] / "fixtures"
COREDNS = "36447428-81f8-45eb-b825-414de2e8012b"


class PodList:
    async def pods(self) -> list[PodRef]:
        return [PodRef(COREDNS, "kube-system", "coredns-668d6bf9bc-xk2mt")]


async def test_cgroup_pod_without_readable_files_is_counted_and_named(tmp_path: Path) -> None:
    root = tmp_path / "v2"
    shutil.copytree(FIX / "cgroup" / "v2-systemd", root)
    ctx = CollectorContext(Settings(path_cgroupfs=root, cgroup_min_interval=0))  # every call
    ctx.kubelet = PodList()
    c = CgroupCollector(ctx)
    fams = {f.name: f for f in await c.collect()}
    assert fams["nodemedic_cgroup_pods_without_values"].get() == 0
    assert c.status()["pods_without_values"] == 0
    # Every file of the CoreDNS pod and its containers gone: the directories are still found.
    pod = next(root.rglob(f"*pod{COREDNS.replace('-', '_')}.slice"))
    for f in [p for p in pod.rglob("*") if p.is_file()]:
        f.unlink()
    fams = {f.name: f for f in await c.collect()}
    assert fams["nodemedic_cgroup_pods_without_values"].get() == 1
    assert c.status()["pods_without_values_named"] == ["kube-system/coredns-668d6bf9bc-xk2mt"]
    usage = fams["nodemedic_container_memory_usage_bytes"]
    assert all(labels[2] != COREDNS for labels, _ in usage.samples)  # absent, never a zero


def test_summary_pod_without_usage_is_named() -> None:
    doc = json.loads((FIX / "kubelet" / "stats_summary_minikube_v1.35.json").read_text())
    assert summary_pods_without_stats(doc) == []
    bare = copy.deepcopy(doc)
    ref = bare["pods"][0]["podRef"]
    bare["pods"][0] = {"podRef": ref, "containers": []}
    assert summary_pods_without_stats(bare) == [f"{ref['namespace']}/{ref['name']}"]
    fams = {f.name: f for f in summary_families(bare)[0]}
    assert all(labels[1] != ref["name"] for labels, _ in fams[
        "nodemedic_kubelet_pod_memory_working_set_bytes"].samples)
