"""The kube helpers under real API semantics: stale resourceVersion -> 409 -> re-read and
re-apply (an admin's concurrent edit survives); evict-pod against a PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

import pytest

from agent.kube.nodes import ensure_annotations, update_node
from agent.runtime.remediation import RemediationStage
from agent.structs.remediation import ActionRequest, ActionSpec, Target
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    ScriptedEngine,
    metric,
    node,
    pdb,
    pod,
    settings,
    snapshot,
)


async def test_concurrent_edit_is_not_overwritten(apiserver: ApiServer, kube_api: Any) -> None:
    """If the node changes between our read and our write, the write gets 409 and is redone on
    the fresh object, so the other writer's change is kept."""
    apiserver.create(node(NODE))
    calls = 0

    def mutate(obj: dict[str, Any]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # an admin edits the node after we read it
            apiserver.patch("Node", "", NODE, {"metadata": {"labels": {"team": "infra"}}})
        ensure_annotations(obj)["nodemedic.io/test"] = "yes"
        return True

    stored, changed = await update_node(kube_api, NODE, mutate)
    assert changed and calls == 2
    assert stored["metadata"]["labels"] == {"team": "infra"}
    assert stored["metadata"]["annotations"]["nodemedic.io/test"] == "yes"


async def test_transient_409s_are_retried(apiserver: ApiServer, kube_api: Any) -> None:
    """Two injected 409s on node updates do not stop a cordon."""
    apiserver.create(node(NODE))
    apiserver.faults.fail(2, 409, verb="update", resource="nodes")
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock())
    engine.queue = [ActionRequest("r", ActionSpec.of("cordon"), Target("node", NODE))]
    await stage.on_snapshot(snapshot())
    assert apiserver.get("Node", "", NODE)["spec"]["unschedulable"] is True  # type: ignore[index]
    assert apiserver.faults.pending() == 0  # both 409s were really served


async def test_evict_pod_waits_for_the_budget(apiserver: ApiServer, kube_api: Any) -> None:
    """evict-pod on a PDB-protected pod retries on later ticks and evicts once allowed;
    a DaemonSet pod is refused."""
    apiserver.create(node(NODE))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pod("agent-x", owner="DaemonSet"))
    apiserver.create(pdb("web", "shop", 1, app="web"))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [
        ActionRequest("mem", ActionSpec.of("evict-pod", {"grace_period_cap": 0}),
                      Target("pod", NODE, "shop", "web-a")),
        ActionRequest("mem", ActionSpec.of("evict-pod", {"grace_period_cap": 0}),
                      Target("pod", NODE, "shop", "agent-x")),
    ]
    await stage.on_snapshot(snapshot())
    outcomes = {d["target"]: d["outcome"] for d in
                stage.status()["remediation"]["recent_decisions"]}
    assert outcomes == {"pod/shop/web-a": "retry", "pod/shop/agent-x": "skipped"}
    assert apiserver.get("Pod", "shop", "agent-x") is not None

    apiserver.patch(
        "Pod", "shop", "web-b",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, subresource="status",
    )
    clock.t += 10
    await stage.on_snapshot(snapshot())
    assert apiserver.get("Pod", "shop", "web-a") is None
    assert stage.ledger.pending == {}


def _cordons(*rules: str) -> list[ActionRequest]:
    return [ActionRequest(r, ActionSpec.of("cordon"), Target("node", NODE)) for r in rules]


def _cordon_event_count(apiserver: ApiServer) -> int:
    return sum(int(e.get("count", 1)) for e in apiserver.list("Event")
               if e.get("reason") == "NodemedicCordon")


async def test_failed_events_are_retried_and_the_queue_is_bounded(
    apiserver: ApiServer, kube_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event writes failing with 500 are queued and written on later ticks once the API
    answers; past the queue bound the oldest is dropped and counted."""
    monkeypatch.setattr("agent.runtime.action_events.EVENT_RETRY_QUEUE", 2)
    apiserver.create(node(NODE))
    apiserver.faults.fail(100, 500, verb="create", resource="events")
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock())
    engine.queue = _cordons("r1", "r2", "r3")
    await stage.on_snapshot(snapshot())
    fams = stage.families()
    assert metric(fams, "nodemedic_remediation_events_queued") == 2
    assert metric(fams, "nodemedic_remediation_events_dropped_total", reason="queue_full") == 1
    assert _cordon_event_count(apiserver) == 0
    apiserver.faults.clear()
    for _ in range(2):
        await stage.on_snapshot(snapshot())
    assert _cordon_event_count(apiserver) == 2
    assert metric(stage.families(), "nodemedic_remediation_events_queued") == 0


async def test_an_event_failing_on_every_retry_is_given_up(
    apiserver: ApiServer, kube_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Event the API keeps refusing is retried a bounded number of times, then dropped and
    counted as reason=attempts."""
    monkeypatch.setattr("agent.runtime.action_events.EVENT_RETRY_ATTEMPTS", 3)
    apiserver.create(node(NODE))
    apiserver.faults.fail(1000, 500, verb="create", resource="events")
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=Clock())
    engine.queue = _cordons("r1")
    for _ in range(8):  # attempts at ticks 1, 2 and 4
        await stage.on_snapshot(snapshot())
    fams = stage.families()
    assert metric(fams, "nodemedic_remediation_events_dropped_total", reason="attempts") == 1
    assert metric(fams, "nodemedic_remediation_events_queued") == 0
    assert metric(fams, "nodemedic_remediation_events_failed_total") == 3


async def test_a_refused_state_write_backs_off_and_is_retried_at_shutdown(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Node updates refused (403): the cordon fails once, the state annotation is not re-PUT on
    every tick (10 s, 20 s ... backoff), and close() still tries the last write."""
    apiserver.create(node(NODE))
    apiserver.faults.fail(1000, 403, verb="update", resource="nodes")
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [ActionRequest("r", ActionSpec.of("cordon"), Target("node", NODE),
                                  cooldown_seconds=600)]
    for _ in range(8):  # 8 ticks, 1 s apart: within the first 10 s backoff
        await stage.on_snapshot(snapshot())
        clock.t += 1
    assert metric(stage.families(), "nodemedic_state_writes_total", result="error") == 1
    clock.t += 10  # past the backoff: one more try
    await stage.on_snapshot(snapshot())
    assert metric(stage.families(), "nodemedic_state_writes_total", result="error") == 2
    await stage.close()  # inside the next (20 s) backoff, yet tried
    assert metric(stage.families(), "nodemedic_state_writes_total", result="error") == 3
