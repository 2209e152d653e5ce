"""Fault injection against remediation: an API server answering 500s and 409s during a drain,
the agent SIGKILLed at every step of a drain, and wall-clock jumps under `for:` windows and
cooldowns. Nothing is acted on twice, nothing is lost, every decision ends up in the node's
Events and state annotation."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from stress_agent import short_budget
from stress_k8s import (
    KUBELET_UP,
    NODE,
    Clock,
    ScriptedEngine,
    node,
    pdb,
    pod,
    recording_systemctl,
    request,
    settings,
    snapshot,
)

from agent.rules.engine import RuleEngine
from agent.rules.loader import catalogue_from_specs, parse_rules_text
from agent.runtime.remediation import STATE_ANNOTATION, RemediationStage
from agent.structs.metrics import Family
from agent.structs.snapshot import CollectorStatus, Snapshot
from nodemedic_sim.apiserver import ApiServer

CHILD = Path(__file__).resolve().parent / "stress_drain_child.py"


def on_node(server: ApiServer, name: str = NODE) -> set[str]:
    return {p["metadata"]["name"] for p in server.list("Pod") if p["spec"].get("nodeName") == name}


def events(server: ApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in server.list("Event") if e.get("reason") == reason]


def state(server: ApiServer) -> dict[str, Any]:
    n = server.get("Node", "", NODE)
    assert n is not None
    return json.loads(n["metadata"]["annotations"][STATE_ANNOTATION])  # type: ignore[no-any-return]


async def _drain_under_faults(apiserver: ApiServer, kube_api: Any) -> RemediationStage:
    """Drain NODE (6 pods) tick by tick with whatever faults the caller armed."""
    apiserver.create(node(NODE))
    for i in range(6):
        apiserver.create(pod(f"web-{i}"))
    apiserver.create(pod("other", on="node-b"))
    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock)
    await stage.start()
    engine.queue = [request("drain", {"timeout": 3600.0, "grace_period_cap": "1h"},
                            rule="node-broken")]
    for _ in range(30):
        await stage.on_snapshot(snapshot())
        clock.t += 60
        if not stage.ledger.pending and not on_node(apiserver):
            break
    await stage.on_snapshot(snapshot())  # one more pass: the final state write
    return stage


async def test_drain_through_500s_and_409s(apiserver: ApiServer, kube_api: Any) -> None:
    """Evictions failing with 500, node reads with 500 and node writes with 409: the drain retries,
    finishes with every pod evicted and nothing else touched, and the finished drain is in the
    node's Event and state annotation."""
    apiserver.faults.fail(4, 500, verb="create", resource="pods/eviction")
    apiserver.faults.fail(3, 409, verb="update", resource="nodes")
    apiserver.faults.fail(2, 500, verb="get", resource="nodes")
    stage = await _drain_under_faults(apiserver, kube_api)
    assert not apiserver.faults._failures, "some armed faults never hit a request"
    assert on_node(apiserver) == set()
    assert apiserver.get("Pod", "shop", "other") is not None
    n = apiserver.get("Node", "", NODE)
    assert n is not None and n["spec"]["unschedulable"] is True
    assert stage.ledger.pending == {}
    assert any(e["message"].startswith("drain success") for e in events(apiserver,
                                                                         "NodemedicDrain"))
    assert state(apiserver)["p"] == []  # nothing left in progress in the durable state
    await stage.close()


async def test_a_failed_event_write_is_retried(apiserver: ApiServer, kube_api: Any) -> None:
    """The Event API fails twice (the drain's start and finish Events): the drain's outcome
    still reaches the node's Events on a later tick."""
    apiserver.faults.fail(2, 500, verb="create", resource="events")
    stage = await _drain_under_faults(apiserver, kube_api)
    assert on_node(apiserver) == set()
    assert any(e["message"].startswith("drain success")
               for e in events(apiserver, "NodemedicDrain"))
    await stage.close()


async def _run_child(url: str, clock: float, kill_after: int | None,
                     until_done: bool = False) -> list[dict[str, Any]]:
    """Run the child agent; SIGKILL it a random few ms after tick ``kill_after`` (mid-tick
    as often as between ticks), or stop it once it reports nothing pending."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), url, str(clock),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    try:
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not raw:
                break
            if not raw.startswith(b"TICK "):
                continue  # the stage's log lines
            lines.append(json.loads(raw[5:]))
            if kill_after is not None and len(lines) >= kill_after:
                await asyncio.sleep(random.uniform(0, 0.03))
                break
            if until_done and lines[-1]["pending"] == 0 and len(lines) > 1:
                break
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    return lines


@pytest.mark.slow
async def test_sigkill_at_every_step_of_a_drain(apiserver: ApiServer) -> None:
    """An agent SIGKILLed after each tick of a PDB-paced drain (sometimes mid-tick) and
    restarted on the same API state resumes it: every pod is evicted exactly once (by UID, never
    a replacement), nothing elsewhere is touched, the drain finishes, and the finished drain is in
    the node's Events and state annotation."""
    random.seed(11)
    apiserver.create(node(NODE))
    apiserver.create(node("node-b"))
    pods = 4 if short_budget() else 8
    for i in range(pods):
        apiserver.create(pod(f"web-{i}", labels={"app": "web"}))
        apiserver.create(pod(f"spare-{i}", on="node-b", labels={"app": "web"}, ready=False))
    # Only as many evictions are allowed as spares are Ready: the test paces the drain.
    apiserver.create(pdb("web", "shop", pods, app="web"))
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in apiserver.list("Pod")}
    clock = 1_800_000_000.0
    for step in range(pods):
        apiserver.patch("Pod", "shop", f"spare-{step}", {"status": {"conditions": [
            {"type": "Ready", "status": "True"}]}}, subresource="status")
        # Replacement pods get the evicted pods' names on node-b: a resumed drain that evicted
        # by name instead of UID would hit them.
        for name in set(uids) - {p["metadata"]["name"] for p in apiserver.list("Pod")}:
            if name.startswith("web-"):
                apiserver.create(pod(name, on="node-b", labels={"app": "replacement"}))
        lines = await _run_child(apiserver.url, clock, kill_after=random.randint(1, 3))
        clock += 60 * (len(lines) + 1)
        assert lines, "the child agent did not tick"
    lines = await _run_child(apiserver.url, clock, kill_after=None, until_done=True)
    assert lines[-1]["pending"] == 0

    assert on_node(apiserver) == set()  # drained
    survivors = {p["metadata"]["name"]: p for p in apiserver.list("Pod")}
    for i in range(pods):
        assert survivors[f"spare-{i}"]["metadata"]["uid"] == uids[f"spare-{i}"]
        replacement = survivors.get(f"web-{i}")
        if replacement is not None:  # created on node-b after the original was evicted
            assert replacement["spec"]["nodeName"] == "node-b"
            assert replacement["metadata"]["uid"] != uids[f"web-{i}"]
    n = apiserver.get("Node", "", NODE)
    assert n is not None and n["spec"]["unschedulable"] is True
    drain_events = events(apiserver, "NodemedicDrain")
    assert any("drain success" in e["message"] for e in drain_events), drain_events
    st = state(apiserver)
    assert st["p"] == []
    assert "drain" in json.dumps(st["h"])  # the drain is in the durable history


# ---- clock jumps -------------------------------------------------------------------------------
RULE = """
rules:
  - name: kubelet-down
    description: kubelet down
    severity: critical
    runbook: docs/runbooks/KubeletDown.md
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    for: 5m
    actions:
      - type: event
        reason: KubeletDown
        message: "kubelet down on {node}"
"""


def engine() -> RuleEngine:
    rules, problems = parse_rules_text(RULE, "clock.yaml", catalogue_from_specs((KUBELET_UP,)))
    assert not problems, [str(p) for p in problems]
    return RuleEngine(rules, NODE)


def snap(wall: float, mono: float) -> Snapshot:
    fam: Family = KUBELET_UP.family()
    fam.add((), 0)
    return Snapshot(
        taken_at=wall, monotonic=mono, families=MappingProxyType({fam.name: fam}),
        collectors=MappingProxyType({"kubelet": CollectorStatus("kubelet", True, 0.1, None)}),
        owners=MappingProxyType({"nodemedic_kubelet_up": "kubelet"}),
    )




def test_wall_clock_jumping_forward_does_not_fire_for_windows_early() -> None:
    """The wall clock steps forward an hour 10 s into a 5-minute `for:`: nothing fires."""
    e = engine()
    wall, mono = 1_800_000_000.0, 1000.0
    assert e.evaluate(snap(wall, mono), wall) == []
    wall, mono = wall + 3600 + 10, mono + 10
    assert e.evaluate(snap(wall, mono), wall) == []


def test_wall_clock_jumping_back_does_not_delay_for_windows() -> None:
    """The wall clock steps back an hour during a 5-minute `for:`: it still fires after 5
    minutes of real time, not an hour later."""
    e = engine()
    wall, mono = 1_800_000_000.0, 1000.0
    e.evaluate(snap(wall, mono), wall)
    wall -= 3600
    fired = []
    for _ in range(31):  # 310 s of real time in 10 s ticks
        wall, mono = wall + 10, mono + 10
        fired += e.evaluate(snap(wall, mono), wall)
    assert [r.rule for r in fired] == ["kubelet-down"]


async def test_wall_clock_jumping_forward_does_not_end_a_cooldown(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A unit restart with a 30-minute cooldown, then the wall clock steps forward two hours
    10 s later: the rule may not restart it again yet."""
    apiserver.create(node(NODE))
    clock = Clock()
    engine_ = ScriptedEngine()
    systemctl, _log = recording_systemctl(tmp_path)
    stage = RemediationStage(settings(), kube_api, engine_, clock=clock, systemctl=systemctl)
    engine_.queue = [request("restart-service", {"unit": "kubelet.service"},
                             cooldown_seconds=1800)]
    await stage.on_snapshot(snapshot())
    clock.t += 7200 + 10  # NTP step; only 10 s really passed
    engine_.queue = [request("restart-service", {"unit": "kubelet.service"},
                             cooldown_seconds=1800)]
    await stage.on_snapshot(snapshot())
    last = stage.status()["remediation"]["recent_decisions"][-1]
    assert last["reason"] == "cooldown"
