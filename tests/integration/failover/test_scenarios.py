"""Failed-node scenarios on the simulated cluster, judged from its event log and the API objects."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from nodemedic_sim.demo.cluster import SimCluster, SimConfig
from nodemedic_sim.demo.fleet import Fleet, Timings
from tests.polling import poll as wait_for

pytestmark = pytest.mark.timeout(90)

T = Timings(node_grace=2.0, fencing_time=2.0, healthy_delay=1.5, lease_duration=2.0,
            retry_period=0.2, probe_timeout=1.0)
SLACK = 4.0  # upper-bound margin: this 2-core machine is shared with other test suites
RENEW = 0.3  # kubelet lease renewal period in the simulation
OOS = "node.kubernetes.io/out-of-service:NoExecute"
FAILED_TAINT = "nodemedic.io/node-failed:NoSchedule"


async def start(nodes: int = 6, timings: Timings = T) -> tuple[SimCluster, Fleet]:
    cluster = SimCluster(SimConfig(nodes=nodes, lease_renew=RENEW, node_monitor_grace=2.0,
                                   web_replicas=nodes, period=0.05))
    await cluster.start()
    fleet = Fleet(cluster, timings)
    await fleet.start()
    assert await wait_for(fleet.leader, 10), "no leader elected"
    # Let every agent publish its heartbeat so the leader knows all probe URLs.
    leader = fleet.stages[fleet.leader() or ""]
    assert await wait_for(lambda: leader.view is not None
                          and len(leader.view.urls) == nodes, 10)
    return cluster, fleet


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[tuple[SimCluster, Fleet]]:
    cluster, fleet = await start()
    try:
        yield cluster, fleet
    finally:
        await fleet.stop()
        await cluster.stop()


def victim_with_pods(cluster: SimCluster, fleet: Fleet, avoid_zone_of: str = "") -> str:
    leader = fleet.leader()
    avoid = cluster.zone(cluster.names.index(avoid_zone_of)) if avoid_zone_of else None
    for node, pods in cluster.pods_by_node().items():
        if node != leader and pods and cluster.zone(cluster.names.index(node)) != avoid:
            return node
    raise AssertionError("no victim")


def node_events(cluster: SimCluster, node: str) -> set[str]:
    return {e["reason"] for e in cluster.server.list("events", "default")
            if e["involvedObject"].get("name") == node}


def taints(cluster: SimCluster, node: str) -> set[str]:
    obj = cluster.server.get("nodes", "", node) or {}
    return {f"{t['key']}:{t['effect']}" for t in obj.get("spec", {}).get("taints") or []}


def moved(cluster: SimCluster, victim: str, before: list[str]) -> bool:
    pods = cluster.pods_by_node()
    elsewhere = {p for n, ps in pods.items() if n != victim for p in ps}
    stateful = {p for p in before if p.startswith("db-")}
    return not pods[victim] and stateful <= elsewhere


async def test_single_node_failure_cordons_evicts_and_fences(sim: tuple[SimCluster, Fleet]) -> None:
    """A dead node is cordoned after the grace, its pods move, and only then is it fenced."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    before = cluster.pods_by_node()[victim]
    quiet = time.time() - cluster.last_heartbeat(victim)  # the heartbeat age at the kill
    await fleet.kill(victim)
    killed = cluster.first("node_killed", victim)
    assert killed is not None
    assert await wait_for(lambda: moved(cluster, victim, before), 20), cluster.log[-10:]
    cordon = cluster.first("cordoned", victim)
    evicted = cluster.first("pod_terminating", victim)
    fenced = cluster.first("taint_added", f"{victim} {OOS}")
    assert cordon and evicted and fenced
    assert FAILED_TAINT in taints(cluster, victim)
    # Never before the configured windows, counted from the last heartbeat...
    assert cordon.at - killed.at >= T.node_grace - quiet - 0.05
    assert fenced.at - killed.at >= T.fencing_time - quiet - 0.05
    assert evicted.at >= cordon.at and fenced.at >= evicted.at
    # ...and within them, with a generous margin.
    assert cordon.at - killed.at <= T.node_grace + SLACK
    # The Fenced Event follows the out-of-service taint write: wait for it rather than race it.
    wanted = {"NodemedicNodeFailed", "NodemedicPodsEvicted", "NodemedicNodeFenced"}
    assert await wait_for(lambda: node_events(cluster, victim) >= wanted, 10), (
        node_events(cluster, victim))
    # Pods of the same workloads on other nodes were left alone (Kueue replaces one node only).
    assert not [e for e in cluster.log if e.kind == "pod_terminating" and victim not in e.detail]


async def test_leader_exports_its_view_on_metrics(sim: tuple[SimCluster, Fleet]) -> None:
    """The leader's /metrics says it leads and counts a failed node; followers say 0."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    await fleet.kill(victim)
    assert await wait_for(lambda: cluster.first("cordoned", victim), 10)
    leader = fleet.leader()
    assert leader is not None
    await asyncio.sleep(1.2)  # one collect interval: the exposition is rendered per tick
    async with aiohttp.ClientSession() as http:
        async with http.get(fleet.url(leader) + "/metrics") as resp:
            text = await resp.text()
        follower = next(n for n in fleet.agents if n != leader)
        async with http.get(fleet.url(follower) + "/metrics") as resp:
            follower_text = await resp.text()
    assert "nodemedic_leader 1.0" in text
    assert 'nodemedic_peer_nodes{state="failed"} 1.0' in text
    assert "nodemedic_mass_failure_protection_active 0.0" in text
    assert "nodemedic_leader 0.0" in follower_text
    promtool = shutil.which("promtool")
    if promtool is not None:  # lint the exposition the way Prometheus' own tool does
        lint = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                              capture_output=True, check=False)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


async def test_kubelet_only_failure_is_left_to_the_node(sim: tuple[SimCluster, Fleet]) -> None:
    """Kubelet dead but the node's agent answering: no cordon, no taint, no eviction."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    cluster.stop_kubelet(victim)
    leader = fleet.stages[fleet.leader() or ""]
    assert await wait_for(
        lambda: leader.assessment.verdicts.get(victim) is not None
        and leader.assessment.verdicts[victim].state == "kubelet_down", 10)
    await asyncio.sleep(T.fencing_time + 1.0)
    assert cluster.first("cordoned", victim) is None
    assert not taints(cluster, victim) & {FAILED_TAINT, OOS}
    assert cluster.first("pod_terminating", victim) is None
    assert "NodemedicKubeletDown" in node_events(cluster, victim)


async def test_partition_alerts_but_never_force_deletes(sim: tuple[SimCluster, Fleet]) -> None:
    """Reachable from some peers only: partitioned, an alert, no out-of-service, no deletion."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    leader_name = fleet.leader() or ""
    fleet.network.cut(leader_name, victim)
    cluster.stop_kubelet(victim)
    leader = fleet.stages[leader_name]
    assert await wait_for(
        lambda: leader.assessment.verdicts.get(victim) is not None
        and leader.assessment.verdicts[victim].state == "partitioned", 10)
    peers = {f.name: f for f in leader.families()}["nodemedic_peer_nodes"]
    assert peers.get(state="partitioned") == 1
    await asyncio.sleep(T.fencing_time + 1.0)
    assert OOS not in taints(cluster, victim)
    assert cluster.first("cordoned", victim) is None
    assert cluster.first("pod_deleted", victim) is None
    assert cluster.first("pod_terminating", victim) is None
    assert "NodemedicNodePartitioned" in node_events(cluster, victim)


async def test_sixty_percent_failing_triggers_mass_failure_protection() -> None:
    """3 of 5 nodes dying at once: no node is touched, protection metric and Event raised."""
    cluster, fleet = await start(nodes=5)
    try:
        leader_name = fleet.leader() or ""
        victims = [n for n in cluster.names if n != leader_name][:3]
        await asyncio.gather(*(fleet.kill(v) for v in victims))
        leader = fleet.stages[leader_name]
        assert await wait_for(lambda: leader.assessment.mass_failure, 10)
        await asyncio.sleep(T.fencing_time + 1.0)
        for v in victims:
            assert cluster.first("cordoned", v) is None
            assert cluster.first("pod_terminating", v) is None
            assert not taints(cluster, v) & {FAILED_TAINT, OOS}
        mass = {f.name: f for f in leader.families()}["nodemedic_mass_failure_protection_active"]
        assert mass.get() == 1
        reasons = {e["reason"] for e in cluster.server.list("events", "kube-system")}
        assert "NodemedicMassFailureProtection" in reasons
    finally:
        await fleet.stop()
        await cluster.stop()


async def test_new_leader_finishes_the_work_when_the_leader_dies(
    sim: tuple[SimCluster, Fleet],
) -> None:
    """The leader dies mid-remediation: another agent takes over and fences both nodes."""
    cluster, fleet = sim
    old_leader = fleet.leader() or ""
    victim = victim_with_pods(cluster, fleet, avoid_zone_of=old_leader)
    before = cluster.pods_by_node()[victim]
    await fleet.kill(victim)
    assert await wait_for(lambda: cluster.first("cordoned", victim), 10)
    assert cluster.first("taint_added", f"{victim} {OOS}") is None, "fenced before the kill"
    await fleet.kill(old_leader)
    new_leader = await wait_for(lambda: fleet.leader(), 10)
    assert new_leader and new_leader != old_leader
    assert await wait_for(lambda: moved(cluster, victim, before), 20), (
        cluster.log[-12:], fleet.stages[fleet.leader() or new_leader].status())
    assert await wait_for(lambda: OOS in taints(cluster, old_leader), 20), cluster.log[-10:]
    assert cluster.first("cordoned", old_leader) is not None


async def test_recovered_node_is_untainted_and_uncordoned(sim: tuple[SimCluster, Fleet]) -> None:
    """A fenced node that comes back gets nodemedic's taints and cordon removed after the delay."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    await fleet.kill(victim)
    assert await wait_for(lambda: OOS in taints(cluster, victim), 15)
    await fleet.revive(victim)
    assert await wait_for(lambda: cluster.first("uncordoned", victim), 15), cluster.log[-10:]
    ready = cluster.first("node_ready", victim)
    back = cluster.first("uncordoned", victim)
    assert ready and back and back.at - ready.at >= T.healthy_delay - RENEW
    assert not taints(cluster, victim) & {FAILED_TAINT, OOS}

    def progress_annotation() -> str | None:
        node = cluster.server.get("nodes", "", victim) or {}
        return (node["metadata"].get("annotations") or {}).get("nodemedic.io/failover")

    # Cleared by the write after the uncordon (the recovery's last step), not in the same one.
    assert await wait_for(lambda: progress_annotation() is None, 5), progress_annotation()
    assert await wait_for(lambda: "NodemedicNodeRecovered" in node_events(cluster, victim), 10)


async def test_admin_cordon_survives_recovery(sim: tuple[SimCluster, Fleet]) -> None:
    """A node an admin had cordoned stays cordoned after nodemedic's recovery."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    cluster.server.patch("nodes", "", victim, {"spec": {"unschedulable": True}})
    await fleet.kill(victim)
    assert await wait_for(lambda: OOS in taints(cluster, victim), 15)
    await fleet.revive(victim)
    assert await wait_for(lambda: OOS not in taints(cluster, victim), 15)
    node = cluster.server.get("nodes", "", victim) or {}
    assert node["spec"].get("unschedulable") is True


async def test_kueue_tas_workload_gets_one_node_replaced(sim: tuple[SimCluster, Fleet]) -> None:
    """A TAS job's pods on the dead node all turn terminating (Kueue's replacement trigger) while
    its pods on other nodes keep running: no whole-workload eviction."""
    from nodemedic_sim.kueue import replacement_ready

    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    other = next(n for n in cluster.names if n not in (victim, fleet.leader()))
    for i, node in enumerate([victim, victim, other]):
        cluster.server.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"tas-job-{i}", "namespace": "ml",
                         "labels": {"kueue.x-k8s.io/podset": "workers"},
                         "annotations": {"kueue.x-k8s.io/workload": "job-tas"},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": "tas", "uid": "uid-tas",
                                              "controller": True}]},
            "spec": {"nodeName": node, "containers": [{"name": "w", "image": "x"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        })

    def on(node: str) -> list[dict[str, Any]]:
        return [p for p in cluster.server.list("pods", "ml") if p["spec"]["nodeName"] == node]

    await fleet.kill(victim)
    killed = cluster.first("node_killed", victim)
    assert killed is not None
    assert await wait_for(lambda: replacement_ready(on(victim)), 10)
    ready_at = cluster.elapsed()
    # Kueue's default alone would wait for NotReady (40-50 s in a real cluster) + 30 s.
    assert ready_at - killed.at <= T.node_grace + SLACK
    assert "nodemedic.io/node-failed:NoSchedule" in taints(cluster, victim)
    assert not any(p["metadata"].get("deletionTimestamp") for p in on(other))


async def test_dry_run_decides_but_changes_nothing() -> None:
    """With --dry-run the leader records what it would do and leaves the node untouched."""
    from dataclasses import replace

    cluster, fleet = await start(timings=replace(T, dry_run=True))
    try:
        victim = victim_with_pods(cluster, fleet)
        leader = fleet.stages[fleet.leader() or ""]
        await fleet.kill(victim)
        assert await wait_for(
            lambda: any(k[1] == "dry_run" for k in leader.remedy.actions), 10)
        await asyncio.sleep(T.fencing_time + 1.0)
        assert cluster.first("cordoned", victim) is None
        assert cluster.first("pod_terminating", victim) is None
        assert not taints(cluster, victim) & {FAILED_TAINT, OOS}
        kinds = {k[0] for k in leader.remedy.actions if k[1] == "dry_run"}
        assert {"cordon", "taint", "drain", "out-of-service"} <= kinds
    finally:
        await fleet.stop()
        await cluster.stop()


async def test_pdb_blocked_pods_are_freed_by_fencing(sim: tuple[SimCluster, Fleet]) -> None:
    """A PDB that allows no disruption blocks the evictions; fencing still frees the pods."""
    cluster, fleet = sim
    cluster.server.patch("poddisruptionbudgets", "demo", "web", {"spec": {"maxUnavailable": 0}})
    victim = victim_with_pods(cluster, fleet)
    web = [p for p in cluster.pods_by_node()[victim] if p.startswith("web-")]
    assert web
    await fleet.kill(victim)
    assert await wait_for(lambda: OOS in taints(cluster, victim), 15), cluster.log[-10:]
    # The simulator logs the taint from its watch, a moment after the write: wait for the record.
    fenced = await wait_for(lambda: cluster.first("taint_added", f"{victim} {OOS}"), 5)
    assert fenced is not None
    assert all(cluster.first("pod_terminating", f"{p} on") is None for p in web)
    assert await wait_for(lambda: not cluster.pods_by_node()[victim], 10)
    gone = [cluster.first("pod_deleted", f"{p} on {victim}") for p in web]
    assert all(g is not None and g.at >= fenced.at for g in gone)


async def test_admin_out_of_service_taint_survives_recovery(sim: tuple[SimCluster, Fleet]) -> None:
    """An out-of-service taint an admin set before nodemedic acted is left in place."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    await fleet.kill(victim)
    cluster.server.patch("nodes", "", victim, {"spec": {"taints": [
        {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
         "effect": "NoExecute"}]}})
    node = cluster.server.get("nodes", "", victim) or {}
    assert await wait_for(lambda: '"phase":"fenced"' in (
        (cluster.server.get("nodes", "", victim) or node)["metadata"].get("annotations") or {}
    ).get("nodemedic.io/failover", ""), 15)
    await fleet.revive(victim)
    assert await wait_for(lambda: cluster.first("uncordoned", victim), 15)
    await asyncio.sleep(0.5)
    assert OOS in taints(cluster, victim)


async def test_failover_denied_while_paused_is_retried_after_unpause(
    sim: tuple[SimCluster, Fleet],
) -> None:
    """Remediation paused cluster-wide when a node dies: the leader does not cordon it; once
    unpaused it retries on its own (after its backoff) and cordons it — a transient denial is
    never final (issue 12 item 7, failover path)."""
    cluster, fleet = sim
    cluster.server.create({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "nodemedic", "namespace": "kube-system"},
                           "data": {"paused": "true"}})
    victim = victim_with_pods(cluster, fleet)
    await fleet.kill(victim)
    leader = fleet.stages[fleet.leader() or ""]
    assert await wait_for(lambda: any(k[:2] == ("cordon", "denied")
                                      for k in leader.remedy.actions), T.node_grace + SLACK)
    assert cluster.first("cordoned", victim) is None
    cluster.server.patch("ConfigMap", "kube-system", "nodemedic", {"data": {"paused": "false"}})
    backoff = 10 * T.retry_period  # agent.peers.work.BACKOFF_PERIODS retry periods
    assert await wait_for(lambda: cluster.first("cordoned", victim), backoff + 2 * SLACK), (
        cluster.log[-10:])


async def test_admin_uncordon_stops_the_failover() -> None:
    """Issue 12: an admin uncordons a node while the leader fails it over. The leader adds no
    out-of-service taint and evicts nothing more, does not cordon it again, and says why in an
    Event, in /status and in the node's failover annotation (so a new leader does not resume)."""
    timings = Timings(node_grace=2.0, fencing_time=5.0, healthy_delay=1.5, lease_duration=2.0,
                      retry_period=0.2, probe_timeout=1.0)
    cluster, fleet = await start(timings=timings)
    try:
        victim = victim_with_pods(cluster, fleet)
        await fleet.kill(victim)
        assert await wait_for(lambda: cluster.first("cordoned", victim), 15), cluster.log[-10:]
        cluster.server.patch("nodes", "", victim, {"spec": {"unschedulable": None}},
                             "application/strategic-merge-patch+json",
                             manager="kubectl-uncordon")
        assert await wait_for(lambda: "NodemedicFailoverStopped" in node_events(cluster, victim),
                              5), cluster.log[-10:]
        stopped_at = cluster.elapsed()
        await asyncio.sleep(timings.fencing_time + 1.0)  # well past when it would have fenced
        assert OOS not in taints(cluster, victim)
        node = cluster.server.get("nodes", "", victim) or {}
        assert not node["spec"].get("unschedulable")
        assert '"stopped":"an admin uncordoned the node"' in (
            node["metadata"].get("annotations") or {}).get("nodemedic.io/failover", "")
        late = [e for e in cluster.log if e.kind in ("pod_terminating", "cordoned", "taint_added")
                and victim in e.detail and e.at > stopped_at + 0.3]
        assert late == []
        [message] = [e["message"] for e in cluster.server.list("events", "default")
                     if e["reason"] == "NodemedicFailoverStopped"]
        assert message.startswith("an admin uncordoned the node while nodemedic was failing")
        leader = fleet.stages[fleet.leader() or ""]
        assert leader.status()["failover"]["stopped_by_admin"] == {
            victim: "an admin uncordoned the node"}
        # Back to health: the episode ends as any other (our taint goes, no cordon is added).
        await fleet.revive(victim)
        assert await wait_for(lambda: FAILED_TAINT not in taints(cluster, victim), 15)
        assert await wait_for(lambda: "nodemedic.io/failover" not in (
            (cluster.server.get("nodes", "", victim) or {})["metadata"].get("annotations") or {}),
            5)
        assert not (cluster.server.get("nodes", "", victim) or {})["spec"].get("unschedulable")
    finally:
        await fleet.stop()
        await cluster.stop()


async def test_out_of_service_taint_an_admin_replaced_survives_recovery(
    sim: tuple[SimCluster, Fleet],
) -> None:
    """The admin removes the out-of-service taint nodemedic added and later adds their own: at
    recovery nodemedic leaves it, since it is no longer the one nodemedic made."""
    cluster, fleet = sim
    victim = victim_with_pods(cluster, fleet)
    await fleet.kill(victim)
    assert await wait_for(lambda: OOS in taints(cluster, victim), 15)

    def set_oos(present: bool) -> None:
        node = cluster.server.get("nodes", "", victim) or {}
        keep = [t for t in node["spec"].get("taints") or []
                if t["key"] != "node.kubernetes.io/out-of-service"]
        if present:
            keep.append({"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                         "effect": "NoExecute"})
        cluster.server.patch("nodes", "", victim, {"spec": {"taints": keep}},
                             manager="kubectl-taint")

    set_oos(False)
    assert await wait_for(lambda: '"oos":false' in (
        (cluster.server.get("nodes", "", victim) or {})["metadata"].get("annotations") or {}
    ).get("nodemedic.io/failover", ""), 10)
    set_oos(True)
    await fleet.revive(victim)
    assert await wait_for(lambda: cluster.first("uncordoned", victim), 15), cluster.log[-10:]
    assert await wait_for(lambda: "nodemedic.io/failover" not in (
        (cluster.server.get("nodes", "", victim) or {})["metadata"].get("annotations") or {}), 10)
    assert OOS in taints(cluster, victim)
    assert FAILED_TAINT not in taints(cluster, victim)
