"""The headline failover on the real control plane, under the shipped RBAC.

Three Node objects whose kubelet side tests/real_fleet.Kubelets plays; a Deployment whose pods the
real scheduler places and the real ReplicaSet controller recreates, guarded by a PDB; three
in-process nodemedic agents with failover on, authenticated as the nodemedic ServiceAccount. One
node goes silent: the leader cordons and taints it inside its window, evicts its pods through the
Eviction API, the replacements are bound elsewhere by the real scheduler, and the real node
lifecycle controller's own taints and nodemedic's stand side by side. Two of three silent: no
action (mass-failure protection). bench/failover_real.py measures the same next to what the
cluster does without nodemedic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nodemedic_sim.demo.fleet import Fleet, Timings
from tests.polling import eventually
from tests.real_cluster import Backend
from tests.real_fleet import Kubelets, RealNodes, fleet, sa_kubeconfig

pytestmark = [pytest.mark.backends, pytest.mark.real_only, pytest.mark.timeout(240)]

NODES = ["node-a", "node-b", "node-c"]
T = Timings(node_grace=4.0, fencing_time=8.0, healthy_delay=3.0, lease_duration=3.0,
            retry_period=0.5, probe_timeout=1.0, max_cordoned="1", max_unhealthy="40%")
FAILED_TAINT = ("nodemedic.io/node-failed", "NoSchedule")
UNREACHABLE = "node.kubernetes.io/unreachable"


def workload(ns: str, replicas: int = 3) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web",
                                                                      "namespace": ns},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "terminationGracePeriodSeconds": 5,
                      "containers": [{"name": "c", "image": "busybox"}],
                      # One per node, so the failed node certainly holds one. Honor: a
                      # cordoned (tainted) node is no spreading domain, else the replacements
                      # could never skew 2-0 onto the healthy nodes and would stay Pending.
                      "topologySpreadConstraints": [{
                          "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                          "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
                          "labelSelector": {"matchLabels": labels}}]}}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"minAvailable": 2, "selector": {"matchLabels": labels}}},
    ]


async def pods(kube: Backend, ns: str) -> list[dict[str, Any]]:
    _, body = await kube.request("GET", f"/api/v1/namespaces/{ns}/pods")
    return list(body.get("items", []))


def ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


class Cluster:
    def __init__(self, kube: Backend, fleet_: Fleet, kubelets: Kubelets, ns: str) -> None:
        self.kube, self.fleet, self.kubelets, self.ns = kube, fleet_, kubelets, ns

    async def node(self, name: str) -> dict[str, Any]:
        obj = await self.kube.get("Node", "", name)
        assert obj is not None
        return obj

    async def taints(self, name: str) -> set[tuple[str, str]]:
        return {(t["key"], t["effect"]) for t in (await self.node(name))["spec"].get("taints", [])}


@pytest_asyncio.fixture
async def cluster(kube: Backend, sa_token: str, tmp_path: Path,
                  request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    # A fresh name each run: a namespace being deleted refuses new pods for a while.
    ns = f"failover-{int(time.time() * 1000) % 10**9}"
    kubelets = Kubelets(kube, NODES)
    await kubelets.start()

    async def untainted() -> bool:  # the lifecycle controller lifts not-ready once it saw Ready
        nodes = [await kube.get("Node", "", n) for n in NODES]
        return all(n is not None and not n["spec"].get("taints") for n in nodes)

    await eventually(untainted, 30, "the new nodes' not-ready taints lifted")
    for obj in workload(ns):
        obj["metadata"]["namespace"] = ns
        await kube.seed(obj)

    async def spread() -> bool:
        live = [p for p in await pods(kube, ns) if p["spec"].get("nodeName") and ready(p)]
        return len({p["spec"]["nodeName"] for p in live}) == 3

    await eventually(spread, 60, "3 web pods scheduled on 3 nodes and Ready")
    assert kube.creds is not None
    kc = sa_kubeconfig(tmp_path / "sa.kubeconfig", kube.creds.server, kube.creds.ca, sa_token)
    fl = fleet(RealNodes(kc, kubelets), T, tmp_path)
    await fl.start()
    try:
        async def elected() -> bool:
            lead = fl.leader()
            view = fl.stages[lead].view if lead else None
            return view is not None and len(view.urls) == 3

        await eventually(elected, 30, "a leader that knows all three agents")
        yield Cluster(kube, fl, kubelets, ns)
    finally:
        await fl.stop()
        await kubelets.stop()
        await kube.request("DELETE", f"/api/v1/namespaces/{ns}")


def victim_of(c: Cluster) -> str:
    lead = c.fleet.leader()
    return next(n for n in NODES if n != lead)


async def test_dead_node_is_cordoned_drained_and_replaced(cluster: Cluster) -> None:
    c = cluster
    victim = victim_of(c)
    t0 = time.monotonic()
    await c.fleet.kill(victim)
    quiet = time.time() - c.kubelets.renewed[victim]  # its heartbeat's age at the failure

    async def cordoned() -> bool:
        return bool((await c.node(victim))["spec"].get("unschedulable"))

    lead = c.fleet.leader() or ""
    try:
        await eventually(cordoned, T.node_grace + 15, f"{victim} cordoned")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; leader {lead}: {c.fleet.stages[lead].status()}") from None
    t_cordon = time.monotonic() - t0
    assert t_cordon >= T.node_grace - quiet - 0.05, "cordoned before the node's grace ran out"

    async def failed_taint() -> bool:  # the cordon and the taint are two writes, a moment apart
        return FAILED_TAINT in await c.taints(victim)

    await eventually(failed_taint, 5, f"{victim} tainted {FAILED_TAINT}")

    removed: dict[str, dict[str, Any]] = {}  # the victim's pods as last seen terminating

    async def replaced() -> bool:
        now = await pods(c.kube, c.ns)
        removed.update({p["metadata"]["name"]: p for p in now
                        if p["spec"].get("nodeName") == victim
                        and p["metadata"].get("deletionTimestamp")})
        live = [p for p in now
                if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")]
        return len(live) == 3 and all(p["spec"]["nodeName"] != victim for p in live)

    try:
        await eventually(replaced, 60, "3 web pods bound to healthy nodes")
    except AssertionError as exc:
        _, ev = await c.kube.request("GET", f"/api/v1/namespaces/{c.ns}/events")
        state = [(p["metadata"]["name"], p["spec"].get("nodeName"),
                  bool(p["metadata"].get("deletionTimestamp"))) for p in await pods(c.kube, c.ns)]
        events = [e["message"] for e in ev["items"][-8:]]
        raise AssertionError(f"{exc}; pods: {state}; events: {events}") from None
    t_bound = time.monotonic() - t0
    # Evicted through the Eviction API (DisruptionTarget set by the API server's eviction).
    assert removed, "no pod of the failed node was seen terminating"
    for p in removed.values():
        assert any(cond.get("type") == "DisruptionTarget"
                   for cond in p["status"].get("conditions", [])), p["status"]

    # The node lifecycle controller's taints join ours; neither side removes the other's.
    async def unreachable() -> bool:
        return any(k == UNREACHABLE for k, _ in await c.taints(victim))

    await eventually(unreachable, 60, "the node lifecycle controller's unreachable taint")
    await asyncio.sleep(3)
    taints = await c.taints(victim)
    assert FAILED_TAINT in taints and (UNREACHABLE, "NoExecute") in taints, taints
    assert (await c.node(victim))["spec"].get("unschedulable") is True
    print(f"failover figures: failure->cordon {t_cordon:.1f}s, "
          f"failure->replacements bound {t_bound:.1f}s")


async def test_two_of_three_silent_is_mass_failure_no_action(cluster: Cluster) -> None:
    c = cluster
    lead = c.fleet.leader()
    silent = [n for n in NODES if n != lead]
    for n in silent:
        await c.fleet.kill(n)
    stage = c.fleet.stages[lead or ""]

    async def protected() -> bool:
        return bool(stage.status().get("failover", {}).get("mass_failure"))

    await eventually(protected, T.node_grace + 20, "mass-failure protection")
    await asyncio.sleep(T.node_grace + 2)
    for n in silent:
        node = await c.node(n)
        assert not node["spec"].get("unschedulable"), f"{n} was cordoned in a mass failure"
        assert FAILED_TAINT not in await c.taints(n)
