"""Safety scenarios end to end: admin overrides, the cluster cap, restarts mid-ladder, the API
going away mid-drain, dry-run and the pause switches."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.remediation import RemediationStage
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    LadderEngine,
    ScriptedEngine,
    argv_log,
    metric,
    node,
    pdb,
    pod,
    recording_systemctl,
    request,
    settings,
    snapshot,
)
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends


def unschedulable(server: ApiServer, name: str = NODE) -> bool:
    n = server.get("Node", "", name)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


def last(stage: RemediationStage) -> dict[str, Any]:
    return stage.status()["remediation"]["recent_decisions"][-1]  # type: ignore[no-any-return]


async def test_admin_uncordon_is_respected_for_the_episode(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """After an admin uncordons, the same rule does not cordon again until it resolved."""
    apiserver.create(node(NODE))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("cordon", rule="disk")]
    await stage.on_snapshot(snapshot())
    assert unschedulable(apiserver)

    # The admin runs `kubectl uncordon` (a merge patch that leaves our annotation in place).
    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": False}})
    clock.t += 3600
    engine.queue = [request("cordon", rule="disk")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert (last(stage)["decision"], last(stage)["reason"]) == ("denied", "admin_override")

    # A drain for the same rule is refused too (it would cordon first).
    clock.t += 3600
    engine.queue = [request("drain", rule="disk")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert last(stage)["reason"] == "admin_override"

    # The rule resolves (its undo), and a new episode may cordon again.
    engine.queue = [request("uncordon", rule="disk", undo=True)]
    await stage.on_snapshot(snapshot())
    anns = apiserver.get("Node", "", NODE)["metadata"]["annotations"]  # type: ignore[index]
    assert "nodemedic.io/uncordoned-by-admin" not in anns
    clock.t += 3600
    engine.queue = [request("cordon", rule="disk")]
    await stage.on_snapshot(snapshot())
    assert unschedulable(apiserver)


async def test_cluster_cap_stops_the_fourth_cordon(apiserver: ApiServer, kube_api: Any) -> None:
    """With --safety.max-cordoned=3, agents on four nodes cordon three and the fourth is denied,
    counted against the API right before cordoning."""
    for i in range(10):
        apiserver.create(node(f"node-{i}"))
    stages = []
    for i in range(4):
        engine = ScriptedEngine()
        stage = RemediationStage(
            settings(node_name=f"node-{i}", safety_max_cordoned="3"), kube_api, engine,
            clock=Clock(),
        )
        engine.queue = [request("cordon", node_name=f"node-{i}")]
        await stage.on_snapshot(snapshot())
        stages.append(stage)
    assert [unschedulable(apiserver, f"node-{i}") for i in range(4)] == [True, True, True, False]
    fourth = last(stages[3])
    assert (fourth["decision"], fourth["reason"]) == ("denied", "cluster_cap")
    assert "3 of 10 nodes are already unschedulable" in fourth["detail"]
    fams = stages[3].families()
    assert metric(fams, "nodemedic_cordoned_nodes") == 3
    assert metric(fams, "nodemedic_cordon_budget_limit") == 3
    assert metric(fams, "nodemedic_actions_denied_total", reason="cluster_cap") == 1


def cordon_lock(server: ApiServer) -> dict[str, Any]:
    lease = server.get("Lease", "kube-system", "nodemedic-cordon")
    assert lease is not None
    return lease["spec"]  # type: ignore[no-any-return]


async def test_two_agents_racing_for_the_last_slot_cordon_one_node(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Two agents deciding in the same instant with one cordon left in the budget: exactly one
    node is cordoned; the other waits on the cordon Lease, then is denied by the cap."""
    for i in range(10):
        apiserver.create(node(f"node-{i}"))
    # Slow LISTs widen the count -> cordon window the way a busy API server does.
    apiserver.faults.latency_by_verb["list"] = 0.1
    clock = Clock()
    stages, engines = [], []
    for i in range(2):
        engine = ScriptedEngine()
        stages.append(RemediationStage(
            settings(node_name=f"node-{i}", safety_max_cordoned="1"), kube_api, engine,
            clock=clock,
        ))
        engines.append(engine)
        engine.queue = [request("cordon", node_name=f"node-{i}")]
    await asyncio.gather(*(st.on_snapshot(snapshot()) for st in stages))
    cordoned = [unschedulable(apiserver, f"node-{i}") for i in range(2)]
    assert cordoned.count(True) == 1, "the cap of 1 was overshot"
    loser = cordoned.index(False)
    assert (last(stages[loser])["decision"], last(stages[loser])["reason"]) == (
        "denied", "cordon_lock")
    assert cordon_lock(apiserver)["holderIdentity"] == "", "the winner must free the lock"
    # Next tick the loser counts again, under the lock, and the cap stops it.
    engines[loser].queue = [request("cordon", node_name=f"node-{loser}")]
    await stages[loser].on_snapshot(snapshot())
    assert (last(stages[loser])["decision"], last(stages[loser])["reason"]) == (
        "denied", "cluster_cap")
    assert not unschedulable(apiserver, f"node-{loser}")


async def test_a_count_too_slow_for_the_cordon_lock_does_not_cordon(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """When counting nodes took more than half the cordon Lease (a slow API), the lock may lapse
    before the cordon lands, so the gate does not cordon and frees the Lease."""
    apiserver.create(node(NODE))
    ticks = iter(range(0, 10_000, 8))  # every monotonic reading is 8 s after the previous one
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock(),
                             monotonic=lambda: float(next(ticks)))
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert (last(stage)["decision"], last(stage)["reason"]) == ("denied", "cordon_lock")
    assert "too close to the lock" in last(stage)["detail"]
    assert cordon_lock(apiserver)["holderIdentity"] == ""


async def test_a_dead_holder_blocks_cordons_only_until_its_lock_expires(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """An agent that died holding the cordon Lease delays other cordons by its lease duration,
    no longer, and the denial names it."""
    apiserver.create(node(NODE))
    clock = Clock()
    apiserver.create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "nodemedic-cordon", "namespace": "kube-system"},
        "spec": {"holderIdentity": "node-dead", "leaseDurationSeconds": 15,
                 "renewTime": "2027-01-15T08:00:00.000000Z"},  # = Clock()'s start
    })
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert last(stage)["reason"] == "cordon_lock"
    assert "node node-dead" in last(stage)["detail"]
    clock.t += 16
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert unschedulable(apiserver)
    assert cordon_lock(apiserver)["holderIdentity"] == ""


async def test_restart_mid_escalation_continues_the_ladder(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """Killed after restart-service and cordon, a new agent on the same API state goes on to
    drain, and never repeats an earlier step, even if its engine forgot where it was."""
    apiserver.create(node(NODE))
    apiserver.create(pod("web-a"))
    systemctl, log = recording_systemctl(tmp_path)
    ladder = [
        request("restart-service", {"unit": "kubelet.service"}, step=0, cooldown_seconds=1800),
        request("cordon", step=1, cooldown_seconds=1800),
        request("drain", step=2, cooldown_seconds=1800),
    ]
    clock = Clock()
    first = RemediationStage(settings(), kube_api, LadderEngine(ladder), clock=clock,
                             monotonic=clock, systemctl=systemctl)
    await first.start()
    await first.on_snapshot(snapshot())
    clock.t += 60
    await first.on_snapshot(snapshot())
    assert argv_log(log) == [["restart", "kubelet.service"]]
    assert unschedulable(apiserver)
    del first  # killed: no close(), whatever it had in memory is gone

    clock.t += 60
    second = RemediationStage(settings(), kube_api, LadderEngine(ladder), clock=clock,
                              monotonic=clock, systemctl=systemctl)
    await second.start()
    await second.on_snapshot(snapshot())
    assert argv_log(log) == [["restart", "kubelet.service"]]
    assert [d["action"] for d in second.status()["remediation"]["recent_decisions"]] == ["drain"]
    clock.t += 10
    await second.on_snapshot(snapshot())
    assert apiserver.get("Pod", "shop", "web-a") is None

    # A third agent whose engine restarts the ladder from scratch: the ledger's cooldowns stop
    # every repeat.
    class Forgetful(LadderEngine):
        def restore_state(self, state: Any) -> None:
            pass

    third = RemediationStage(settings(), kube_api, Forgetful(ladder, every=0), clock=clock,
                             monotonic=clock, systemctl=systemctl)
    await third.start()
    await third.on_snapshot(snapshot())
    assert argv_log(log) == [["restart", "kubelet.service"]]
    reasons = {d["action"]: d["reason"] for d in third.status()["remediation"]["recent_decisions"]}
    assert reasons == {"restart-service": "cooldown", "cordon": "cooldown", "drain": "cooldown"}
    events = [e for e in apiserver.list("Event") if e["reason"] == "NodemedicCordon"]
    assert [e["count"] for e in events] == [1]


async def test_api_outage_mid_drain(apiserver: ApiServer, kube_api: Any) -> None:
    """The API server goes away during a drain: no crash, nothing acted on, decisions say
    missing_data; when it returns the drain resumes and finishes."""
    apiserver.create(node(NODE))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pdb("web", "shop", 1, app="web"))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("drain", rule="node-broken")]
    await stage.on_snapshot(snapshot())
    assert len(stage.ledger.pending) == 1

    await apiserver.stop()
    clock.t += 60
    engine.queue = [request("cordon", rule="other")]
    await stage.on_snapshot(snapshot())
    decisions = stage.status()["remediation"]["recent_decisions"][-2:]
    assert {(d["action"], d["decision"], d["reason"]) for d in decisions} == {
        ("drain", "denied", "missing_data"), ("cordon", "denied", "missing_data"),
    }
    assert len(stage.ledger.pending) == 1  # the drain waits, it is not forgotten
    assert stage.status()["remediation"]["gate"]["api"] == "unreachable"

    apiserver.patch(
        "Pod", "shop", "web-b",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status",
    )
    await apiserver.start()
    clock.t += 60
    await stage.on_snapshot(snapshot())
    clock.t += 10
    await stage.on_snapshot(snapshot())
    assert apiserver.get("Pod", "shop", "web-a") is None
    assert stage.ledger.pending == {}
    assert last(stage)["outcome"] == "success"


async def test_stale_snapshot_blocks_new_actions(apiserver: ApiServer, kube_api: Any) -> None:
    """A cordon asked for while the kubelet collector failed this tick is not executed."""
    apiserver.create(node(NODE))
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock())
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot(kubelet_ok=False))
    assert not unschedulable(apiserver)
    assert last(stage)["reason"] == "missing_data"


async def test_dry_run_executes_nothing_but_records(apiserver: ApiServer, kube_api: Any) -> None:
    """--dry-run: node untouched, no Event, yet the decision is counted, logged and in /status."""
    apiserver.create(node(NODE))
    engine = ScriptedEngine()
    stage = RemediationStage(settings(dry_run=True), kube_api, engine, clock=Clock())
    engine.queue = [request("cordon"), request("drain", rule="other")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert apiserver.list("Event") == []
    fams = stage.families()
    assert metric(fams, "nodemedic_actions_total", action="cordon", decision="dry_run",
                  outcome="none") == 1
    assert last(stage)["detail"].startswith("--dry-run: would cordon and drain node node-a")


async def test_pause_annotation_and_configmap(apiserver: ApiServer, kube_api: Any) -> None:
    """nodemedic.io/paused on the node or paused: "true" in kube-system/nodemedic stops actions
    within seconds, without a restart; clearing them lets actions through again."""
    apiserver.create(node(NODE, **{"nodemedic.io/paused": "true"}))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert "node annotation" in last(stage)["detail"]
    assert metric(stage.families(), "nodemedic_paused", scope="node") == 1

    apiserver.patch("Node", "", NODE, {"metadata": {"annotations": {"nodemedic.io/paused": None}}})
    apiserver.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "nodemedic", "namespace": "kube-system"},
                      "data": {"paused": "true"}})
    clock.t += 3600
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    assert "cluster-wide" in last(stage)["detail"]
    fams = stage.families()
    assert metric(fams, "nodemedic_paused", scope="cluster") == 1
    assert metric(fams, "nodemedic_paused", scope="node") == 0

    apiserver.patch("ConfigMap", "kube-system", "nodemedic", {"data": {"paused": "false"}})
    clock.t += 3600
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert unschedulable(apiserver)


async def test_restart_service_allow_list_with_api(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """An allow-listed unit is restarted via systemctl argv and leaves an Event on the node;
    a unit outside the allow-list is denied and systemctl never runs for it."""
    apiserver.create(node(NODE))
    systemctl, log = recording_systemctl(tmp_path)
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock(), systemctl=systemctl)
    engine.queue = [
        request("restart-service", {"unit": "containerd.service"}, rule="runtime-down"),
        request("restart-service", {"unit": "sshd.service"}, rule="evil"),
    ]
    await stage.on_snapshot(snapshot())
    assert argv_log(log) == [["restart", "containerd.service"]]
    by_rule = {d["rule"]: d for d in stage.status()["remediation"]["recent_decisions"]}
    assert (by_rule["evil"]["decision"], by_rule["evil"]["reason"]) == ("denied",
                                                                         "invalid_params")
    (event,) = [e for e in apiserver.list("Event") if e["reason"] == "NodemedicRestartService"]
    assert event["involvedObject"]["name"] == NODE
    assert "rule runtime-down" in event["message"]
    state = json.loads(
        apiserver.get("Node", "", NODE)["metadata"]["annotations"]["nodemedic.io/state"]  # type: ignore[index]
    )
    assert state["h"][0][1:3] == ["runtime-down", "restart-service"]


async def test_admin_uncordon_mid_drain_stops_the_drain(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """An admin uncordoning a node while nodemedic drains it ends the drain: no more evictions."""
    apiserver.create(node(NODE))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pdb("web", "shop", 1, app="web"))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("drain", rule="node-broken")]
    await stage.on_snapshot(snapshot())
    assert len(stage.ledger.pending) == 1

    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": False}})
    apiserver.patch(
        "Pod", "shop", "web-b",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status",
    )
    clock.t += 60
    await stage.on_snapshot(snapshot())
    assert stage.ledger.pending == {}
    assert (last(stage)["decision"], last(stage)["reason"]) == ("denied", "admin_override")
    clock.t += 60
    await stage.on_snapshot(snapshot())
    assert apiserver.get("Pod", "shop", "web-a") is not None
    assert not unschedulable(apiserver)
    assert metric(stage.families(), "nodemedic_drain_pods_remaining", node=NODE) is None


async def test_api_dies_during_a_drain_pass(apiserver: ApiServer, kube_api: Any) -> None:
    """The API server stops while a drain pass is in flight: the pass ends as "retry" (no
    crash, no force), and the drain completes after the server is back."""
    # Already cordoned by this rule, so the only LIST in the tick is the drain's pod list.
    cordoned_by = json.dumps({"rules": ["node-broken"], "at": "2026-01-01T00:00:00Z"})
    apiserver.create(node(NODE, True, **{"nodemedic.io/cordoned-by": cordoned_by}))
    for i in range(3):
        apiserver.create(pod(f"web-{i}"))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    await stage.start()
    apiserver.faults.latency_by_verb["list"] = 0.3  # the server stops while pods are listed
    engine.queue = [request("drain", rule="node-broken")]
    tick = asyncio.create_task(stage.on_snapshot(snapshot()))
    await asyncio.sleep(0.15)
    await apiserver.stop()
    await tick
    decision = next(
        d for d in stage.status()["remediation"]["recent_decisions"] if d["action"] == "drain"
    )
    assert (decision["decision"], decision["outcome"]) == ("allowed", "retry")
    assert "API unreachable" in decision["message"]
    assert len(stage.ledger.pending) == 1

    apiserver.faults.clear()
    await apiserver.start()
    for _ in range(3):
        clock.t += 10
        await stage.on_snapshot(snapshot())
    assert [p for p in apiserver.list("Pod") if p["spec"]["nodeName"] == NODE] == []
    assert stage.ledger.pending == {}


async def test_gauges_are_exported_while_idle(kube: Backend, kube_api: Any) -> None:
    """With no rule firing, pause and cordon-budget gauges still reflect the cluster (so the
    dashboards show them), re-read about once a minute."""
    for i in range(20):
        await kube.seed(node(f"node-{i}", unschedulable=i < 2))
    await kube.seed(node(NODE))
    clock = Clock()
    stage = RemediationStage(settings(), kube_api, ScriptedEngine(), clock=clock, monotonic=clock)
    await stage.on_snapshot(snapshot())
    fams = stage.families()
    assert metric(fams, "nodemedic_paused", scope="cluster") == 0
    assert metric(fams, "nodemedic_cordoned_nodes") == 2
    assert metric(fams, "nodemedic_cordon_budget_limit") == 2  # 10% of 21, rounded down

    await kube.seed({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "nodemedic", "namespace": "kube-system"},
                      "data": {"paused": "true"}})
    clock.t += 61
    await stage.on_snapshot(snapshot())
    assert metric(stage.families(), "nodemedic_paused", scope="cluster") == 1
