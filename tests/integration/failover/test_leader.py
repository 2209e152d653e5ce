"""Leader election over the in-memory API server: one leader, hand-over, no overlap under faults."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.peers.leader import ElectionConfig, LeaderElector
from agent.testing.apiserver import ApiServer

LEASE_DURATION = 1.5


def elector(api: Any, ident: str) -> LeaderElector:
    return LeaderElector(api, ElectionConfig(
        namespace="kube-system", identity=ident, lease_duration=LEASE_DURATION,
        renew_deadline=1.0, retry_period=0.2,
    ))


async def test_first_contender_leads_and_second_follows(kube_api: Any) -> None:
    """Of two agents trying once each, exactly one leads and the other sees it as holder."""
    a, b = elector(kube_api, "a"), elector(kube_api, "b")
    assert await a.try_once()
    assert not await b.try_once()
    assert b.holder == "a"


async def test_release_hands_over_without_waiting(kube_api: Any) -> None:
    """A released Lease is taken by a follower at once, not after the lease duration."""
    a, b = elector(kube_api, "a"), elector(kube_api, "b")
    assert await a.try_once()
    assert not await b.try_once()
    await a.release()
    assert not a.is_leader
    assert await b.try_once()


async def test_follower_takes_over_after_leader_stops_renewing(kube_api: Any) -> None:
    """When the leader dies silently, a follower leads after the lease duration, not before."""
    a, b = elector(kube_api, "a"), elector(kube_api, "b")
    assert await a.try_once()
    assert not await b.try_once()
    await asyncio.sleep(0.5)
    assert not await b.try_once(), "took over while the lease was still valid"
    await asyncio.sleep(LEASE_DURATION + 0.6)  # the record says 2 s (whole seconds)
    assert not a.is_leader, "a silent leader must step down after renew_deadline"
    assert await b.try_once()


async def test_never_two_leaders_under_conflicts_and_latency(apiserver: ApiServer) -> None:
    """Three contenders with injected 409s and latency never lead at the same moment."""
    from kubernetes_asyncio import client

    apis = []
    for _ in range(3):
        cfg = client.Configuration(host=apiserver.url)
        apis.append(client.ApiClient(cfg))
    electors = [elector(api, f"agent-{i}") for i, api in enumerate(apis)]
    stop = asyncio.Event()
    overlaps: list[list[str]] = []
    leaders_seen: set[str] = set()

    async def watchdog() -> None:
        while not stop.is_set():
            leading = [e.cfg.identity for e in electors if e.is_leader]
            leaders_seen.update(leading)
            if len(leading) > 1:
                overlaps.append(leading)
            await asyncio.sleep(0.01)

    async def chaos() -> None:
        # Rounds of conflicts, slow requests, and the current leader vanishing.
        for i in range(6):
            apiserver.faults.fail(3, 409, verb="update", resource="leases")
            apiserver.faults.latency = 0.3 if i % 2 else 0.05
            await asyncio.sleep(0.6)
            for e in electors:
                if e.is_leader and i % 2 == 0:
                    tasks[e.cfg.identity].cancel()  # dies without releasing
                    break
        apiserver.faults.clear()
        stop.set()

    tasks = {e.cfg.identity: asyncio.create_task(e.run(stop)) for e in electors}
    try:
        await asyncio.gather(watchdog(), chaos())
    finally:
        for t in tasks.values():
            t.cancel()
        for api in apis:
            await api.close()
    assert overlaps == []
    assert len(leaders_seen) >= 2, "the test never exercised a takeover"
