"""Bounded everything: an OOM-kill storm on 500 containers (every counter jumps every tick) with
pods churning, against the rules engine alone (memory plateaus) and against a running agent
(the loop stays responsive, /healthz answers, the storm rule fires and is recorded)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import re
import threading
import tracemalloc
from pathlib import Path
from types import MappingProxyType

import pytest
from stress_agent import healthz, running_agent, short_budget

from agent.collectors.cgroup import OOM_KILLS
from agent.rules.engine import RuleEngine
from agent.rules.loader import RulesReloader
from agent.structs.snapshot import CollectorStatus, Snapshot
from nodemedic_sim.fake_kubelet import FakeKubelet, Override

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = 500
CHURN = 25  # pods replaced by new ones every tick


def storm(tick: int) -> Snapshot:
    """500 containers of 250 pods; CHURN pods are new each tick; every counter jumps by 5."""
    fam = OOM_KILLS.family()
    pods = CONTAINERS // 2
    every = pods // CHURN  # each pod is replaced every `every` ticks, staggered
    for i in range(pods):
        pod = f"app-{i}-g{(tick + i) // every}"
        for c in ("main", "sidecar"):
            fam.add(("shop", pod, f"uid-{pod}", c, "burstable"), 5.0 * tick)
    return Snapshot(
        taken_at=tick * 10.0, monotonic=tick * 10.0, families=MappingProxyType({fam.name: fam}),
        collectors=MappingProxyType({"cgroup": CollectorStatus("cgroup", True, 0.1, None)}),
        owners=MappingProxyType({fam.name: "cgroup"}),
    )


def test_oom_storm_with_pod_churn_keeps_engine_memory_flat() -> None:
    """The default rules under an OOM storm with 25 new pods a tick: after the 10-minute
    windows fill, the engine's memory stops growing (< 5% between the middle and the end of the
    run) and the storm rule fires for the pods."""
    engine = RuleEngine(RulesReloader(REPO / "rules").reload(), "stress-node")
    ticks = 180 if short_budget() else 1200
    fired: set[str] = set()
    tracemalloc.start()
    try:
        mid = 0
        for t in range(1, ticks + 1):
            for req in engine.evaluate(storm(t), t * 10.0):
                fired.add(req.rule)
            if t == ticks // 2:
                gc.collect()
                mid = tracemalloc.get_traced_memory()[0]
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert "container-oom-storm" in fired
    assert end <= mid * 1.05 + 256 * 1024, (mid, end)


def _bump_oom_kills(root: Path, stop: threading.Event, every: float) -> None:
    """Every ``every`` s add one OOM kill to every container's memory.events."""
    files = [p for p in root.rglob("memory.events") if p.parent.name.endswith(".scope")]
    pattern = re.compile(rb"^oom_kill (\d+)$", re.M)
    kills = 0
    while not stop.wait(every):
        kills += 1
        for f in files:
            try:
                data = f.read_bytes()
                f.write_bytes(pattern.sub(lambda m: b"oom_kill %d" % (int(m.group(1)) + 1), data)
                              if pattern.search(data) else data + b"oom_kill %d\n" % kills)
            except OSError:
                continue


@pytest.mark.slow
async def test_agent_stays_responsive_during_an_oom_storm(tmp_path: Path) -> None:
    """500 containers each OOM-killed twice a second (60,000 kills a minute) on a 250-pod node:
    every /healthz probe answers 200 within the probe timeout, ticks keep finishing, the
    container-oom-storm rule fires, and /status keeps a bounded list of recent decisions."""
    synthetic = importlib.import_module("bench.synthetic_node")
    root = tmp_path / "cgroup"
    refs = synthetic.build_node(root, pods=CONTAINERS // 2, containers=2, layout="v2-systemd")
    fk = FakeKubelet(REPO / "tests" / "fixtures" / "kubelet")
    fk.overrides["/pods"] = Override(200, json.dumps(synthetic.pods_json(refs)).encode(),
                                     "application/json")
    url = await fk.start()
    stop = threading.Event()
    bumper = threading.Thread(target=_bump_oom_kills, args=(root, stop, 0.5), daemon=True)
    try:
        async with running_agent(tmp_path, ("cgroup",), path_cgroupfs=root, kubelet_url=url,
                                 rules_dir=REPO / "rules", collector_timeout=1.9,
                                 collect_interval=2.0,
                                 cgroup_min_interval=0.0) as agent:  # every bump, every tick
            assert agent.port is not None
            while not agent.ready()[0]:
                await asyncio.sleep(0.1)
            bumper.start()
            probes: list[int] = []
            seconds = 8.0 if short_budget() else 120.0
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            first_tick = agent.status()["last_tick"]["at"]
            while loop.time() < end:
                probes.append(await healthz(agent.port))
                await asyncio.sleep(0.2)
            assert set(probes) == {200}, probes
            status = agent.status()
            assert status["last_tick"]["at"] != first_tick
            assert status["collectors"]["cgroup"]["ok"]
            decisions = status["remediation"]["recent_decisions"]
            assert 0 < len(decisions) <= 50
            assert any(d["rule"] == "container-oom-storm" for d in decisions)
    finally:
        stop.set()
        bumper.join(10)
        await fk.stop()
