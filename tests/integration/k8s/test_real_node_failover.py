"""Node failure with real kubelets: three real nodes on this host (tests/real_node.py:
nodemedic-node-1 in the standard kubepods tree, nodes 2 and 3 with their own cgroupRoot, bridge
and pod CIDR), a 3-replica Deployment of the local busybox image spread one per node with a PDB
(maxUnavailable 1), and three in-process nodemedic agents with failover on, authenticated as the
nodemedic ServiceAccount (tests/real_fleet.py), each listening on its node's InternalIP.

One node dies: its kubelet is SIGKILLed, its containers are SIGKILLed (the pod really stops) and
its agent stops. The nodes share the host's network, so "cut its network" is exactly that: its
kubelet and its agent stop answering anyone. The leader cordons and taints it, evicts its pod, and
fences it (out-of-service taint) so the real pod GC force-deletes the pod left Terminating on the
dead kubelet; the real ReplicaSet controller recreates it, the real scheduler binds it to a
healthy node and that node's REAL kubelet starts it. bench/failover_real_nodes.py measures the
same next to agents in --dry-run (Kubernetes alone).

Off unless NODEMEDIC_K8S_NODES=1 (see tests/real_node.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from agent.kube.leases import parse_micro_time
from nodemedic_sim.demo.fleet import Fleet, Timings
from tests.polling import eventually
from tests.real_cluster import Backend, RealCluster
from tests.real_fleet import fleet, sa_kubeconfig
from tests.real_node import (
    KubeletNodes,
    RealNode,
    container_status,
    failover_timeline,
    namespace_pods,
    real_nodes,
    running,
    spread_workload,
)

pytestmark = [pytest.mark.backends, pytest.mark.real_only, pytest.mark.timeout(900)]

# A real kubelet renews its Lease every 10 s (a quarter of nodeLeaseDurationSeconds 40). A node
# grace under that judges healthy nodes' kubelets down between renewals (and, two of three at
# once, trips mass-failure protection); a peer is a prober only while its lease is younger than
# half the grace, so under 20 s the pool of probers flaps. 25 s: a margin over both.
T = Timings(node_grace=25.0, fencing_time=8.0, healthy_delay=3.0, lease_duration=3.0,
            retry_period=0.5, probe_timeout=1.0, max_cordoned="1", max_unhealthy="40%")
FAILED_TAINT = "nodemedic.io/node-failed"


@pytest.fixture(scope="module")
def nodes(real_cluster: RealCluster) -> Iterator[list[RealNode]]:
    yield from real_nodes(real_cluster, 3)


@dataclass
class Setup:
    kube: Backend
    fleet: Fleet
    nodes: list[RealNode]
    ns: str


@pytest_asyncio.fixture
async def setup(kube: Backend, sa_token: str, nodes: list[RealNode],
                tmp_path: Path) -> AsyncIterator[Setup]:
    names = [n.name for n in nodes]

    async def untainted() -> bool:  # the lifecycle controller lifts not-ready once it saw Ready
        got = [await kube.get("Node", "", n) for n in names]
        return all(n is not None and not n["spec"].get("taints") for n in got)

    await eventually(untainted, 60, "the real nodes' not-ready taints lifted")

    async def leased() -> bool:  # a kubelet's first Lease comes up to 10 s after it is Ready
        got = [await kube.get("Lease", "kube-node-lease", n) for n in names]
        return all(lease is not None for lease in got)

    await eventually(leased, 60, "each real kubelet's kube-node-lease Lease")
    ns = f"realfail-{int(time.time() * 1000) % 10**9}"
    await kube.request("POST", "/api/v1/namespaces",
                       {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for obj in spread_workload(ns, nodes[0].image):
        await kube.seed(obj)

    async def spread() -> bool:
        live = [p for p in await namespace_pods(kube, ns) if running(p)]
        return len({p["spec"]["nodeName"] for p in live}) == 3

    await eventually(spread, 120, "3 web pods Running on the 3 real nodes")
    assert kube.creds is not None
    kc = sa_kubeconfig(tmp_path / "sa.kubeconfig", kube.creds.server, kube.creds.ca, sa_token)
    fl = fleet(KubeletNodes(kc, nodes), T, tmp_path)  # type: ignore[arg-type]  # duck-typed
    await fl.start()
    try:
        async def elected() -> bool:
            lead = fl.leader()
            view = fl.stages[lead].view if lead else None
            return view is not None and len(view.urls) == 3

        await eventually(elected, 30, "a leader that knows all three agents")
        yield Setup(kube, fl, nodes, ns)
    finally:
        await fl.stop()
        await kube.request("DELETE", f"/api/v1/namespaces/{ns}")


def kubelet_pods(node: RealNode) -> dict[str, str]:
    """name -> phase of the pods the node's kubelet itself runs (its read-only /pods)."""
    with urllib.request.urlopen(f"{node.kubelet_url}/pods", timeout=10) as r:
        doc = json.load(r)
    return {p["metadata"]["name"]: p.get("status", {}).get("phase", "")
            for p in doc.get("items") or []}


async def test_dead_real_node_is_fenced_and_its_pod_runs_on_a_healthy_real_kubelet(
        setup: Setup) -> None:
    s = setup
    lead = s.fleet.leader()
    victim = next(n for n in s.nodes if n.name != lead)
    healthy = [n for n in s.nodes if n is not victim]
    before = {p["metadata"]["name"] for p in await namespace_pods(s.kube, s.ns)
              if p["spec"].get("nodeName") == victim.name}
    assert len(before) == 1, before
    lease = await s.kube.get("Lease", "kube-node-lease", victim.name) or {}
    renewed = parse_micro_time(lease.get("spec", {}).get("renewTime"))
    assert renewed is not None, lease
    t0 = time.monotonic()
    quiet = time.time() - renewed  # the kubelet's heartbeat age at the failure
    await s.fleet.kill(victim.name)  # kubelet + containers SIGKILLed, agent stopped
    tl = await failover_timeline(s.kube, s.ns, victim.name, t0, limit=120,
                                 stop_at=("running", "gone"))
    print(f"real-node failover ({victim.name}, leader {lead}, lease {quiet:.1f}s old): "
          f"{tl.summary()}")
    m = tl.marks
    state = [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"),
              bool(p["metadata"].get("deletionTimestamp"))) for p in tl.pods]
    assert m["running"] is not None, f"no replacement Running: {tl.summary()}; pods {state}"
    for mark in ("cordon", "evicted", "fenced", "gone", "bound"):
        assert m[mark] is not None, f"{mark} never happened: {tl.summary()}"
    # In order, and nodemedic's: the cordon waited for the grace, the fence for fencing_time;
    # all of it well before the controller's 300 s unreachable toleration could have evicted.
    cordon, evicted, fenced = (m["cordon"] or 0), (m["evicted"] or 0), (m["fenced"] or 0)
    assert T.node_grace - quiet - 1.0 <= cordon <= evicted <= fenced, tl.summary()
    assert fenced >= cordon + T.fencing_time - 1.5, tl.summary()
    assert (m["running"] or 0) < 90, tl.summary()
    node = await s.kube.get("Node", "", victim.name) or {}
    assert FAILED_TAINT in {t["key"] for t in node["spec"].get("taints") or []}

    live = [p for p in tl.pods if not p["metadata"].get("deletionTimestamp")]
    assert not before & {p["metadata"]["name"] for p in live}, "the dead node's pod came back"
    for p in live:  # each Running on a healthy node, as that node's real kubelet says
        host = next(n for n in healthy if n.name == p["spec"]["nodeName"])
        assert container_status(p)["containerID"].startswith("containerd://"), p["status"]
        assert kubelet_pods(host).get(p["metadata"]["name"]) == "Running", host.name
