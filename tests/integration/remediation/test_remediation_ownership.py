"""An administrator's cordon always wins: nodemedic undoes only the cordon it made, checked
against the Node as it is at undo time, in every order of events (issue 12 item 3).

The admin is played with the patches kubectl sends, recorded under kubectl's field managers, so
the in-memory API server's managedFields say who set ``spec.unschedulable`` as a real one does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.rules.engine import RuleEngine
from agent.rules.loader import load_rules_dir
from agent.runtime.remediation import RemediationStage
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    ScriptedEngine,
    node,
    pdb,
    pod,
    request,
    settings,
    snapshot,
)

CLAIM = "nodemedic.io/cordoned-by"
OVERRIDE = "nodemedic.io/uncordoned-by-admin"


def kubectl_uncordon(server: ApiServer) -> None:
    """What `kubectl uncordon` sends: a strategic merge patch that drops spec.unschedulable."""
    server.patch("Node", "", NODE, {"spec": {"unschedulable": None}},
                 "application/strategic-merge-patch+json", manager="kubectl-uncordon")


def kubectl_cordon(server: ApiServer) -> None:
    server.patch("Node", "", NODE, {"spec": {"unschedulable": True}},
                 "application/strategic-merge-patch+json", manager="kubectl-cordon")


def current(server: ApiServer) -> dict[str, Any]:
    n = server.get("Node", "", NODE)
    assert n is not None
    return n


def cordoned(server: ApiServer) -> bool:
    return bool(current(server)["spec"].get("unschedulable"))


def annotations(server: ApiServer) -> dict[str, str]:
    return dict(current(server)["metadata"].get("annotations") or {})


def uncordon_events(server: ApiServer) -> list[str]:
    return [e["message"] for e in server.list("Event") if e["reason"] == "NodemedicUncordon"]


def last(stage: RemediationStage) -> dict[str, Any]:
    return stage.status()["remediation"]["recent_decisions"][-1]  # type: ignore[no-any-return]


def new_stage(kube_api: Any, clock: Clock, engine: Any | None = None) -> RemediationStage:
    return RemediationStage(settings(), kube_api, engine or ScriptedEngine(), clock=clock,
                            monotonic=clock)


async def run(stage: RemediationStage, *requests: Any) -> None:
    stage.engine.queue = list(requests)  # type: ignore[attr-defined]
    await stage.on_snapshot(snapshot())


async def test_issue_reproduction_admin_recordon_survives_the_rules_undo(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """The issue's reproduction with the real rules engine: cordon on kubelet_up == 0; the admin
    uncordons, then cordons for maintenance; the kubelet recovers; 30 s later nodemedic leaves
    the admin's cordon alone and its Event says why."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "kubelet.yaml").write_text(
        "rules:\n"
        "  - name: kubelet-down\n"
        "    when: {metric: nodemedic_kubelet_up, op: '==', value: 0}\n"
        "    healthy_for: 30s\n"
        "    actions: [{type: cordon}]\n"
        "    undo: [{type: uncordon}]\n"
    )
    apiserver.create(node(NODE))
    clock = Clock()
    engine = RuleEngine(load_rules_dir(rules), NODE)
    stage = RemediationStage(settings(rules_dir=rules), kube_api, engine, clock=clock,
                             monotonic=clock)
    await stage.on_snapshot(snapshot(kubelet_up=0, mono=clock.t))
    assert cordoned(apiserver)
    kubectl_uncordon(apiserver)
    kubectl_cordon(apiserver)
    for _ in range(5):  # 0 .. 40 s of a healthy kubelet
        clock.t += 10
        await stage.on_snapshot(snapshot(kubelet_up=1, mono=clock.t))
    assert cordoned(apiserver)
    assert CLAIM not in annotations(apiserver)
    assert (last(stage)["action"], last(stage)["outcome"]) == ("uncordon", "skipped")
    [message] = uncordon_events(apiserver)
    assert "an admin uncordoned and cordoned the node again" in message
    assert "kubectl-cordon" in message


async def test_admin_uncordon_only_releases_the_claim(apiserver: ApiServer, kube_api: Any) -> None:
    """Admin uncordon, then the rule resolves: the node stays schedulable, the claim is gone,
    and the Event says the admin uncordoned it (not "nodemedic uncordoned")."""
    apiserver.create(node(NODE))
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("cordon"))
    kubectl_uncordon(apiserver)
    clock.t += 60
    await run(stage, request("uncordon", undo=True))
    assert not cordoned(apiserver)
    assert CLAIM not in annotations(apiserver)
    assert OVERRIDE not in annotations(apiserver)  # the episode of this rule ended
    assert last(stage)["outcome"] == "skipped"
    [message] = uncordon_events(apiserver)
    assert "an admin uncordoned the node" in message
    assert "released nodemedic's claim" in message


async def test_admin_uncordon_then_recordon_is_left_alone(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Admin uncordon + cordon for maintenance: the undo leaves the admin's cordon in place."""
    apiserver.create(node(NODE))
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("cordon"))
    kubectl_uncordon(apiserver)
    clock.t += 5
    kubectl_cordon(apiserver)
    clock.t += 60
    await run(stage, request("uncordon", undo=True))
    assert cordoned(apiserver)
    assert CLAIM not in annotations(apiserver)
    assert last(stage)["outcome"] == "skipped"
    # Nothing of ours is left to undo: a second undo is a plain no-op on the admin's cordon.
    clock.t += 3600
    await run(stage, request("uncordon", undo=True))
    assert cordoned(apiserver)
    assert last(stage)["outcome"] == "noop"


async def test_admin_recordon_while_the_agent_was_down(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """The agent cordons and is killed; the admin uncordons and cordons again while it is down;
    the restarted agent cannot have seen it happen, yet its undo leaves the cordon alone."""
    apiserver.create(node(NODE))
    clock = Clock()
    first = new_stage(kube_api, clock)
    await first.start()
    await run(first, request("cordon"))
    del first  # killed
    kubectl_uncordon(apiserver)
    kubectl_cordon(apiserver)
    clock.t += 60
    second = new_stage(kube_api, clock)
    await second.start()
    await run(second, request("uncordon", undo=True))
    assert cordoned(apiserver)
    assert CLAIM not in annotations(apiserver)
    [message] = uncordon_events(apiserver)
    assert "kubectl-cordon" in message


async def test_admin_cordon_before_ours_is_never_claimed(
    apiserver: ApiServer, kube_api: Any
) -> None:
    apiserver.create(node(NODE))
    kubectl_cordon(apiserver)
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("cordon"))
    assert CLAIM not in annotations(apiserver)
    assert last(stage)["outcome"] == "noop"
    clock.t += 60
    await run(stage, request("uncordon", undo=True))
    assert cordoned(apiserver)


async def test_our_cordon_untouched_is_undone_even_across_a_restart(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Other writers touching other fields (an admin's label, the kubelet's status) do not make
    our cordon someone else's: the undo uncordons, also from a restarted agent."""
    apiserver.create(node(NODE))
    clock = Clock()
    first = new_stage(kube_api, clock)
    await first.start()
    await run(first, request("cordon"))
    del first
    apiserver.patch("Node", "", NODE, {"metadata": {"labels": {"team": "infra"}}},
                    manager="kubectl-label")
    apiserver.patch("Node", "", NODE, {"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}},
        "application/strategic-merge-patch+json", subresource="status", manager="kubelet")
    second = new_stage(kube_api, clock)
    await second.start()
    clock.t += 60
    await run(second, request("uncordon", undo=True))
    assert not cordoned(apiserver)
    assert CLAIM not in annotations(apiserver)
    assert last(stage=second)["outcome"] == "success"


async def test_recordon_releases_the_claim_of_every_rule(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Two rules hold our cordon; the admin takes it over. The first rule's undo releases the
    whole claim (the cordon is not ours any more) and the other rule may not cordon again
    until it resolves."""
    apiserver.create(node(NODE))
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("cordon", rule="disk"), request("cordon", rule="kubelet-down"))
    assert CLAIM in annotations(apiserver)
    kubectl_uncordon(apiserver)
    kubectl_cordon(apiserver)
    clock.t += 60
    await run(stage, request("uncordon", rule="disk", undo=True))
    assert cordoned(apiserver)
    assert CLAIM not in annotations(apiserver)
    assert "kubelet-down" in annotations(apiserver)[OVERRIDE]
    # The admin finishes maintenance and uncordons: kubelet-down does not cordon again.
    kubectl_uncordon(apiserver)
    clock.t += 3600
    await run(stage, request("cordon", rule="kubelet-down"))
    assert not cordoned(apiserver)
    assert last(stage)["reason"] == "admin_override"


async def test_admin_recordon_mid_drain_stops_the_drain(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """The admin takes the cordon over in the middle of a drain (uncordon, cordon): the drain
    stops, no more pods are evicted, and the admin's cordon stays."""
    apiserver.create(node(NODE))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pdb("web", "shop", 1, app="web"))
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("drain", rule="node-broken"))
    assert len(stage.ledger.pending) == 1  # web-a is held by its budget
    kubectl_uncordon(apiserver)
    kubectl_cordon(apiserver)
    apiserver.patch("Pod", "shop", "web-b",
                    {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                    subresource="status")
    for _ in range(2):
        clock.t += 60
        await run(stage)
    assert stage.ledger.pending == {}
    assert (last(stage)["decision"], last(stage)["reason"]) == ("denied", "admin_override")
    assert apiserver.get("Pod", "shop", "web-a") is not None
    await run(stage, request("uncordon", rule="node-broken", undo=True))
    assert cordoned(apiserver)

# ---- taints: the same rule for nodemedic.io/ taints ------------------------------------------

TAINT = {"key": "nodemedic.io/disk-pressure", "effect": "NoSchedule"}


def node_taints(server: ApiServer) -> list[tuple[str, str, str]]:
    return [(t["key"], t.get("value", ""), t["effect"])
            for t in current(server)["spec"].get("taints") or []]


def kubectl_taint(server: ApiServer, value: str | None) -> None:
    """`kubectl taint node N nodemedic.io/disk-pressure=VALUE:NoSchedule` (None: the `-` form
    that removes it). kubectl sends the node's whole new taint list."""
    keep = [t for t in current(server)["spec"].get("taints") or []
            if (t["key"], t["effect"]) != (TAINT["key"], TAINT["effect"])]
    if value is not None:
        keep.append({**TAINT, "value": value})
    server.patch("Node", "", NODE, {"spec": {"taints": keep}},
                 "application/strategic-merge-patch+json", manager="kubectl-taint")


async def test_taint_untouched_is_undone(apiserver: ApiServer, kube_api: Any) -> None:
    apiserver.create(node(NODE))
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("taint", TAINT, rule="disk"))
    assert node_taints(apiserver) == [(TAINT["key"], "", "NoSchedule")]
    await run(stage, request("untaint", {"key": TAINT["key"]}, rule="disk", undo=True))
    assert node_taints(apiserver) == []
    assert "nodemedic.io/tainted-by" not in annotations(apiserver)


async def test_admin_removed_taint_is_not_added_again(apiserver: ApiServer, kube_api: Any) -> None:
    """The admin removes our taint: the rule does not put it back until it resolves."""
    apiserver.create(node(NODE))
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("taint", TAINT, rule="disk"))
    kubectl_taint(apiserver, None)
    clock.t += 3600
    await run(stage, request("taint", TAINT, rule="disk"))
    assert node_taints(apiserver) == []
    assert (last(stage)["outcome"], last(stage)["details"]) == ("skipped",
                                                                 {"reason": "admin_override"})
    # The rule resolves; a new episode may taint again.
    await run(stage, request("untaint", {"key": TAINT["key"]}, rule="disk", undo=True))
    clock.t += 3600
    await run(stage, request("taint", TAINT, rule="disk"))
    assert node_taints(apiserver) == [(TAINT["key"], "", "NoSchedule")]


async def test_admin_replaced_taint_survives_the_undo_across_a_restart(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """The admin re-adds a taint with our key (another value) for maintenance while the agent is
    down: the restarted agent's untaint leaves it and releases the claim."""
    apiserver.create(node(NODE))
    clock = Clock()
    first = new_stage(kube_api, clock)
    await first.start()
    await run(first, request("taint", TAINT, rule="disk"))
    del first
    kubectl_taint(apiserver, None)
    kubectl_taint(apiserver, "maintenance")
    second = new_stage(kube_api, clock)
    await second.start()
    await run(second, request("untaint", {"key": TAINT["key"]}, rule="disk", undo=True))
    assert node_taints(apiserver) == [(TAINT["key"], "maintenance", "NoSchedule")]
    assert "nodemedic.io/tainted-by" not in annotations(apiserver)
    assert last(second)["outcome"] == "skipped"


async def test_admin_taint_with_our_key_is_never_claimed_or_removed(
    apiserver: ApiServer, kube_api: Any
) -> None:
    apiserver.create(node(NODE))
    kubectl_taint(apiserver, "by-hand")
    clock = Clock()
    stage = new_stage(kube_api, clock)
    await run(stage, request("taint", TAINT, rule="disk"))
    assert last(stage)["outcome"] == "noop"
    await run(stage, request("untaint", {"key": TAINT["key"]}, rule="disk", undo=True))
    assert node_taints(apiserver) == [(TAINT["key"], "by-hand", "NoSchedule")]
