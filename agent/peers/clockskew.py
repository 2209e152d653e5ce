"""Peer clock skew: this node's clock against its peers' with the four-timestamp NTP method.

Run by the ``peerclock`` collector (agent.collectors.peerclock) in its own task. Every
``--peerclock.interval`` this agent sends GET /healthz to up to ``--peerclock.peers`` peer agents
(chosen by rendezvous hashing among the heartbeat Leases of agent.peers.heartbeat, so every node
probes a stable, spread-out set) and times each exchange on the wall clock (time.time_ns):
t1 client send, t2 server receive, t3 server send, t4 client receive, where t2/t3 come from the
responder's RECEIVE_HEADER/TRANSMIT_HEADER (agent.exporter.server). Per exchange

    offset = ((t2 - t1) + (t3 - t4)) / 2    how far the peer's clock is ahead of ours
    delay  = (t4 - t1) - (t3 - t2)          network round trip; |error of offset| <= delay / 2

and per peer the sample of least delay among the last ``--peerclock.window`` is kept (queueing
only ever adds delay, so the fastest exchange is the most accurate). A clock that steps (chrony
correcting a drift, an admin's ``date -s``, on either side) makes the older samples false: each
new sample drops those whose interval ``offset ± delay/2`` does not overlap its own (both cannot
be true of the clocks as they are now), so a step shows at the next exchange instead of the
window's old least-delay sample hiding it for up to ``max_age``. A peer that answers without
the headers (an older agent) or with garbage gives no sample: it is ignored, never counted as
zero skew. This node's offset from the peer *majority* is the median of the clocks of itself and
its measured peers, relative to its own: one drifted node out of three or more is outvoted, and
it is that node (not its peers) that sees a large offset. Fewer than MIN_PEERS measured peers
give no verdict (missing data). Independent of chrony/timesyncd: it compares what the clocks say.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from agent.exporter.server import RECEIVE_HEADER, TRANSMIT_HEADER
from agent.kube import leases
from agent.kube.errors import KubeError
from agent.peers.cluster import reduce_heartbeat
from agent.peers.heartbeat import HEARTBEAT_LABEL
from agent.peers.prober import Healthz

log = structlog.get_logger("nodemedic.clockskew")

# Two measured peers and this node: three clocks, so one drifted clock is outvoted.
MIN_PEERS = 2
# The peer list (heartbeat Leases) is re-read this often; it changes when nodes come and go.
PEER_LIST_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed exchange, all four times in Unix nanoseconds."""

    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def offset(self) -> float:
        """Seconds the peer's clock is ahead of this node's (negative: behind)."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2e9

    @property
    def delay(self) -> float:
        """Round-trip network delay in seconds, the server's own time excluded."""
        return ((self.t4 - self.t1) - (self.t3 - self.t2)) / 1e9


def parse_sample(t1: int, t4: int, headers: Mapping[str, str]) -> Sample | None:
    """The sample of one answer, or None when it lacks usable t2/t3 (an old or broken peer)."""
    try:
        t2, t3 = int(headers[RECEIVE_HEADER]), int(headers[TRANSMIT_HEADER])
    except (KeyError, ValueError):
        return None
    sample = Sample(t1, t2, t3, t4)
    if t3 < t2 or t4 < t1 or sample.delay < 0:
        return None  # a clock stepped during the exchange: no information
    return sample


class ClockTransport(Protocol):
    """One timed exchange with the agent at ``url``: None when the answer had no usable t2/t3;
    raises (aiohttp.ClientError, OSError, TimeoutError) when there was no answer."""

    async def exchange(self, url: str, time_limit: float,
                       wall_ns: Callable[[], int]) -> Sample | None: ...

    async def close(self) -> None: ...


class ClockRefusedError(Exception):
    """The peer's /healthz refused us (401/403: web auth without --web.probe-address)."""


class HttpClockTransport:
    """GET <url>/healthz over one aiohttp session; any status carries the times."""

    def __init__(self) -> None:
        # Keep-alive: a reused connection keeps the TCP handshake out of the delay.
        self._http = Healthz(limit=16, keepalive=True)

    async def exchange(self, url: str, time_limit: float,
                       wall_ns: Callable[[], int]) -> Sample | None:
        t1 = wall_ns()
        async with self._http.get(url, time_limit) as resp:
            t4 = wall_ns()
            if resp.status in (401, 403):  # its web auth refused us: no times, not "too old"
                raise ClockRefusedError(f"HTTP {resp.status}")
            return parse_sample(t1, t4, resp.headers)

    async def close(self) -> None:
        await self._http.close()


# Slack on top of the two error bounds: rounding and the few microseconds a clock slews between
# two exchanges are not a step.
STEP_SLACK = 0.002


def consistent(old: Sample, new: Sample) -> bool:
    """Whether ``old`` can still describe the clocks: its offset interval (± delay/2, the bound
    on the error of an exchange) overlaps ``new``'s. When not, a clock moved in between."""
    return abs(old.offset - new.offset) <= (old.delay + new.delay) / 2 + STEP_SLACK


def choose_peers(me: str, peers: Sequence[str], k: int) -> list[str]:
    """``k`` of ``peers`` by rendezvous hashing on (me, peer): stable while the fleet changes,
    and different for every node, so no peer is probed by everyone."""
    def score(peer: str) -> bytes:
        return hashlib.sha256(f"{me}\0{peer}".encode()).digest()

    return sorted((p for p in peers if p != me), key=score)[:max(0, k)]


def majority_offset(peer_offsets: Sequence[float]) -> float | None:
    """Seconds this node's clock is ahead of the median clock of itself and its peers; None
    with fewer than MIN_PEERS peers (no majority to compare with)."""
    if len(peer_offsets) < MIN_PEERS:
        return None
    return -statistics.median([0.0, *peer_offsets])


@dataclass(frozen=True, slots=True)
class PeerClock:
    """The best sample of a peer's window."""

    offset: float
    delay: float
    samples: int


class ClockSkew:
    """Probes peers' clocks in a loop; ``peers()`` and ``majority()`` are the current view."""

    def __init__(
        self, api: Any, namespace: str, me: str, *, peers: int = 5, window: int = 8,
        interval: float = 30.0, timeout: float = 1.0,
        transport: ClockTransport | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.me = me
        self.k = peers
        self.window = max(1, window)
        self.interval = interval
        self.timeout = timeout
        self.transport: ClockTransport = transport or HttpClockTransport()
        self.wall_ns = wall_ns
        self.monotonic = monotonic
        self.urls: dict[str, str] = {}  # peer -> agent URL (from its heartbeat Lease)
        # peer -> (monotonic time taken, sample); samples older than max_age are not used.
        self.samples: dict[str, deque[tuple[float, Sample]]] = {}
        self.results: Counter[str] = Counter()  # ok, no_timestamps, refused, failed
        self.steps = 0  # new samples that contradicted older ones of the same peer
        self.last_error = ""
        self._listed_at: float | None = None
        # peer -> (its Lease's renewTime as last listed, our monotonic time it last changed)
        self._renewals: dict[str, tuple[str, float]] = {}

    async def refresh_peers(self, *, force: bool = False) -> None:
        """Re-read the heartbeat Leases when due (every PEER_LIST_SECONDS, every round while
        fewer than ``k`` peers are known, as at start); on API trouble keep the last list."""
        now = self.monotonic()
        fresh = self._listed_at is not None and now - self._listed_at < PEER_LIST_SECONDS
        if not force and fresh and len(self.urls) >= self.k:
            return
        try:
            items = await leases.list_leases(self.api, self.namespace, f"{HEARTBEAT_LABEL}=true")
        except KubeError as exc:
            self.last_error = f"cannot list heartbeat Leases: {exc}"
            return
        self._listed_at = now
        self.last_error = ""
        urls: dict[str, str] = {}
        seen: dict[str, tuple[str, float]] = {}
        for obj in items:
            try:
                node, url, _ = reduce_heartbeat(obj)
            except (KeyError, TypeError):
                continue
            # Stale = its renewTime has not changed for a lease duration of *our* monotonic
            # time. Not renewTime against our wall clock: a node whose clock runs ahead would
            # see every peer expired and lose the very measurement that should flag it.
            spec = obj.get("spec") or {}
            renew = str(spec.get("renewTime") or "")
            prev = self._renewals.get(node)
            changed_at = prev[1] if prev is not None and prev[0] == renew else now
            seen[node] = (renew, changed_at)
            duration = float(spec.get("leaseDurationSeconds") or PEER_LIST_SECONDS)
            if url and node != self.me and now - changed_at <= max(duration, PEER_LIST_SECONDS):
                urls[node] = url
        self._renewals = seen
        chosen = choose_peers(self.me, sorted(urls), self.k)
        self.urls = {p: urls[p] for p in chosen}
        for gone in [p for p in self.samples if p not in self.urls]:
            del self.samples[gone]

    async def probe_once(self) -> None:
        """One exchange with every chosen peer, concurrently."""
        names = list(self.urls)
        got = await asyncio.gather(*(self._exchange(self.urls[p]) for p in names))
        for peer, sample in zip(names, got, strict=True):
            if isinstance(sample, Sample):
                self.results["ok"] += 1
                window = self.samples.setdefault(peer, deque(maxlen=self.window))
                kept = [(at, s) for at, s in window if consistent(s, sample)]
                if len(kept) < len(window):
                    self.steps += 1
                    window.clear()
                    window.extend(kept)
                window.append((self.monotonic(), sample))
            else:
                self.results[sample] += 1

    async def _exchange(self, url: str) -> Sample | str:
        try:
            sample = await asyncio.wait_for(
                self.transport.exchange(url, self.timeout, self.wall_ns), self.timeout + 0.5)
        except ClockRefusedError:
            return "refused"
        except (aiohttp.ClientError, OSError, TimeoutError):
            return "failed"
        return sample if sample is not None else "no_timestamps"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh_peers()
                await self.probe_once()
            except Exception:  # a bug must not end the measurements: log, go on next round
                log.exception("peer_clock_round_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()

    def peers(self) -> dict[str, PeerClock]:
        """Per measured peer the least-delay sample of its window."""
        oldest = self.monotonic() - self.max_age
        out: dict[str, PeerClock] = {}
        for peer, window in self.samples.items():
            fresh = [s for at, s in window if at >= oldest]
            if fresh and peer in self.urls:
                best = min(fresh, key=lambda s: s.delay)
                out[peer] = PeerClock(best.offset, best.delay, len(fresh))
        return out

    @property
    def max_age(self) -> float:
        """A window's span plus slack: a peer that stopped answering drops out after it."""
        return 2 * self.window * self.interval + self.timeout

    def majority(self) -> tuple[float, float, int] | None:
        """(this node's offset from the majority, its error bound, peers counted) or None."""
        best = self.peers()
        offset = majority_offset([p.offset for p in best.values()])
        if offset is None:
            return None
        return offset, statistics.median(p.delay / 2 for p in best.values()), len(best)

    async def close(self) -> None:
        await self.transport.close()
