"""Probe peer agents: GET <agent-url>/healthz with a short timeout: is that node reachable?

Called by agent.peers.stage (the leader probes every suspect node; followers probe the targets the
leader assigned them) which publishes the results through agent.peers.heartbeat. The transport is
pluggable so the demo and the scenario tests can simulate partitions between particular nodes
(``set_transport(node, transport)``) without touching the kernel's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp


class Transport(Protocol):
    """How one node reaches another's agent; True when its /healthz answered at all.

    Any HTTP answer (even 503 from an agent whose ticks stall) proves the node is running, which
    is all the failure detector asks; whether the agent is *healthy* is that node's own business.
    """

    async def healthz(self, url: str, time_limit: float) -> bool: ...

    async def close(self) -> None: ...


class Healthz:
    """GET <agent-url>/healthz over one lazily opened aiohttp session, no redirects, no retries
    (a retry would hide a flaky peer). Shared by the failure detector's probes and the clock
    exchanges of agent.peers.clockskew, which differ only in connection reuse."""

    def __init__(self, *, limit: int, keepalive: bool) -> None:
        self.limit, self.keepalive = limit, keepalive
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def get(self, url: str, time_limit: float) -> AsyncIterator[aiohttp.ClientResponse]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=self.limit, force_close=not self.keepalive))
        async with self._session.get(
            url.rstrip("/") + "/healthz", timeout=aiohttp.ClientTimeout(total=time_limit),
            allow_redirects=False,
        ) as resp:
            yield resp

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpTransport:
    """The real thing. A fresh connection per probe: a kept-alive one could outlive the very
    network change the probe is there to notice."""

    def __init__(self) -> None:
        self._http = Healthz(limit=64, keepalive=False)

    async def healthz(self, url: str, time_limit: float) -> bool:
        try:
            async with self._http.get(url, time_limit) as resp:
                return resp.status > 0
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self._http.close()


# Per-node transport overrides, set by the demo and tests before the agents start.
_OVERRIDES: dict[str, Transport] = {}


def set_transport(node: str, transport: Transport | None) -> None:
    """Make the agent of ``node`` probe through ``transport`` (None restores HTTP)."""
    if transport is None:
        _OVERRIDES.pop(node, None)
    else:
        _OVERRIDES[node] = transport


def transport_for(node: str) -> Transport:
    return _OVERRIDES.get(node) or HttpTransport()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe from this node: ``seq`` increases with every probe of the same target."""

    ok: bool
    at: float
    seq: int
    last_ok: float | None


class Prober:
    """Probes targets concurrently; remembers per target the last success and a sequence."""


    def __init__(
        self, node: str, transport: Transport, timeout: float = 1.0,
        clock: Callable[[], float] = time.time, concurrency: int = 16,
    ) -> None:
        self.node = node
        self.transport = transport
        self.timeout = timeout
        self.clock = clock
        self.results: dict[str, ProbeResult] = {}
        self.probes = 0
        self.failures = 0
        self._sem = asyncio.Semaphore(concurrency)

    async def probe(self, target: str, url: str) -> ProbeResult:
        async with self._sem:
            try:
                ok = await asyncio.wait_for(
                    self.transport.healthz(url, self.timeout), self.timeout + 0.5
                )
            except TimeoutError:
                ok = False
        now = self.clock()
        prev = self.results.get(target)
        res = ProbeResult(
            ok, now, (prev.seq + 1) if prev else 1, now if ok else (prev.last_ok if prev else None)
        )
        self.results[target] = res
        self.probes += 1
        self.failures += 0 if ok else 1
        return res

    async def probe_many(self, targets: Mapping[str, str]) -> dict[str, ProbeResult]:
        """Probe every (target -> agent URL) at once; forget targets no longer asked for."""
        names = list(targets)
        results = await asyncio.gather(*(self.probe(t, targets[t]) for t in names))
        for gone in [t for t in self.results if t not in targets]:
            del self.results[gone]
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await self.transport.close()
