"""Cordon and drain end to end through kubernetes_asyncio against the in-memory API server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.runtime.remediation import STATE_ANNOTATION, RemediationStage
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    ScriptedEngine,
    metric,
    node,
    pdb,
    pod,
    request,
    settings,
    snapshot,
)
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends


def names(server: ApiServer, on: str = NODE) -> set[str]:
    return {p["metadata"]["name"] for p in server.list("Pod") if p["spec"].get("nodeName") == on}


def events(server: ApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in server.list("Event") if e.get("reason") == reason]


async def test_drain_waits_for_the_pdb_then_finishes(apiserver: ApiServer, kube_api: Any) -> None:
    """A PDB blocks one eviction (429) until a replica elsewhere is Ready; DaemonSet and mirror
    pods stay; the node ends cordoned by nodemedic with an Event and no drain in progress."""
    apiserver.create(node(NODE))
    apiserver.create(node("node-b"))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pod("db-0", owner="StatefulSet", labels={"app": "db"}))
    apiserver.create(pod("fluentd-x", namespace="kube-system", owner="DaemonSet"))
    apiserver.create(pod("kube-apiserver-a", namespace="kube-system", owner=None, mirror=True))
    apiserver.create(pdb("web", "shop", 1, app="web"))

    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    await stage.start()
    engine.queue = [request("drain", {"timeout": 900.0, "grace_period_cap": "1h"},
                            rule="node-broken")]
    await stage.on_snapshot(snapshot())

    stored = apiserver.get("Node", "", NODE)
    assert stored is not None
    assert stored["spec"]["unschedulable"] is True
    assert json.loads(stored["metadata"]["annotations"]["nodemedic.io/cordoned-by"])["rules"] == [
        "node-broken"
    ]
    assert "web-a" in names(apiserver)  # blocked by the PDB: web-b is not Ready
    assert "db-0" not in names(apiserver)
    fams = stage.families()
    assert metric(fams, "nodemedic_drain_pods_remaining", node=NODE) == 2  # web-a + db-0 seen
    assert metric(fams, "nodemedic_actions_in_progress", action="drain") == 1
    state = json.loads(stored["metadata"]["annotations"][STATE_ANNOTATION])
    assert state["p"][0]["req"]["type"] == "drain"  # resumable after a restart

    # Still blocked: the retry is refused again and backs off; nothing is force-deleted.
    clock.t += 10
    await stage.on_snapshot(snapshot())
    assert "web-a" in names(apiserver)

    apiserver.patch(
        "Pod", "shop", "web-b",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status",
    )
    clock.t += 60
    await stage.on_snapshot(snapshot())
    assert "web-a" not in names(apiserver)
    clock.t += 10
    await stage.on_snapshot(snapshot())

    assert names(apiserver) == {"fluentd-x", "kube-apiserver-a"}
    assert stage.ledger.pending == {}
    fams = stage.families()
    assert metric(fams, "nodemedic_drain_pods_remaining", node=NODE) is None
    assert metric(fams, "nodemedic_actions_total", action="drain", decision="allowed",
                  outcome="success") == 1
    (event,) = events(apiserver, "NodemedicDrain")  # start and finish aggregate into one
    assert event["count"] == 2
    assert event["message"].startswith("drain success: drained node node-a.")
    assert event["source"]["component"] == "nodemedic"
    assert event["reportingComponent"] == "nodemedic"
    assert event["involvedObject"]["kind"] == "Node"
    assert "rule node-broken" in event["message"]
    assert "nodemedic_kubelet_up=0" in event["message"]
    await stage.close()


async def test_undo_uncordons_only_what_nodemedic_cordoned(
    kube: Backend, kube_api: Any
) -> None:
    """uncordon reverses nodemedic's cordon but leaves a node an admin cordoned alone."""
    await kube.seed(node(NODE))
    await kube.seed(node("node-b", unschedulable=True))
    engine = ScriptedEngine()
    stage = RemediationStage(settings(safety_max_cordoned="2"), kube_api, engine, clock=Clock())
    engine.queue = [request("cordon")]
    await stage.on_snapshot(snapshot())
    assert (await kube.get("Node", "", NODE))["spec"]["unschedulable"] is True  # type: ignore[index]

    engine.queue = [request("uncordon", undo=True)]
    await stage.on_snapshot(snapshot())
    after = await kube.get("Node", "", NODE)
    assert after is not None
    assert not after["spec"].get("unschedulable")
    assert "nodemedic.io/cordoned-by" not in after["metadata"].get("annotations", {})

    other = RemediationStage(settings(node_name="node-b"), kube_api, engine, clock=Clock())
    engine.queue = [request("uncordon", node_name="node-b", undo=True)]
    await other.on_snapshot(snapshot())
    assert (await kube.get("Node", "", "node-b"))["spec"]["unschedulable"] is True  # type: ignore[index]
    last = other.status()["remediation"]["recent_decisions"][-1]
    assert (last["outcome"], last["message"]) == (
        "noop", "node node-b was cordoned by an admin; leaving it"
    )


async def test_taint_event_and_owner_annotation(apiserver: ApiServer, kube_api: Any) -> None:
    """taint/untaint touch only their key; Events aggregate repeats; owner annotations reach the
    controller behind a pod."""
    apiserver.create({**node(NODE), "spec": {"taints": [{"key": "dedicated", "value": "gpu",
                                                        "effect": "NoSchedule"}]}})
    # The in-memory server serves DaemonSets but not Deployments/ReplicaSets, so the owner
    # chain here is pod -> DaemonSet (the same code path follows ReplicaSet -> Deployment).
    apiserver.create({"apiVersion": "apps/v1", "kind": "DaemonSet",
                      "metadata": {"name": "agent", "namespace": "shop"},
                      "spec": {"selector": {"matchLabels": {"app": "agent"}},
                               "template": {"metadata": {"labels": {"app": "agent"}},
                                            "spec": {"containers": [{"name": "c",
                                                                     "image": "x"}]}}}})
    p = pod("agent-abc", labels={"app": "agent"}, owner="DaemonSet")
    p["metadata"]["ownerReferences"][0]["name"] = "agent"
    apiserver.create(p)

    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    taint = {"key": "nodemedic.io/disk-pressure", "effect": "NoSchedule"}
    engine.queue = [request("taint", taint, rule="disk")]
    await stage.on_snapshot(snapshot())
    keys = [t["key"] for t in apiserver.get("Node", "", NODE)["spec"]["taints"]]  # type: ignore[index]
    assert keys == ["dedicated", "nodemedic.io/disk-pressure"]
    engine.queue = [request("untaint", {"key": "nodemedic.io/disk-pressure"}, rule="disk",
                            undo=True)]
    await stage.on_snapshot(snapshot())
    keys = [t["key"] for t in apiserver.get("Node", "", NODE)["spec"]["taints"]]  # type: ignore[index]
    assert keys == ["dedicated"]

    from agent.structs.remediation import ActionRequest, ActionSpec, Target

    oom = Target("pod", NODE, "shop", "agent-abc")
    for i in range(3):
        clock.t += 60
        engine.queue = [
            ActionRequest("oom-storm", ActionSpec.of("event", {"reason": "OOMStorm",
                                                            "message": f"{i + 3} OOM kills"}),
                          oom, step=i),
        ]
        await stage.on_snapshot(snapshot())
    (event,) = events(apiserver, "OOMStorm")
    assert (event["count"], event["message"]) == (3, "5 OOM kills")
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "agent-abc",
                                       "namespace": "shop"}

    engine.queue = [ActionRequest("oom-storm", ActionSpec.of(
        "annotate", {"key": "nodemedic.io/oom-storm", "value": "3 kills", "target": "owner"}),
        oom)]
    await stage.on_snapshot(snapshot())
    owner = apiserver.get("DaemonSet", "shop", "agent")
    assert owner is not None
    assert owner["metadata"]["annotations"]["nodemedic.io/oom-storm"] == "3 kills"


async def test_a_restarted_agent_resumes_a_blocked_drain(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """A drain blocked by a PDB when the agent dies is picked up by the next agent from the node
    annotation and finished, without the engine asking again."""
    apiserver.create(node(NODE))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pdb("web", "shop", 1, app="web"))
    clock = Clock()
    engine = ScriptedEngine()
    first = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("drain", rule="node-broken")]
    await first.on_snapshot(snapshot())
    assert "web-a" in names(apiserver)
    del first  # killed mid-drain

    apiserver.patch(
        "Pod", "shop", "web-b",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status",
    )
    clock.t += 30
    second = RemediationStage(settings(), kube_api, ScriptedEngine(), clock=clock, monotonic=clock)
    await second.start()
    assert [p.request.action.type for p in second.ledger.pending.values()] == ["drain"]
    await second.on_snapshot(snapshot())
    clock.t += 10
    await second.on_snapshot(snapshot())
    assert "web-a" not in names(apiserver)
    assert second.ledger.pending == {}
    stored = apiserver.get("Node", "", NODE)
    assert stored is not None
    assert json.loads(stored["metadata"]["annotations"][STATE_ANNOTATION])["p"] == []


async def test_cordon_held_by_two_rules(kube: Backend, kube_api: Any) -> None:
    """Two rules cordon the node; the first one resolving does not uncordon it, the last does."""
    await kube.seed(node(NODE))
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock())
    engine.queue = [request("cordon", rule="disk"), request("cordon", rule="kubelet")]
    await stage.on_snapshot(snapshot())
    stored = await kube.get("Node", "", NODE)
    assert stored is not None
    assert json.loads(stored["metadata"]["annotations"]["nodemedic.io/cordoned-by"])["rules"] == [
        "disk", "kubelet"
    ]
    engine.queue = [request("uncordon", rule="disk", undo=True)]
    await stage.on_snapshot(snapshot())
    assert (await kube.get("Node", "", NODE))["spec"]["unschedulable"] is True  # type: ignore[index]
    engine.queue = [request("uncordon", rule="kubelet", undo=True)]
    await stage.on_snapshot(snapshot())
    assert not (await kube.get("Node", "", NODE))["spec"].get("unschedulable")  # type: ignore[index]
