"""Leader election over the in-memory API server: one leader, hand-over, no overlap under faults."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from agent.peers.leader import ELECTION_ERRORS, ElectionConfig, LeaderElector
from nodemedic_sim.apiserver import ApiServer

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


LEASES = "leases.coordination.k8s.io"  # the server's resource name; a bare "leases" never matches
# A takeover waits for the Lease record to stay unchanged for its leaseDurationSeconds (1.5 s is
# written as 2), then for the PUTs to get through the injected 409s (each costs the follower one
# retry period plus two slowed requests). This bounds liveness only, generously, on a busy box.
TAKEOVER_BOUND = 8.0
# Why the storms are phased and not armed on a timer: fail(n) arms the *next* n matching PUTs,
# and while the followers legitimately wait out a dead leader's lease nobody PUTs at all, so 409s
# armed every 0.6 s piled up. Each phase therefore waits for its 409s to be served.
# Why the leader's 409s are aimed at its client: right after a takeover the losing follower's PUT
# can still be in flight; untargeted, it consumed one of the leader's 409s and the leader never
# saw both (a CI run failed exactly so). Followers' takeover PUTs meet untargeted 409s.


async def test_never_two_leaders_under_conflicts_and_latency(apiserver: ApiServer) -> None:
    """Three contenders with injected 409s and latency never lead at the same moment."""
    from kubernetes_asyncio import client

    apis = [client.ApiClient(client.Configuration(host=apiserver.url)) for _ in range(3)]
    for i, api in enumerate(apis):
        api.user_agent = f"agent-{i}"  # the server's fault filter keys on its first word
    electors = [elector(api, f"agent-{i}") for i, api in enumerate(apis)]
    stop = asyncio.Event()
    overlaps: list[list[str]] = []
    by_id = {e.cfg.identity: e for e in electors}

    def leading() -> list[str]:
        return [e.cfg.identity for e in electors if e.is_leader]

    async def watchdog() -> None:
        while not stop.is_set():
            now = leading()
            if len(now) > 1:
                overlaps.append(now)
            await asyncio.sleep(0.01)

    async def until(cond: Callable[[], bool], what: str) -> None:
        # Polled, not timed: a takeover legitimately waits out the lease and the 409 storm.
        end = asyncio.get_running_loop().time() + TAKEOVER_BOUND
        while not cond():
            if asyncio.get_running_loop().time() > end:
                raise AssertionError(f"{what} within {TAKEOVER_BOUND}s")
            await asyncio.sleep(0.02)

    async def live_leader(dead: set[str]) -> str:
        await until(lambda: any(i not in dead for i in leading()), "no live leader")
        return next(i for i in leading() if i not in dead)

    def conflicts(ident: str) -> float:
        # nodemedic_leader_election_errors_total{kind="conflict"} as the agent exports it.
        fam = next(f for f in by_id[ident].families() if f.spec is ELECTION_ERRORS)
        return fam.get(kind="conflict") or 0.0

    def got_conflicts(ident: str, n: float) -> bool:
        return conflicts(ident) >= n

    tasks = {e.cfg.identity: asyncio.create_task(e.run(stop)) for e in electors}
    guard = asyncio.create_task(watchdog())
    dead: set[str] = set()
    try:
        for latency in (0.05, 0.3):
            apiserver.faults.latency = latency
            leader = await live_leader(dead)
            # 409s on the leader's renewals. A follower may only take over once the record stayed
            # unchanged for a whole lease; either way, never two leaders at once.
            before = conflicts(leader)
            apiserver.faults.fail(2, 409, verb="update", resource=LEASES, client=leader)
            await until(partial(got_conflicts, leader, before + 2),
                        "the leader never got the armed 409s")
            # Whoever leads now dies without releasing; the followers' takeover PUTs meet 409s.
            leader = await live_leader(dead)
            tasks[leader].cancel()
            dead.add(leader)
            apiserver.faults.fail(3, 409, verb="update", resource=LEASES)
            await live_leader(dead)
            # The new leader's PUT got past the fault filter, so every armed 409 was served.
            assert apiserver.faults.pending() == 0, "the 409s armed for the takeover never fired"
        await live_leader(dead)
    finally:
        stop.set()
        apiserver.faults.clear()
        for t in (*tasks.values(), guard):
            t.cancel()
        await asyncio.gather(*tasks.values(), guard, return_exceptions=True)
        for api in apis:
            await api.close()
    assert overlaps == [], "two agents led at the same moment"
