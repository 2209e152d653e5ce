"""Kueue's failed-node replacement on the real control plane, with and without nodemedic.

Kueue (hack/k8s/kueue-up.sh: the pinned release as a local process, TopologyAwareScheduling and
TASFailedNodeReplacement on) admits a 2-pod Job that must share one topology block over three
fake-kubelet nodes (tests/real_kueue.Scenario); one node goes silent. With
TASReplaceNodeOnPodTermination (Beta, on by default) Kueue replaces a node in a workload's
topology assignment when the node is NotReady and none of the workload's pods on it is still
running, or when it carries a NoSchedule/NoExecute taint the pods do not tolerate and none of them
is still running (TASReplaceNodeOnNodeTaints); only with that gate off does "NotReady for 30 s"
(NodeFailureDelay) suffice. nodemedic's cordon, ``nodemedic.io/node-failed:NoSchedule`` taint
and evictions give it exactly that: the failed node is swapped for the spare seconds after
nodemedic's grace, before Kubernetes even marks the node NotReady; only that node's pod moves, the
workload is not evicted. Without nodemedic, at Kueue's default gates, a NotReady node whose pod
is still "running" (nobody can terminate it: the kubelet is gone, the ``unreachable`` toleration
lasts 300 s) stays in the assignment past Kueue's 30 s. bench/kueue_real.py measures both at
default settings, and Kueue alone with TASReplaceNodeOnPodTermination off (the 30 s rule).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nodemedic_sim.demo.fleet import Fleet, Timings
from tests.polling import seconds_until as until
from tests.real_cluster import Backend, RealCluster
from tests.real_fleet import RealNodes, fleet, sa_kubeconfig
from tests.real_kueue import (
    KUEUE_NODE_FAILURE_DELAY,
    NODES,
    Scenario,
    condition,
    kueue_down,
    kueue_log,
    kueue_up,
    pod_states,
)

pytestmark = [pytest.mark.backends, pytest.mark.real_only, pytest.mark.timeout(300)]

T = Timings(node_grace=4.0, fencing_time=8.0, healthy_delay=3.0, lease_duration=3.0,
            retry_period=0.5, probe_timeout=1.0, max_cordoned="1", max_unhealthy="40%")
FAILED_TAINT = ("nodemedic.io/node-failed", "NoSchedule")
# tests/real_cluster.RealCluster starts the controller-manager with this grace.
NODE_MONITOR_GRACE = 20.0


@pytest.fixture(scope="module")
def kueue(real_cluster: RealCluster) -> Iterator[Path]:
    """Kueue on the session's control plane for this module; fails (never skips) with
    kueue-build.sh's or kueue-up.sh's error."""
    try:
        creds = real_cluster.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with tempfile.TemporaryDirectory(prefix="nodemedic-kueue-") as tmp:
        workdir = Path(tmp) / "kueue"
        try:
            kueue_up(creds.kubeconfig, workdir)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            yield workdir
        finally:
            kueue_down(creds.kubeconfig, workdir)


@pytest_asyncio.fixture
async def scenario(kueue: Path, kube: Backend) -> AsyncIterator[Scenario]:
    sc = Scenario(kube, f"kueue-{int(time.time() * 1000) % 10**9}")
    try:
        await sc.nodes_up()
        await sc.queues_up()
        yield sc
    finally:
        await sc.teardown()


async def submitted(sc: Scenario, kueue: Path) -> set[str]:
    try:
        return await sc.submit()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nKueue's log:\n{kueue_log(kueue)}") from None


def pod_on(pods: list[dict[str, Any]], node: str) -> dict[str, Any]:
    return next(p for p in pods if p["spec"].get("nodeName") == node)


async def replaced_only(sc: Scenario, before: set[str], victim: str, limit: float,
                        kueue: Path) -> float:
    """Seconds until the victim is swapped for the spare in the assignment (and nothing else)."""
    spare = next(n for n in NODES if n not in before)
    want = (before - {victim}) | {spare}

    async def swapped() -> bool:
        return await sc.assigned() == want

    took = await until(swapped, limit)
    if took is None:
        raise AssertionError(f"Kueue did not replace {victim} by {spare} within {limit:g}s: "
                             f"workload {await sc.workload()}\nKueue's log:\n{kueue_log(kueue)}")
    return took


async def assert_not_evicted(sc: Scenario) -> None:
    wl = await sc.workload()
    assert wl is not None
    assert condition(wl, "Admitted"), wl["status"]
    assert not condition(wl, "Evicted"), wl["status"]


@pytest_asyncio.fixture
async def agents(scenario: Scenario, kube: Backend, sa_token: str,
                 tmp_path: Path) -> AsyncIterator[Fleet]:
    assert kube.creds is not None
    kc = sa_kubeconfig(tmp_path / "sa.kubeconfig", kube.creds.server, kube.creds.ca, sa_token)
    fl = fleet(RealNodes(kc, scenario.kubelets), T, tmp_path)
    await fl.start()
    try:
        async def elected() -> bool:
            lead = fl.leader()
            view = fl.stages[lead].view if lead else None
            return view is not None and len(view.urls) == len(NODES)

        assert await until(elected, 30) is not None, "no leader that knows all three agents"
        yield fl
    finally:
        await fl.stop()


async def test_nodemedic_makes_kueue_replace_only_the_failed_node(
        kueue: Path, scenario: Scenario, agents: Fleet) -> None:
    sc, fl = scenario, agents
    before = await submitted(sc, kueue)
    victim = next(n for n in sorted(before) if n != fl.leader())
    survivor = next(n for n in before if n != victim)
    kept = pod_on(await sc.live_pods(), survivor)
    t0 = time.monotonic()
    await fl.kill(victim)

    took = await replaced_only(sc, before, victim, T.node_grace + 30, kueue)
    # Before the node lifecycle controller even marks the node NotReady (its grace).
    assert took < NODE_MONITOR_GRACE, took
    node = await sc.kube.get("Node", "", victim)
    assert node is not None and node["spec"].get("unschedulable") is True
    assert FAILED_TAINT in {(t["key"], t["effect"]) for t in node["spec"].get("taints", [])}
    await assert_not_evicted(sc)

    # Only the failed node's pod moves: the other keeps running where it was; the Job's
    # replacement for the evicted pod is placed on the spare and runs there.
    spare = next(n for n in NODES if n not in before)

    async def moved() -> bool:
        live = await sc.live_pods()
        running = {p["spec"].get("nodeName") for p in live
                   if p["status"].get("phase") == "Running"}
        return running == {survivor, spare} and len(live) == 2

    if await until(moved, 60) is None:
        raise AssertionError(f"the replacement pod never ran on {spare}: "
                             f"{pod_states(await sc.pods())}")
    t_running = time.monotonic() - t0
    now = pod_on(await sc.live_pods(), survivor)
    assert now["metadata"]["uid"] == kept["metadata"]["uid"], "the healthy node's pod was replaced"
    await assert_not_evicted(sc)
    print(f"kueue figures (nodemedic, grace {T.node_grace:g}s): failure->assignment replaced "
          f"{took:.1f}s, failure->replacement pod Running {t_running:.1f}s")


async def test_kueue_alone_keeps_the_dead_node_while_its_pod_runs(
        kueue: Path, scenario: Scenario) -> None:
    """Without nodemedic, at Kueue's default gates: the node turns NotReady after the node
    monitor grace, but its pod is neither terminated nor terminating (the ``unreachable``
    toleration lasts 300 s), so Kueue keeps the dead node in the assignment past its 30 s."""
    sc = scenario
    before = await submitted(sc, kueue)
    victim = sorted(before)[0]
    sc.kubelets.kill(victim)

    async def not_ready() -> bool:
        node = await sc.kube.get("Node", "", victim) or {}
        return any(c["type"] == "Ready" and c["status"] != "True"
                   for c in node.get("status", {}).get("conditions", []))

    assert await until(not_ready, NODE_MONITOR_GRACE + 30) is not None, f"{victim} stayed Ready"
    deadline = time.monotonic() + KUEUE_NODE_FAILURE_DELAY + 10
    while time.monotonic() < deadline:
        assert await sc.assigned() == before, "Kueue replaced the node without nodemedic"
        await asyncio.sleep(1)
    wl = await sc.workload()
    assert wl is not None
    assert not wl["status"].get("unhealthyNodes"), wl["status"]
    await assert_not_evicted(sc)
