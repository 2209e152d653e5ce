"""Peer clock skew over real HTTP: in-process agent web servers whose clocks are shifted, real
heartbeat Leases on the in-memory API server, and the peerclock collector's metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.collectors.base import CollectorContext
from agent.collectors.peerclock import PeerClockCollector
from agent.exporter.self_metrics import SelfMetrics
from agent.exporter.server import build_app, start_server
from agent.peers.clockskew import ClockSkew
from agent.peers.heartbeat import Heartbeat
from agent.structs.metrics import Family
from tests.k8s_helpers import metric, settings

NS = "kube-system"
DRIFT = 2.0  # seconds node-c's clock is ahead


class _Agent:
    def exposition(self) -> None:
        return None

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {}


def shifted(seconds: float) -> Callable[[], int]:
    return lambda: time.time_ns() + int(seconds * 1e9)


CLOCKS = {"node-a": shifted(0.0), "node-b": shifted(0.0), "node-c": shifted(DRIFT)}


@pytest_asyncio.fixture
async def fleet(kube_api: Any) -> AsyncIterator[dict[str, str]]:
    """Three agents' /healthz (node-c's clock 2 s ahead) and one old agent's that sends no
    timestamps, each advertised in its heartbeat Lease."""
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    for node, clock in CLOCKS.items():
        runner, port = await start_server(
            build_app(_Agent(), SelfMetrics(CollectorRegistry()), wall_ns=clock), "127.0.0.1", 0)
        runners.append(runner)
        urls[node] = f"http://127.0.0.1:{port}"

    async def old_healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    old = web.Application()
    old.router.add_get("/healthz", old_healthz)
    runner, port = await start_server(old, "127.0.0.1", 0)
    runners.append(runner)
    urls["node-old"] = f"http://127.0.0.1:{port}"
    for node, url in urls.items():
        assert await Heartbeat(kube_api, NS, node, url).beat({}, force=True)
    try:
        yield urls
    finally:
        for r in runners:
            await r.cleanup()


def skew_of(api: Any, node: str) -> ClockSkew:
    return ClockSkew(api, NS, node, peers=5, window=4, interval=1.0, wall_ns=CLOCKS[node])


async def measure(api: Any, node: str, rounds: int = 4) -> ClockSkew:
    skew = skew_of(api, node)
    await skew.refresh_peers(force=True)
    for _ in range(rounds):
        await skew.probe_once()
    await skew.close()
    return skew


async def test_offsets_have_the_sign_and_size_of_the_shift(kube_api: Any,
                                                          fleet: dict[str, str]) -> None:
    a = await measure(kube_api, "node-a")
    assert set(a.urls) == {"node-b", "node-c", "node-old"}
    peers = a.peers()
    assert set(peers) == {"node-b", "node-c"}  # the old agent is ignored, not "in sync"
    assert a.results["no_timestamps"] == 4
    for peer, true_offset in (("node-b", 0.0), ("node-c", DRIFT)):
        got = peers[peer]
        assert 0 <= got.delay < 0.5
        assert abs(got.offset - true_offset) <= got.delay / 2 + 1e-6, (peer, got)
    c = await measure(kube_api, "node-c")
    for peer in ("node-a", "node-b"):
        got = c.peers()[peer]
        assert abs(got.offset + DRIFT) <= got.delay / 2 + 1e-6, (peer, got)


def _value(fams: list[Family], name: str) -> float | None:
    return metric(fams, name)


async def test_only_the_drifted_node_is_flagged(kube_api: Any, fleet: dict[str, str]) -> None:
    flagged: dict[str, float | None] = {}
    offsets: dict[str, float | None] = {}
    for node in CLOCKS:
        ctx = CollectorContext(settings(node_name=node), api=kube_api)
        collector = PeerClockCollector(ctx)
        collector.skew = await measure(kube_api, node)
        fams = await collector.collect()
        flagged[node] = _value(fams, "nodemedic_clock_majority_drifted")
        offsets[node] = _value(fams, "nodemedic_clock_majority_offset_seconds")
        assert _value(fams, "nodemedic_clock_majority_peers") == 2
        error = _value(fams, "nodemedic_clock_majority_error_seconds")
        assert error is not None
        expected = DRIFT if node == "node-c" else 0.0
        assert offsets[node] == pytest.approx(expected, abs=error + 1e-6)
        assert metric(fams, "nodemedic_peer_clock_exchanges_total", result="ok") == 8
        assert metric(fams, "nodemedic_peer_clock_exchanges_total", result="no_timestamps") == 4
    assert flagged == {"node-a": 0.0, "node-b": 0.0, "node-c": 1.0}


async def test_one_peer_is_no_majority(kube_api: Any, fleet: dict[str, str]) -> None:
    skew = skew_of(kube_api, "node-a")
    await skew.refresh_peers(force=True)
    skew.urls = {"node-b": fleet["node-b"], "node-old": fleet["node-old"]}
    await skew.probe_once()
    await skew.close()
    ctx = CollectorContext(settings(node_name="node-a"), api=kube_api)
    collector = PeerClockCollector(ctx)
    collector.skew = skew
    fams = await collector.collect()
    assert metric(fams, "nodemedic_peer_clock_offset_seconds", peer="node-b") is not None
    assert _value(fams, "nodemedic_clock_majority_drifted") is None
    assert _value(fams, "nodemedic_clock_majority_offset_seconds") is None


async def test_the_collector_finds_its_peers_and_measures_on_its_own(
    kube_api: Any, fleet: dict[str, str]
) -> None:
    """start() wiring: peers from the heartbeat Leases, the first round at once (real clocks)."""
    ctx = CollectorContext(settings(node_name="node-a", peerclock_interval=1.0), api=kube_api)
    collector = PeerClockCollector(ctx)
    await collector.start()
    try:
        for _ in range(50):
            fams = await collector.collect()
            if metric(fams, "nodemedic_clock_majority_peers") == 2:
                break
            await asyncio.sleep(0.1)
        assert metric(fams, "nodemedic_clock_majority_peers") == 2
        assert metric(fams, "nodemedic_peer_clock_offset_seconds", peer="node-c") == \
            pytest.approx(DRIFT, abs=0.5)
        assert collector.status()["probed"] == ["node-b", "node-c", "node-old"]
    finally:
        await collector.close()


async def test_a_clock_far_ahead_still_finds_its_peers_and_is_flagged(
        kube_api: Any, fleet: dict[str, str]) -> None:
    """A node whose clock runs an hour ahead sees its peers' heartbeat Leases as long expired
    by its own wall clock; it must still measure them (staleness is judged by whether a Lease
    changes, on its monotonic clock) and flag itself, not go silent."""
    ahead = shifted(3600.0)
    skew = ClockSkew(kube_api, NS, "node-fast", peers=5, window=4, interval=1.0, wall_ns=ahead)
    await skew.refresh_peers(force=True)
    assert {"node-a", "node-b", "node-c"} <= set(skew.urls), skew.urls
    for _ in range(4):
        await skew.probe_once()
    await skew.close()
    got = skew.majority()
    assert got is not None, "no majority: the fast node lost its peers"
    offset, _, _ = got
    assert 3590 < offset < 3610, offset


async def test_a_clock_step_shows_at_the_next_exchange(kube_api: Any,
                                                       fleet: dict[str, str]) -> None:
    """node-a's clock steps 3 s ahead (chrony stepping, `date -s`) after a full window of good
    samples: the next exchange replaces them, instead of the window's old least-delay sample
    hiding the step for up to max_age (16 intervals)."""
    step = [0.0]
    skew = ClockSkew(kube_api, NS, "node-a", peers=5, window=4, interval=1.0,
                     wall_ns=lambda: time.time_ns() + int(step[0] * 1e9))
    await skew.refresh_peers(force=True)
    for _ in range(4):
        await skew.probe_once()
    assert abs(skew.peers()["node-b"].offset) < 0.5 and skew.steps == 0
    step[0] = 3.0
    await skew.probe_once()
    await skew.close()
    peers = skew.peers()
    assert abs(peers["node-b"].offset + 3.0) <= peers["node-b"].delay / 2 + 1e-6
    assert abs(peers["node-c"].offset - (DRIFT - 3.0)) <= peers["node-c"].delay / 2 + 1e-6
    assert peers["node-b"].samples == 1 and skew.steps == 2
