"""Bounded everything, remediation side: a per-pod rule firing on every pod of a 250-pod node
at once (an OOM storm) must neither grow the safety ledger without bound nor forget cooldowns
while it stays within its bound."""

from __future__ import annotations

from typing import Any

import pytest
from stress_k8s import NODE, Clock, ScriptedEngine, metric, node, pod, settings, snapshot

from agent.runtime.remediation import RemediationStage
from agent.safety.ledger import MAX_LAST
from agent.structs.remediation import ActionRequest, ActionSpec, Target
from nodemedic_sim.apiserver import ApiServer

PODS = 250


def storm() -> list[ActionRequest]:
    """What the container-oom-storm rule asks for when every pod on the node is OOM-looping."""
    return [
        ActionRequest(
            rule="container-oom-storm",
            action=ActionSpec.of("event", {"reason": "OOMStorm", "message": "OOM kills"}),
            target=Target("pod", NODE, "shop", f"web-{i}"),
            step=0, observed={"nodemedic_kubelet_up": 0.0}, cooldown_seconds=1800,
        )
        for i in range(PODS)
    ]


async def _two_waves(apiserver: ApiServer, kube_api: Any) -> RemediationStage:
    apiserver.create(node(NODE))
    for i in range(PODS):
        apiserver.create(pod(f"web-{i}"))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock)
    engine.queue = storm()
    await stage.on_snapshot(snapshot())
    clock.t += 60  # well inside the 30-minute cooldown
    engine.queue = storm()
    await stage.on_snapshot(snapshot())
    return stage


@pytest.mark.slow
async def test_storm_on_every_pod_keeps_the_ledger_bounded(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """250 pods firing at once: the ledger's cooldown table stays within its bound and the
    state annotation stays within its size limit."""
    stage = await _two_waves(apiserver, kube_api)
    assert len(stage.ledger.last) <= MAX_LAST
    stored = apiserver.get("Node", "", NODE)
    assert stored is not None
    assert len(stored["metadata"]["annotations"]["nodemedic.io/state"]) <= 32 * 1024


@pytest.mark.slow
async def test_storm_on_every_pod_does_not_forget_cooldowns(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """The same 250 per-pod requests a minute later are all refused by their cooldown: no pod
    gets a second OOMStorm Event within 30 minutes."""
    stage = await _two_waves(apiserver, kube_api)
    fams = stage.families()
    assert metric(fams, "nodemedic_actions_denied_total", action="event",
                  rule="container-oom-storm", reason="cooldown") == PODS
    repeated = [e for e in apiserver.list("Event")
                if e.get("reason") == "OOMStorm" and e.get("count", 1) > 1]
    assert repeated == []
