"""Fault injection against leader election: the API server goes down, answers 500s on every
Lease request, or slows to more than the renew deadline. A leader that cannot renew stops
leading before anyone else could take over (no split brain), nobody leads on data it cannot
read, and exactly one agent leads again once the API is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from agent.peers.leader import ElectionConfig, LeaderElector
from nodemedic_sim.apiserver import ApiServer

LEASE, DEADLINE, RETRY = 1.5, 1.0, 0.2


@pytest_asyncio.fixture
async def electors(apiserver: ApiServer) -> AsyncIterator[list[LeaderElector]]:
    """Three contenders, each with its own client (as three agents would have), running."""
    apis, out = [], []
    for i in range(3):
        api = client.ApiClient(client.Configuration(host=apiserver.url))
        apis.append(api)
        out.append(LeaderElector(api, ElectionConfig(
            namespace="kube-system", identity=f"agent-{i}", lease_duration=LEASE,
            renew_deadline=DEADLINE, retry_period=RETRY)))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop)) for e in out]
    try:
        yield out
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for api in apis:
            await api.close()


def leaders(es: list[LeaderElector]) -> list[str]:
    return [e.cfg.identity for e in es if e.is_leader]


async def watch(es: list[LeaderElector], seconds: float) -> list[list[str]]:
    """Who leads, sampled every 20 ms for ``seconds``."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(leaders(es))
        await asyncio.sleep(0.02)
    return seen


async def one_leader_within(es: list[LeaderElector], seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = leaders(es)
        if len(now) == 1:
            return now[0]
        assert len(now) < 2, now
        await asyncio.sleep(0.02)
    pytest.fail(f"no single leader within {seconds:g}s")


# Recovery bound: one lease duration for the old record to expire, plus two retry periods.
RECOVERY = LEASE + 2 * RETRY + 1.0


@pytest.mark.slow
async def test_api_down_then_back(apiserver: ApiServer, electors: list[LeaderElector]) -> None:
    """API down: the leader stops leading within the renew deadline and nobody leads while the
    API is gone; back up: exactly one leads within a lease duration plus two retries."""
    await one_leader_within(electors, RECOVERY)
    await apiserver.stop()
    seen = await watch(electors, DEADLINE + RETRY + 0.3)
    assert all(len(s) <= 1 for s in seen)
    assert seen[-1] == [], "a leader kept leading without being able to renew"
    assert all(s == [] for s in await watch(electors, LEASE))
    await apiserver.start()
    await one_leader_within(electors, RECOVERY)
    assert all(len(s) <= 1 for s in await watch(electors, 1.0))


@pytest.mark.slow
async def test_lease_500s_and_slow_renewals(
    apiserver: ApiServer, electors: list[LeaderElector]
) -> None:
    """Every Lease request failing with 500 for a while, then each taking longer than the
    renew deadline: never two leaders, no leader while renewals fail, one leader after."""
    await one_leader_within(electors, RECOVERY)
    # Every request: only Leases are in play here. (resource="leases" would never match: the
    # server names it "leases.coordination.k8s.io", unlike its docstring says.)
    apiserver.faults.fail(10_000, 500)
    seen = await watch(electors, DEADLINE + RETRY + 0.3)
    assert all(len(s) <= 1 for s in seen) and seen[-1] == []
    apiserver.faults.clear()
    await one_leader_within(electors, RECOVERY)

    apiserver.faults.latency = DEADLINE + 0.5
    seen = await watch(electors, 2 * (DEADLINE + 0.5) + RETRY)
    assert all(len(s) <= 1 for s in seen)
    assert seen[-1] == [], "renewals slower than the deadline must not keep a leader"
    apiserver.faults.clear()
    await one_leader_within(electors, RECOVERY + DEADLINE + 0.5)
    assert all(len(s) <= 1 for s in await watch(electors, 1.0))
