"""The ``peerclock`` collector: this node's clock offset against its peers and their majority.

Built by agent.runtime.pipeline like every collector. ``start()`` launches the exchange loop of
agent.peers.clockskew (peers from the heartbeat Leases in ``--failover.lease-namespace``, so the
peers must run with ``--failover.enabled``, which advertises their URL); each tick exports what
the loop has measured so far:
- per peer, the least-delay sample's offset (peer's clock minus ours) and delay;
- this node's offset from the majority (our clock minus the median of ours and the peers'), its
  error bound (median of delay/2) and how many peers were counted; absent with fewer than
  agent.peers.clockskew.MIN_PEERS measured peers (missing data, never "in sync");
- ``nodemedic_clock_majority_drifted``: 1 when the offset is beyond ``--peerclock.max-offset``
  by more than its error bound. The threshold is declared only here: the shipped rule
  (rules/peerclock.yaml) and alert (dashboards/alerts.yaml) test this gauge.
Without an API client (``make run``) there is nothing to compare with and it exports nothing;
with one, a peer list that cannot be read fails the tick until it has been read once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agent.collectors.base import Collector, CollectorContext
from agent.collectors.registry import register
from agent.peers.clockskew import ClockSkew
from agent.structs.metrics import Family, MetricSpec

PEER_OFFSET = MetricSpec(
    "nodemedic_peer_clock_offset_seconds",
    "How far the peer agent's wall clock is ahead of this node's (NTP four-timestamp method, "
    "least-delay exchange of the window; negative: behind).",
    "gauge", ("peer",))
PEER_DELAY = MetricSpec(
    "nodemedic_peer_clock_delay_seconds",
    "Round-trip delay of the exchange behind nodemedic_peer_clock_offset_seconds; the offset's "
    "error is at most half of it.",
    "gauge", ("peer",))
MAJORITY_OFFSET = MetricSpec(
    "nodemedic_clock_majority_offset_seconds",
    "How far this node's wall clock is ahead of the median clock of itself and its measured "
    "peers (absent with fewer than 2 peers measured).",
    "gauge")
MAJORITY_ERROR = MetricSpec(
    "nodemedic_clock_majority_error_seconds",
    "Error bound of nodemedic_clock_majority_offset_seconds (median of the peers' delay/2).",
    "gauge")
MAJORITY_PEERS = MetricSpec(
    "nodemedic_clock_majority_peers",
    "Peers whose clocks were measured for the majority offset.",
    "gauge")
DRIFTED = MetricSpec(
    "nodemedic_clock_majority_drifted",
    "1 when this node's clock is off the peer majority by more than --peerclock.max-offset "
    "beyond the error bound, else 0 (absent when there is no majority to compare with).",
    "gauge")
EXCHANGES = MetricSpec(
    "nodemedic_peer_clock_exchanges_total",
    "Clock exchanges with peer agents by result: ok, no_timestamps (an agent too old to send "
    "t2/t3: ignored), refused (its web auth answered 401/403: serve /healthz on "
    "--web.probe-address), failed (no answer).",
    "counter", ("result",))
STEPS = MetricSpec(
    "nodemedic_peer_clock_steps_total",
    "Exchanges that contradicted a peer's older samples beyond their error bounds (a clock "
    "stepped on either side); the older samples were dropped so the offset shows the step.",
    "counter")
RESULTS = ("ok", "no_timestamps", "refused", "failed")


@register("peerclock", default_enabled=True)
class PeerClockCollector(Collector):
    """See the module docstring."""

    metrics = (PEER_OFFSET, PEER_DELAY, MAJORITY_OFFSET, MAJORITY_ERROR, MAJORITY_PEERS, DRIFTED,
               EXCHANGES, STEPS)
    help = "clock offset against peer agents (NTP method) and the peer majority"

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.skew: ClockSkew | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.ctx.settings
        api = self.ctx.api
        if api is None or s.peerclock_peers == 0:
            return
        self.skew = ClockSkew(
            api, s.failover_lease_namespace, s.node_name, peers=s.peerclock_peers,
            window=s.peerclock_window, interval=s.peerclock_interval,
            timeout=s.failover_probe_timeout,
        )
        self._task = asyncio.create_task(self.skew.run(self._stop), name="peerclock")

    async def collect(self) -> list[Family]:
        skew = self.skew
        if skew is None:
            return []
        if skew.last_error and not skew.urls and not skew.samples:
            raise RuntimeError(skew.last_error)
        offset, delay = PEER_OFFSET.family(), PEER_DELAY.family()
        for peer, clock in sorted(skew.peers().items()):
            offset.add((peer,), clock.offset)
            delay.add((peer,), clock.delay)
        exchanges = EXCHANGES.family()
        for result in RESULTS:
            exchanges.add((result,), skew.results[result])
        steps = STEPS.family()
        steps.add((), skew.steps)
        out = [offset, delay, exchanges, steps]
        majority = skew.majority()
        if majority is not None:
            value, error, peers = majority
            fams = [MAJORITY_OFFSET.family(), MAJORITY_ERROR.family(), MAJORITY_PEERS.family(),
                    DRIFTED.family()]
            drifted = abs(value) - error > self.ctx.settings.peerclock_max_offset
            for fam, v in zip(fams, (value, error, peers, float(drifted)), strict=True):
                fam.add((), v)
            out += fams
        return out

    def status(self) -> dict[str, Any]:
        skew = self.skew
        if skew is None:
            return {"enabled": False}
        majority = skew.majority()
        return {
            "peers": {p: {"offset": c.offset, "delay": c.delay, "samples": c.samples}
                      for p, c in skew.peers().items()},
            "probed": sorted(skew.urls),
            "majority_offset": majority[0] if majority else None,
            "last_error": skew.last_error,
        }

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.skew is not None:
            await self.skew.close()
