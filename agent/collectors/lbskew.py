"""The ``lbskew`` collector: how unevenly kube-proxy spreads each Service over its endpoints.

Built by agent.runtime.pipeline like every collector. Each tick, in one worker thread (all of it is
parsing of possibly large inputs), it reads from this node's kernel:
- the nat rules: ``iptables-save -t nat`` (or the file ``--lbskew.iptables-save-file``) for
  kube-proxy's KUBE-SERVICES / KUBE-SVC-* / KUBE-SEP-* chains (agent.netstate.iptables), kept
  parsed between ticks: the command is run again only once they are
  ``--lbskew.rules-min-interval`` old, the file only when its stat changes;
- IPVS virtual services from <procfs>/net/ip_vs (agent.netstate.ipvs);
- conntrack entries from <procfs>/net/nf_conntrack, else ``conntrack -L -o extended``, aggregated
  per (VIP, endpoint) while streaming (agent.netstate.conntrack); that walk costs CPU in
  proportion to the table, so it repeats only as often as ``--lbskew.conntrack-cpu`` allows
  (agent.netstate.ctstats.WalkSchedule; ticks in between reuse its counts), while the table's
  size and the kernel's per-CPU conntrack counters are read every tick;
and exports, per Service port, the connections and bytes per endpoint, each endpoint's share
as the rules imply it, the chain's problems, and skew indices (agent.netstate.skew). Names come
from the EndpointSlice watch (agent.kube.endpointslices) when the API is reachable, else from
kube-proxy's rule comments. A node without kube-proxy (no KUBE-SERVICES chain, no IPVS
services, no iptables-save) yields no Service series and still succeeds.

A source refused to us is not a node without kube-proxy: ``iptables-save`` answering "permission
denied" (or not executable for us) fails the tick with CannotSee (reason permission), and
conntrack or /proc/net/ip_vs refused to us make the metrics they feed ``unreadable()``, so rules
on skew freeze instead of resolving because the series vanished.

Split: the metric families are declared in agent.collectors.lbskew_metrics, the rules file and
the two commands are read by agent.collectors.lbskew_sources, the per-Service series are built by
agent.collectors.lbskew_services; this module schedules the reads and owns the state between ticks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from agent.collectors.base import CannotSee, Collector, CollectorContext
from agent.collectors.lbskew_metrics import (
    ACCOUNTING,
    BYTE_SERIES_DROPPED,
    CONNTRACK_ENTRIES,
    CONNTRACK_METRICS,
    DROPPED_ENTRIES,
    KERNEL_EVENTS,
    METRICS,
    RULES_AGE,
    RULES_STALE,
    SERVICE_METRICS,
    SKIPPED_LINES,
    SLICES,
    SLICES_DROPPED,
    SOURCE_INFO,
    TABLE_ENTRIES,
    TABLE_LIMIT,
    WALK_AGE,
    WALK_CPU,
)
from agent.collectors.lbskew_services import NameView, ServiceSeries, flows_by_vip, group_chains
from agent.collectors.lbskew_sources import (
    RulesRead,
    read_rules_file,
    run_iptables_save,
    stream_command,
)
from agent.collectors.registry import register
from agent.netstate import conntrack, ctstats, ipvs
from agent.netstate.iptables import NatRules
from agent.structs.metrics import Family, MetricSpec

# When refreshing the nat rules fails, the last good rules stay in use (marked stale) until they
# are this much older than --lbskew.rules-min-interval; then the tick fails as it would without
# them. Five minutes rides out a restarting or briefly locked iptables while staying well below
# the 10-15 minute `for:` of the lbskew alert rules.
RULES_STALE_GRACE = 300.0

log = structlog.get_logger("nodemedic.collector.lbskew")


class NameSource(Protocol):
    """Where names come from (agent.kube.endpointslices.EndpointSliceCache)."""

    @property
    def size(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    def view(self) -> NameView | None: ...
    async def close(self) -> None: ...


@dataclass
class _Sources:
    rules: str = "none"
    conntrack: str = "none"
    ipvs: str = "none"
    names: str = "none"
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)


@register("lbskew", default_enabled=True)
class LbSkewCollector(Collector):
    """Per-Service load-balance skew from conntrack, kube-proxy's nat chains and IPVS."""

    help = "Service load-balance skew per endpoint (conntrack, iptables nat chains, IPVS)"
    metrics = METRICS

    def __init__(
        self,
        ctx: CollectorContext,
        names: NameSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ctx)
        self._names = names
        self._clock = clock  # ages the cached nat rules (tests inject a fake one)
        self._rules: RulesRead | None = None  # last good read; written by the worker thread
        self._rules_age: float | None = None  # age of the rules in use in the last tick
        self._rules_error: str | None = None  # why the last refresh failed, None when it worked
        self._series = ServiceSeries()  # the per-Service families; written by the thread
        self._busy = threading.Lock()  # held by the worker thread for a whole scan
        self._unreadable: dict[str, str] = {}  # this tick's metrics whose source refused us
        self._walks = ctstats.WalkSchedule(ctstats.parse_share(ctx.settings.lbskew_conntrack_cpu))
        self._walked: tuple[conntrack.ConntrackSummary, str] | None = None  # last walk, source
        self._walk_fresh = False  # the walk was made this tick
        # Service labels -> its endpoints in the rules when the last walk was made: between
        # walks a Service whose endpoints changed (a rollout, a scale-up) gets no counts, as
        # the old counts would show its new endpoints idle and read as skew.
        self._walk_endpoints: dict[tuple[str, str, str], frozenset[str]] = {}

    async def start(self) -> None:
        """Start the EndpointSlice watch when an API client is shared (else: comments only)."""
        api = self.ctx.api
        if self._names is None and api is not None:
            from agent.kube.endpointslices import EndpointSliceCache

            cache = EndpointSliceCache(api)
            await cache.start()
            self._names = cache

    async def close(self) -> None:
        if self._names is not None:
            await self._names.close()

    def status(self) -> dict[str, Any]:
        """For /status: how old the nat rules in use are and why the last refresh failed."""
        return {"rules_age_seconds": self._rules_age, "rules_refresh_error": self._rules_error}

    async def collect(self) -> list[Family]:
        # The view is taken on the event loop (the watch mutates the cache there).
        view = self._names.view() if self._names is not None else None
        return await asyncio.to_thread(self._collect_locked, view)

    def _collect_locked(self, view: NameView | None) -> list[Family]:
        # A tick that timed out leaves its worker thread running (threads cannot be cancelled);
        # the next tick must not run beside it on the same state. The lock is taken in the
        # thread, so a tick cancelled before its thread started holds nothing.
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("the previous lbskew scan is still running")
        try:
            return self._collect_sync(view)
        finally:
            self._busy.release()

    # -- the worker thread -------------------------------------------------------------------

    def unreadable(self) -> dict[str, str]:
        """Metrics of sources refused to us this tick (conntrack, /proc/net/ip_vs)."""
        return dict(self._unreadable)

    def _collect_sync(self, view: NameView | None) -> list[Family]:
        self._series.begin(view, self.ctx.settings.lbskew_min_samples)
        self._unreadable = {}
        deadline = time.monotonic() + self.timeout
        src = _Sources()
        fams = {spec.name: spec.family() for spec in self.metrics}
        rules = self._read_rules(src, deadline, fams)
        table = self._read_ipvs(src)
        summary: conntrack.ConntrackSummary | None = None
        self._emit_table(fams)
        if rules is not None and rules.services:
            summary = self._walk_conntrack(src, deadline, fams)
        names = self._names
        if view is not None:
            src.names = "endpointslices"
        elif rules is not None and rules.services:
            src.names = "iptables-comments"
        if rules is not None:
            flows = flows_by_vip(summary) if summary is not None else None
            if self._walk_fresh:
                self._walk_endpoints = {}
            for labels, chains in group_chains(rules).items():
                self._series.used.add(labels)
                chain_flows = flows
                if flows is not None:
                    eps = frozenset(e.address for ch in chains for e in ch.endpoints)
                    if self._walk_fresh:
                        self._walk_endpoints[labels] = eps
                    elif self._walk_endpoints.get(labels) != eps:
                        chain_flows = None  # the last walk saw other endpoints: no counts yet
                self._series.chain(fams, labels, chains, chain_flows)
        if table is not None:
            for vs in table.services:
                self._series.ipvs(fams, vs)
        self._series.end()

        fams[SOURCE_INFO.name].add((src.rules, src.conntrack, src.ipvs, src.names), 1)
        if summary is not None:
            fams[CONNTRACK_ENTRIES.name].add((), summary.entries)
            fams[DROPPED_ENTRIES.name].add((), summary.dropped_entries)
            fams[BYTE_SERIES_DROPPED.name].add((), self._series.bytes_dropped)
            fams[ACCOUNTING.name].add((), 1 if summary.accounting else 0)
            src.skipped[("conntrack", "malformed")] = summary.malformed_lines
            src.skipped[("conntrack", "no_ports")] = summary.unsupported_lines
        for (source, reason), n in sorted(src.skipped.items()):
            fams[SKIPPED_LINES.name].add((source, reason), n)
        if names is not None:
            fams[SLICES.name].add((), names.size)
            fams[SLICES_DROPPED.name].add((), names.dropped)
        return [f for f in fams.values() if f.samples]

    def _read_rules(
        self, src: _Sources, deadline: float, fams: dict[str, Family]
    ) -> NatRules | None:
        """The nat rules for this tick: the cached read while it is fresh enough, else a new
        one; when a new one fails, the cached read (marked stale) while within the grace."""
        s = self.ctx.settings
        interval = s.lbskew_rules_min_interval
        path = s.lbskew_iptables_save_file
        origin = f"file:{path}" if path is not None else f"command:{s.lbskew_iptables_save_command}"
        now = self._clock()
        cached = self._rules if self._rules is not None and self._rules.origin == origin else None
        if cached is not None and now - cached.at > interval + RULES_STALE_GRACE:
            cached = None  # too old to stand in for a failed refresh
        stale = False
        try:
            if path is not None:
                read = read_rules_file(path, origin, cached, now, every_tick=interval <= 0)
            elif cached is not None and now - cached.at < interval - 1.0:
                # Like --cgroup.min-interval: the second of slack absorbs tick jitter.
                read = cached
            else:
                if cached is not None:
                    # A hung iptables-save gets half the budget, so that the tick can still
                    # finish with the cached rules and this tick's conntrack.
                    left = deadline - time.monotonic()
                    deadline -= left / 2
                read = run_iptables_save(s.lbskew_iptables_save_command, origin, now, deadline)
        except (OSError, RuntimeError) as exc:
            self._rules_error = str(exc)
            if cached is None:
                self._rules, self._rules_age = None, None
                raise
            log.warning("nat rules not refreshed; serving the last good ones",
                        error=str(exc), age_seconds=round(now - cached.at, 1))
            read, stale = cached, True
        else:
            self._rules, self._rules_error = read, None
        self._rules_age = max(now - read.at, 0.0)
        src.rules = read.source
        if read.source != "none":
            src.skipped[("iptables", "malformed")] = read.skipped
            fams[RULES_AGE.name].add((), self._rules_age)
            fams[RULES_STALE.name].add((), 1 if stale else 0)
        return read.rules

    def _read_ipvs(self, src: _Sources) -> ipvs.IpvsTable | None:
        path = self.ctx.settings.path_procfs / "net" / "ip_vs"
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                table = ipvs.parse_ip_vs(fh)
        except FileNotFoundError:
            return None
        except PermissionError:
            self._deny(SERVICE_METRICS)
            return None
        src.ipvs = "proc"
        src.skipped[("ipvs", "malformed")] = table.skipped_lines
        return table if table.services else None

    def _emit_table(self, fams: dict[str, Family]) -> None:
        """The table's size and the kernel's counters: cheap at any table size, every tick."""
        counts = ctstats.read_counts(self.ctx.settings.path_procfs)
        if counts.entries is not None:
            fams[TABLE_ENTRIES.name].add((), counts.entries)
        if counts.limit is not None:
            fams[TABLE_LIMIT.name].add((), counts.limit)
        for event, n in sorted(counts.stats.items()):
            fams[KERNEL_EVENTS.name].add((event,), n)

    def _walk_conntrack(
        self, src: _Sources, deadline: float, fams: dict[str, Family]
    ) -> conntrack.ConntrackSummary | None:
        """This tick's per-endpoint counts: a new walk when one is due, else the last walk's."""
        now = self._clock()
        self._walk_fresh = False
        if self._walked is None or self._walks.due(now + 1.0):  # a second of tick jitter
            cpu0, wall0 = time.thread_time(), time.monotonic()

            def cost() -> float:  # the command's CPU is not in this thread: its wall time
                return (time.thread_time() - cpu0 if src.conntrack == "proc"
                        else time.monotonic() - wall0)

            try:
                summary = self._read_conntrack(src, deadline)
            except TimeoutError:
                # A walk that ran into the deadline cost that much too: it counts against the
                # budget, or the biggest tables would be walked to the deadline every tick.
                self._walked = None
                self._walks.record(now, cost())
                raise
            if summary is None:
                self._walked = None
                self._walks.forget()
                return None
            self._walks.record(now, cost())
            self._walked = (summary, src.conntrack)
            self._walk_fresh = True
        summary, src.conntrack = self._walked
        assert self._walks.last_at is not None
        fams[WALK_AGE.name].add((), max(0.0, now - self._walks.last_at))
        fams[WALK_CPU.name].add((), self._walks.last_cpu)
        return summary

    def _read_conntrack(
        self, src: _Sources, deadline: float
    ) -> conntrack.ConntrackSummary | None:
        path = self.ctx.settings.path_procfs / "net" / "nf_conntrack"
        if path.exists():
            try:
                summary = conntrack.aggregate_text(conntrack.read_chunks(str(path)))
            except PermissionError:
                self._deny(CONNTRACK_METRICS)
                return None
            src.conntrack = "proc"
            return summary
        argv = [self.ctx.settings.lbskew_conntrack_command, "-L", "-o", "extended"]
        try:
            streamed = stream_command(argv, deadline)
        except CannotSee:
            self._deny(CONNTRACK_METRICS)
            return None
        if streamed is not None:
            src.conntrack = "conntrack-cli"
        return streamed

    def _deny(self, specs: tuple[MetricSpec, ...]) -> None:
        self._unreadable.update(dict.fromkeys((m.name for m in specs), "permission"))
