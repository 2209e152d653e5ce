"""Workload, not node: a cordon for a problem the pods of one Deployment show on every node it
runs on is not taken (the Deployment is reported instead); the same problem on this node only
still cordons. Real gate, real stage, the in-memory API server, Events written as the agents
write them (agent.kube.events.record_event with host = the observing node)."""

from __future__ import annotations

import time
from typing import Any

from agent.kube.events import InvolvedObject, record_event
from agent.runtime.remediation import RemediationStage
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    ScriptedEngine,
    metric,
    node,
    pod,
    request,
    settings,
    snapshot,
)

NODES = (NODE, "node-b", "node-c")
NS = "shop"


def seed_workload(server: ApiServer, name: str, rs_hash: str) -> dict[str, str]:
    """Deployment ``name`` -> ReplicaSet -> one pod on each node; returns node -> pod name."""
    server.create({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": NS, "uid": f"d-{name}"}, "spec": {}})
    rs = f"{name}-{rs_hash}"
    server.create({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                   "metadata": {"name": rs, "namespace": NS, "uid": f"rs-{name}",
                                "ownerReferences": [{"apiVersion": "apps/v1",
                                                     "kind": "Deployment", "name": name,
                                                     "uid": f"d-{name}", "controller": True}]},
                   "spec": {}})
    pods = {}
    for i, n in enumerate(NODES):
        p = pod(f"{rs}-{i}", n, namespace=NS)
        p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                             "name": rs, "uid": f"rs-{name}",
                                             "controller": True}]
        server.create(p)
        pods[n] = p["metadata"]["name"]
    return pods


async def oom_seen(api: Any, pod_name: str, on: str) -> None:
    """What the problems collector on ``on`` writes for an OOM kill in that pod."""
    await record_event(api, InvolvedObject("Pod", pod_name, NS), "OOMKilling",
                       f"Memory cgroup out of memory: Killed process in {pod_name}",
                       type_="Warning", host=on)


def cordon() -> Any:
    return request("cordon", rule="oom-cordon", workload_reasons=("OOMKilling",))


def unschedulable(server: ApiServer) -> bool:
    n = server.get("Node", "", NODE)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


def stage_for(api: Any) -> tuple[RemediationStage, ScriptedEngine]:
    clock = Clock(time.time())  # Event timestamps are real time
    engine = ScriptedEngine()
    return RemediationStage(settings(), api, engine, clock=clock, monotonic=clock), engine


async def test_problem_on_every_node_of_the_workload_blames_it(
    apiserver: ApiServer, kube_api: Any
) -> None:
    for n in NODES:
        apiserver.create(node(n))
    pods = seed_workload(apiserver, "web", "7c9f")
    for n in NODES:
        await oom_seen(kube_api, pods[n], n)
    stage, engine = stage_for(kube_api)
    engine.queue = [cordon()]
    await stage.on_snapshot(snapshot())

    assert not unschedulable(apiserver)
    status = stage.status()["remediation"]
    decision = status["recent_decisions"][-1]
    assert (decision["decision"], decision["reason"]) == ("denied", "workload_not_node")
    assert "Deployment shop/web" in decision["detail"]
    fams = stage.families()
    assert metric(fams, "nodemedic_workload_blamed_total",
                  namespace=NS, owner_kind="Deployment", owner="web") == 1
    assert metric(fams, "nodemedic_actions_denied_total", reason="workload_not_node") == 1
    (blamed,) = status["gate"]["workload_blamed"]
    assert blamed["other_nodes"] == ["node-b", "node-c"]
    assert blamed["pods"] == [pods[NODE]]
    events = [e for e in apiserver.list("Event", NS) if e["reason"] == "WorkloadNotNode"]
    assert len(events) == 1
    assert events[0]["involvedObject"]["kind"] == "Deployment"
    assert events[0]["involvedObject"]["name"] == "web"
    assert events[0]["involvedObject"]["apiVersion"] == "apps/v1"

    # Final for the episode: not held, so the stage does not re-gate it on its own on later
    # ticks (a held step would be re-asked on the next tick and add a decision).
    assert status["held"] == []
    await stage.on_snapshot(snapshot())
    await stage.on_snapshot(snapshot())
    assert len(stage.status()["remediation"]["recent_decisions"]) == 1
    assert not unschedulable(apiserver)


async def test_problem_on_this_node_only_still_cordons(
    apiserver: ApiServer, kube_api: Any
) -> None:
    for n in NODES:
        apiserver.create(node(n))
    web = seed_workload(apiserver, "web", "7c9f")
    other = seed_workload(apiserver, "api", "55d1")
    await oom_seen(kube_api, web[NODE], NODE)
    # Another workload's OOMs elsewhere, and web's own on other nodes long ago, do not count.
    await oom_seen(kube_api, other["node-b"], "node-b")
    await oom_seen(kube_api, other["node-c"], "node-c")
    old = "2020-01-01T00:00:00Z"
    for n in ("node-b", "node-c"):
        apiserver.create({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"old-{n}", "namespace": NS},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": web[n],
                               "namespace": NS},
            "reason": "OOMKilling", "type": "Warning", "count": 1, "firstTimestamp": old,
            "lastTimestamp": old, "source": {"component": "nodemedic", "host": n},
        })
    stage, engine = stage_for(kube_api)
    engine.queue = [cordon()]
    await stage.on_snapshot(snapshot())

    assert unschedulable(apiserver)
    decision = stage.status()["remediation"]["recent_decisions"][-1]
    assert decision["decision"] == "allowed"
    assert metric(stage.families(), "nodemedic_workload_blamed_total") is None


async def test_a_rule_without_workload_reasons_is_not_checked(
    apiserver: ApiServer, kube_api: Any
) -> None:
    for n in NODES:
        apiserver.create(node(n))
    pods = seed_workload(apiserver, "web", "7c9f")
    for n in NODES:
        await oom_seen(kube_api, pods[n], n)
    stage, engine = stage_for(kube_api)
    engine.queue = [request("cordon", rule="readonly-fs")]
    await stage.on_snapshot(snapshot())
    assert unschedulable(apiserver)


async def test_events_unreadable_is_missing_data_and_held(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Cannot list the Events: cannot tell whether it is the workload, so no cordon, and the
    step is held and decided again (not a final 'node is fine' nor a final blame)."""
    for n in NODES:
        apiserver.create(node(n))
    pods = seed_workload(apiserver, "web", "7c9f")
    await oom_seen(kube_api, pods[NODE], NODE)
    apiserver.faults.fail(1, 403, verb="list", resource="events")
    stage, engine = stage_for(kube_api)
    engine.queue = [cordon()]
    await stage.on_snapshot(snapshot())
    assert not unschedulable(apiserver)
    status = stage.status()["remediation"]
    assert status["recent_decisions"][-1]["reason"] == "missing_data"
    assert [h["reason"] for h in status["held"]] == ["missing_data"]
    # Next tick the held step is re-gated; the Events read now, the problem is this node's only.
    await stage.on_snapshot(snapshot())
    assert unschedulable(apiserver)
