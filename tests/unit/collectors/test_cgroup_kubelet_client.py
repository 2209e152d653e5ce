"""The cgroup collector with the real shared KubeletClient over HTTP (fake kubelet on loopback
serving the captured /pods): attribution works end to end, and a dead kubelet only costs names."""

from __future__ import annotations

from pathlib import Path

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.kubelet_client import KubeletClient
from agent.settings import Settings
from nodemedic_sim.fake_kubelet import FakeKubelet

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cgroup"
DAEMONSET = "45b528af-fb82-4e96-8103-b9da1194dd36"
DS_CID = "ff102f3ad315dd9b977f8e654f8dfc8c21daff8744724a835267e0d91374fc54"


async def test_real_kubelet_client_names_pods_then_kubelet_dies() -> None:
    """Through KubeletClient.pods() the v2 tree's cgroups get namespace/pod/container names;
    after the kubelet stops, the same values are still reported, by UID and container ID."""
    fake = FakeKubelet(FIX)  # serves pods_minikube_v1.35.json as /pods
    url = await fake.start()
    client = KubeletClient(url)
    try:
        settings = Settings(path_cgroupfs=FIX / "v2-systemd", kubelet_url=url,
                            collector_timeout=2.0, cgroup_min_interval=0)  # read every call
        collector = CgroupCollector(CollectorContext(settings, kubelet=client))
        fams = {f.name: f for f in await collector.collect()}
        usage = fams["nodemedic_container_memory_usage_bytes"]
        assert fams["nodemedic_cgroup_pod_attribution"].get() == 1
        assert usage.get(namespace="scraper", pod="e2e-daemonset-kb65b", uid=DAEMONSET,
                         container="compute-pi-digits") == 10498404352
        assert usage.get(namespace="kube-system", pod="coredns-7d764666f9-qdcxt",
                         container="coredns") == 10498404352
        assert fake.hits["/pods"] == 1

        await fake.stop()
        await client.close()
        client = KubeletClient(url)  # no cached pod list: the next tick must ask again
        collector.ctx.kubelet = client
        fams = {f.name: f for f in await collector.collect()}
        assert fams["nodemedic_cgroup_pod_attribution"].get() == 0
        assert fams["nodemedic_container_memory_usage_bytes"].get(
            namespace="", pod="", uid=DAEMONSET, container=DS_CID) == 10498404352
    finally:
        await client.close()
        await fake.stop()
