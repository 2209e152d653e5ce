"""Fault injection against a running agent: a hanging kubelet, cgroup directories vanishing
mid-tick, and an API server that goes away, slows down, answers 500s or cuts its watches. In
every case the agent keeps ticking and answering /healthz, reports the fault instead of stale
data, and recovers within the stated time once the fault ends."""

from __future__ import annotations

import asyncio
import importlib
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from stress_agent import healthz, running_agent, short_budget

from agent.collectors.base import CollectorContext
from agent.collectors.cgroup import CgroupCollector
from agent.collectors.node import NodeCollector
from agent.runtime.daemon import Agent
from agent.settings import settings_for_tests
from nodemedic_sim.apiserver import ApiServer
from nodemedic_sim.fake_kubelet import FakeKubelet

REPO = Path(__file__).resolve().parents[2]
KUBELET_FIXTURES = REPO / "tests" / "fixtures" / "kubelet"
NODE = "stress-node"


async def samples(agent: Agent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the agent's latest /metrics exposition, keyed by (name, labels)."""
    exp = await agent.exposition()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    if exp is None:  # before the first tick
        return out
    for fam in text_string_to_metric_families(exp.text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def value(agent: Agent, name: str, **labels: str) -> float | None:
    return (await samples(agent)).get((name, tuple(sorted(labels.items()))))


async def equals(got: Awaitable[float | None], want: float) -> bool:
    return await got == want


async def until(cond: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``cond`` every 0.1 s; fail naming ``what`` unless it holds within ``within`` s."""
    start = time.monotonic()
    while not await cond():
        if time.monotonic() - start > within:
            pytest.fail(f"{what}: not within {within:g}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def probe_while(agent: Agent, seconds: float) -> list[int]:
    """/healthz every 0.2 s for ``seconds``: what a liveness probe saw."""
    assert agent.port is not None
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(await healthz(agent.port))
        await asyncio.sleep(0.2)
    return seen


# ---- kubelet ---------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def kubelet() -> AsyncIterator[FakeKubelet]:
    fk = FakeKubelet(KUBELET_FIXTURES)
    await fk.start()
    try:
        yield fk
    finally:
        await fk.stop()


async def test_hanging_kubelet_is_reported_down_and_recovers(
    tmp_path: Path, kubelet: FakeKubelet
) -> None:
    """Every kubelet endpoint hangs: within a tick the agent exports kubelet_up 0 (not the last
    good 1), /healthz stays 200, and the first tick after the kubelet answers again (≤ 2
    intervals) exports kubelet_up 1."""
    async with running_agent(tmp_path, ("kubelet",), kubelet_url=kubelet.url) as agent:
        await until(lambda: equals(value(agent, "nodemedic_kubelet_up"), 1), 10,
                    "first good tick")
        kubelet.healthz_mode = "hang"
        for path in ("/pods", "/stats/summary", "/metrics"):
            kubelet.delays[path] = 3600
        await until(lambda: equals(value(agent, "nodemedic_kubelet_up"), 0), 3, "kubelet_up 0")
        assert set(await probe_while(agent, 2.5)) == {200}
        # Down is an observation, not a collector failure: rules see it on fresh data.
        assert await value(agent, "nodemedic_collector_success", collector="kubelet") == 1
        kubelet.healthz_mode = "ok"
        kubelet.delays.clear()
        await until(lambda: equals(value(agent, "nodemedic_kubelet_up"), 1), 2 * 1.0 + 1.5,
                    "kubelet_up back to 1")


# ---- cgroups vanishing -----------------------------------------------------------------------
def _churn(root: Path, stop: threading.Event, seed: int) -> Iterator[int]:
    """Yield once per round while deleting and re-creating pod cgroup directories."""
    rng = random.Random(seed)
    backup = root.parent / "backup"
    shutil.copytree(root, backup)
    pods = sorted(p.relative_to(root) for p in root.rglob("*-pod*.slice"))
    rounds = 0
    while not stop.is_set():
        victims = rng.sample(pods, max(1, len(pods) // 3))
        for rel in victims:
            shutil.rmtree(root / rel, ignore_errors=True)
        for rel in victims:
            if rng.random() < 0.5:  # some come back (restart), some stay gone (deleted)
                shutil.copytree(backup / rel, root / rel, dirs_exist_ok=True)
        rounds += 1
        yield rounds


async def test_cgroups_vanishing_mid_tick_never_fail_the_collector(tmp_path: Path) -> None:
    """Pod cgroup directories are deleted and re-created while the collector reads them: every
    collection succeeds and reports only pods that exist; nothing raises."""
    build_node = importlib.import_module("bench.synthetic_node").build_node

    root = tmp_path / "node" / "cgroup"
    build_node(root, pods=40 if short_budget() else 250, containers=2, layout="v2-systemd")
    settings = settings_for_tests(path_cgroupfs=root, node_name=NODE,
                                  kubelet_url="http://127.0.0.1:9",
                                  cgroup_min_interval=0.0)  # a real read every collect()
    collector = CgroupCollector(CollectorContext(settings))
    await collector.start()
    stop = threading.Event()
    rounds = [0]

    def churn() -> None:
        for n in _churn(root, stop, seed=3):
            rounds[0] = n

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        collections = 0
        while rounds[0] < (20 if short_budget() else 200) and collections < 2000:
            fams = await collector.collect()
            collections += 1
            assert any(f.name == "nodemedic_container_memory_usage_bytes" for f in fams)
    finally:
        stop.set()
        worker.join(10)
        await collector.close()
    assert collections > 0 and rounds[0] > 0


# ---- API server faults against the node collector ---------------------------------------------
def _node(ready: str = "True") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> float:
    """Reconnect backoff capped at 1 s (production: 30 s); returns the recovery bound."""
    monkeypatch.setattr(NodeCollector, "backoff_max", 1.0)
    monkeypatch.setattr(NodeCollector, "backoff_initial", 0.2)
    # Worst case: one jittered backoff (1.5 x max), a relist, and one tick (1 s).
    return 1.5 * 1.0 + 1.0 + 1.0 + 1.0


async def ready(agent: Agent) -> float | None:
    return await value(agent, "nodemedic_node_condition", condition="Ready", status="true")


@pytest.mark.slow
async def test_api_down_slow_500s_and_cut_watches(
    tmp_path: Path, apiserver: ApiServer, fast_backoff: float
) -> None:
    """The node collector never reports a stale Node: while the API server is down or failing
    its series are absent and collector_success is 0; /healthz stays 200; after each fault
    the Node's current state is exported again within the stated bound."""
    apiserver.create(_node())
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    async with running_agent(tmp_path, ("node",), kubeconfig=kubeconfig) as agent:
        await until(lambda: equals(ready(agent), 1), 10, "node watched")

        # 1. Watches cut: the change made while disconnected is picked up on reconnect.
        for _ in range(3):
            apiserver.drop_watches()
            apiserver.patch("Node", "", NODE, {"status": {"conditions": [
                {"type": "Ready", "status": "False"}]}}, subresource="status")
            await until(lambda: equals(ready(agent), 0), fast_backoff,
                        "Ready=False after cut watch")
            apiserver.patch("Node", "", NODE, {"status": {"conditions": [
                {"type": "Ready", "status": "True"}]}}, subresource="status")
            await until(lambda: equals(ready(agent), 1), fast_backoff, "Ready=True")

        # 2. Down: no stale Node, agent healthy, back within the bound after the restart.
        await apiserver.stop()
        await until(lambda: equals(value(agent, "nodemedic_collector_success",
                                         collector="node"), 0),
                    fast_backoff, "node collector failed while the API is down")
        assert await ready(agent) is None and await value(agent, "nodemedic_api_up") is None
        assert set(await probe_while(agent, 2.0 if short_budget() else 60.0)) == {200}
        apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": True}})
        await apiserver.start()
        await until(lambda: equals(value(agent, "nodemedic_node_unschedulable"), 1),
                    fast_backoff + 1.0, "node state after the API came back")

        # 3. 500s on every list and watch while the watch is re-established.
        apiserver.faults.fail(6, 500, verb="list")
        apiserver.faults.fail(6, 500, verb="watch")
        apiserver.drop_watches()
        apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": False}})
        await until(lambda: equals(value(agent, "nodemedic_node_unschedulable"), 0),
                    6 * fast_backoff, "node state after 500s")

        # 4. Slow API (1.5 s a request): ticks do not wait for it, /healthz stays 200.
        apiserver.faults.latency = 1.5
        apiserver.drop_watches()
        probes = await probe_while(agent, 3.0)
        assert set(probes) == {200}
        apiserver.faults.clear()
        apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": True}})
        await until(lambda: equals(value(agent, "nodemedic_node_unschedulable"), 1),
                    fast_backoff + 1.5, "node state after the slow period")
