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
"""

from __future__ import annotations

import asyncio
import codecs
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent import subproc
from agent.collectors.base import CannotSee, Collector, CollectorContext
from agent.collectors.registry import register
from agent.netstate import conntrack, ctstats, ipvs, skew
from agent.netstate.iptables import NatRules, ServiceChain, parse_iptables_save
from agent.structs.metrics import Family, MetricSpec

if TYPE_CHECKING:
    from agent.kube.endpointslices import EndpointName

# iptables-save of a large cluster is tens of MB; refuse runaway output instead of holding it.
MAX_RULES_BYTES = 256 << 20
# Bound on the byte-counter state kept between ticks (one entry per Service endpoint).
MAX_BYTE_SERIES = 65536
# When refreshing the nat rules fails, the last good rules stay in use (marked stale) until they
# are this much older than --lbskew.rules-min-interval; then the tick fails as it would without
# them. Five minutes rides out a restarting or briefly locked iptables while staying well below
# the 10-15 minute `for:` of the lbskew alert rules.
RULES_STALE_GRACE = 300.0

log = structlog.get_logger("nodemedic.collector.lbskew")

SVC = ("namespace", "service", "port")
EP = (*SVC, "endpoint", "pod")

ENDPOINT_CONNECTIONS = MetricSpec(
    "nodemedic_service_endpoint_connections",
    "Active connections (ESTABLISHED/SYN or UDP) kube-proxy sent to this endpoint "
    "(conntrack; IPVS ActiveConn)",
    "gauge",
    EP,
)
ENDPOINT_ENTRIES = MetricSpec(
    "nodemedic_service_endpoint_conntrack_entries",
    "All conntrack entries to this endpoint, including TIME_WAIT: recent endpoint choices",
    "gauge",
    EP,
)
ENDPOINT_BYTES = MetricSpec(
    "nodemedic_service_endpoint_bytes_total",
    "Bytes (both directions) through this endpoint, summed from growth of live conntrack "
    "entries; needs nf_conntrack_acct=1",
    "counter",
    EP,
)
EXPECTED_SHARE = MetricSpec(
    "nodemedic_service_endpoint_expected_share",
    "Share of new connections the rules give this endpoint (chain probabilities, IPVS weights)",
    "gauge",
    (*SVC, "endpoint"),
)
SERVICE_CONNECTIONS = MetricSpec(
    "nodemedic_service_connections",
    "Active connections to this Service port over all its endpoints",
    "gauge",
    SVC,
)
MAX_MEAN = MetricSpec(
    "nodemedic_service_skew_max_mean_ratio",
    "Most loaded endpoint's connections over its fair share (1 = even)",
    "gauge",
    SVC,
)
CV = MetricSpec(
    "nodemedic_service_skew_cv",
    "Coefficient of variation of the endpoints' load relative to their fair share (0 = even)",
    "gauge",
    SVC,
)
CHI2_P = MetricSpec(
    "nodemedic_service_skew_chi2_p_value",
    "Chi-square p-value of the observed connections against the rules' expected shares "
    "(small = traffic does not follow the rules; 1 when samples are too few)",
    "gauge",
    SVC,
)
FAIR_P = MetricSpec(
    "nodemedic_service_skew_fair_chi2_p_value",
    "Chi-square p-value of the observed connections against fair shares "
    "(small = uneven, whatever the cause; 1 when samples are too few)",
    "gauge",
    SVC,
)
SUFFICIENT = MetricSpec(
    "nodemedic_service_skew_samples_sufficient",
    "1 when the Service has enough connections for the skew test (--lbskew.min-samples and "
    ">= 5 expected per endpoint)",
    "gauge",
    SVC,
)
SKEWED = MetricSpec(
    "nodemedic_service_skewed",
    "1 when enough samples, max/mean ratio >= 1.5 and the fair-share test rejects at 0.001",
    "gauge",
    SVC,
)
CHAIN_PROBLEMS = MetricSpec(
    "nodemedic_service_chain_problems",
    "Endpoints affected by a problem of the kube-proxy chain (unequal_shares, "
    "unreachable_endpoint, fallthrough, missing_dnat, no_endpoints, stale_endpoint); "
    "absent when none",
    "gauge",
    (*SVC, "problem"),
)
SERVICE_INFO = MetricSpec(
    "nodemedic_service_lb_info",
    "Where a Service port's load balancing was read: VIP, protocol, mode (iptables/ipvs), "
    "chain and where its name came from",
    "info",
    (*SVC, "vip", "protocol", "mode", "chain", "name_source"),
)
SOURCE_INFO = MetricSpec(
    "nodemedic_lbskew_source_info",
    "Which kernel sources the lbskew collector read this tick (none = unavailable)",
    "info",
    ("rules", "conntrack", "ipvs", "names"),
)
CONNTRACK_ENTRIES = MetricSpec(
    "nodemedic_lbskew_conntrack_entries",
    "conntrack entries parsed in the last tick",
    "gauge",
)
SKIPPED_LINES = MetricSpec(
    "nodemedic_lbskew_skipped_lines",
    "Input lines skipped in the last tick, by source and reason",
    "gauge",
    ("source", "reason"),
)
DROPPED_ENTRIES = MetricSpec(
    "nodemedic_lbskew_conntrack_dropped_entries",
    "DNAT conntrack entries not aggregated in the last tick because the key bound was reached",
    "gauge",
)
ACCOUNTING = MetricSpec(
    "nodemedic_lbskew_conntrack_accounting",
    "1 when conntrack entries carry byte counters (net.netfilter.nf_conntrack_acct=1)",
    "gauge",
)
BYTE_SERIES_DROPPED = MetricSpec(
    "nodemedic_lbskew_byte_series_dropped",
    "Endpoint byte counters not exported in the last tick because MAX_BYTE_SERIES (65,536) "
    "endpoints already had one",
    "gauge",
)
TABLE_ENTRIES = MetricSpec(
    "nodemedic_conntrack_entries",
    "Entries in the conntrack table (nf_conntrack_count), read every tick",
    "gauge",
)
TABLE_LIMIT = MetricSpec(
    "nodemedic_conntrack_entries_limit",
    "Most entries the conntrack table holds (nf_conntrack_max); new connections are dropped "
    "beyond it",
    "gauge",
)
KERNEL_EVENTS = MetricSpec(
    "nodemedic_conntrack_kernel_events_total",
    "The kernel's conntrack counters of /proc/net/stat/nf_conntrack summed over CPUs (drop and "
    "early_drop: table full; insert_failed: races; invalid: untrackable packets)",
    "counter",
    ("event",),
)
WALK_AGE = MetricSpec(
    "nodemedic_lbskew_conntrack_walk_age_seconds",
    "Age of the conntrack table walk the per-endpoint counts come from (walks repeat as often "
    "as --lbskew.conntrack-cpu allows)",
    "gauge",
)
WALK_CPU = MetricSpec(
    "nodemedic_lbskew_conntrack_walk_cpu_seconds",
    "CPU time (user + system; wall time for the conntrack command) of the last table walk",
    "gauge",
)
RULES_AGE = MetricSpec(
    "nodemedic_lbskew_rules_age_seconds",
    "Seconds since the nat rules in use were read (iptables-save runs at most every "
    "--lbskew.rules-min-interval; the file source is re-read when its stat changes)",
    "gauge",
)
RULES_STALE = MetricSpec(
    "nodemedic_lbskew_rules_stale",
    "1 when refreshing the nat rules failed and older rules are in use",
    "gauge",
)
SLICES = MetricSpec(
    "nodemedic_lbskew_endpointslices",
    "EndpointSlices held in the lbskew name cache",
    "gauge",
)
SLICES_DROPPED = MetricSpec(
    "nodemedic_lbskew_endpointslices_dropped_total",
    "EndpointSlices not cached because the cache was full",
    "counter",
)

# The metrics conntrack feeds (connections, bytes, skew), and every per-Service metric (IPVS
# mode reads them all from /proc/net/ip_vs): missing data when that source is refused to us.
CONNTRACK_METRICS = (
    ENDPOINT_CONNECTIONS, ENDPOINT_ENTRIES, ENDPOINT_BYTES, SERVICE_CONNECTIONS, MAX_MEAN, CV,
    CHI2_P, FAIR_P, SUFFICIENT, SKEWED, CONNTRACK_ENTRIES, DROPPED_ENTRIES, ACCOUNTING,
    BYTE_SERIES_DROPPED,
)
SERVICE_METRICS = (*CONNTRACK_METRICS, EXPECTED_SHARE, CHAIN_PROBLEMS, SERVICE_INFO)


class NameView(Protocol):
    """Immutable name lookups (agent.kube.endpointslices.NameView)."""

    def endpoint(self, address: str) -> EndpointName | None: ...
    def service_endpoints(self, namespace: str, service: str, port: str) -> set[str] | None: ...


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


@dataclass(slots=True)
class _RulesRead:
    """One successful read of the nat rules, kept for the following ticks."""

    origin: str  # which source it came from: a cached read of another source is never served
    rules: NatRules | None  # None: no kube-proxy rules (tool missing or not permitted, no chain)
    source: str  # nodemedic_lbskew_source_info's rules label: iptables-save, file or none
    skipped: int  # malformed lines of that parse
    at: float  # clock() when read, or when the file's stat last showed it unchanged
    file_key: tuple[int, int, int] | None = None  # (inode, mtime ns, size) of the file read


@dataclass
class _Endpoint:
    address: str
    expected: float
    active: int = 0
    entries: int = 0
    bytes: int = 0
    in_rules: bool = True


@register("lbskew", default_enabled=True)
class LbSkewCollector(Collector):
    """Per-Service load-balance skew from conntrack, kube-proxy's nat chains and IPVS."""

    help = "Service load-balance skew per endpoint (conntrack, iptables nat chains, IPVS)"
    metrics = (
        ENDPOINT_CONNECTIONS,
        ENDPOINT_ENTRIES,
        ENDPOINT_BYTES,
        EXPECTED_SHARE,
        SERVICE_CONNECTIONS,
        MAX_MEAN,
        CV,
        CHI2_P,
        FAIR_P,
        SUFFICIENT,
        SKEWED,
        CHAIN_PROBLEMS,
        SERVICE_INFO,
        SOURCE_INFO,
        CONNTRACK_ENTRIES,
        SKIPPED_LINES,
        DROPPED_ENTRIES,
        BYTE_SERIES_DROPPED,
        ACCOUNTING,
        TABLE_ENTRIES,
        TABLE_LIMIT,
        KERNEL_EVENTS,
        WALK_AGE,
        WALK_CPU,
        RULES_AGE,
        RULES_STALE,
        SLICES,
        SLICES_DROPPED,
    )

    def __init__(
        self,
        ctx: CollectorContext,
        names: NameSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ctx)
        self._names = names
        self._clock = clock  # ages the cached nat rules (tests inject a fake one)
        self._rules: _RulesRead | None = None  # last good read; written by the worker thread
        self._rules_age: float | None = None  # age of the rules in use in the last tick
        self._rules_error: str | None = None  # why the last refresh failed, None when it worked
        # label tuple -> (live bytes last tick, counter value): makes bytes_total monotonic.
        self._bytes: dict[tuple[str, ...], tuple[int, int]] = {}
        self._bytes_dropped = 0  # byte series not exported this tick (table full)
        self._view: NameView | None = None  # this tick's names, set in the worker thread
        self._used: set[tuple[str, str, str]] = set()  # Service labels emitted this tick
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
        api = self.ctx.shared.get("api")
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
        self._view = view
        self._unreadable = {}
        self._used = set()
        self._bytes_dropped = 0
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
        seen: set[tuple[str, ...]] = set()
        if rules is not None:
            flows = _flows_by_vip(summary) if summary is not None else None
            if self._walk_fresh:
                self._walk_endpoints = {}
            for labels, chains in _group_chains(rules).items():
                self._used.add(labels)
                chain_flows = flows
                if flows is not None:
                    eps = frozenset(e.address for ch in chains for e in ch.endpoints)
                    if self._walk_fresh:
                        self._walk_endpoints[labels] = eps
                    elif self._walk_endpoints.get(labels) != eps:
                        chain_flows = None  # the last walk saw other endpoints: no counts yet
                self._emit_chain(fams, labels, chains, chain_flows, seen)
        if table is not None:
            for vs in table.services:
                self._emit_ipvs(fams, vs, seen)
        # Forget byte counters of endpoints that are gone (bounded state).
        for key in [k for k in self._bytes if k not in seen]:
            del self._bytes[key]

        fams[SOURCE_INFO.name].add((src.rules, src.conntrack, src.ipvs, src.names), 1)
        if summary is not None:
            fams[CONNTRACK_ENTRIES.name].add((), summary.entries)
            fams[DROPPED_ENTRIES.name].add((), summary.dropped_entries)
            fams[BYTE_SERIES_DROPPED.name].add((), self._bytes_dropped)
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
                read = self._read_rules_file(path, origin, cached, now, every_tick=interval <= 0)
            elif cached is not None and now - cached.at < interval - 1.0:
                # Like --cgroup.min-interval: the second of slack absorbs tick jitter.
                read = cached
            else:
                if cached is not None:
                    # A hung iptables-save gets half the budget, so that the tick can still
                    # finish with the cached rules and this tick's conntrack.
                    left = deadline - time.monotonic()
                    deadline -= left / 2
                read = self._run_iptables_save(origin, now, deadline)
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

    def _read_rules_file(
        self,
        path: os.PathLike[str],
        origin: str,
        cached: _RulesRead | None,
        now: float,
        *,
        every_tick: bool,
    ) -> _RulesRead:
        """Parse the rules file, or confirm the cached parse with a stat when it is unchanged."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _RulesRead(origin, None, "none", 0, now)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if cached is not None and cached.file_key == key and not every_tick:
            cached.at = now
            return cached
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                rules = parse_iptables_save(fh)
        except FileNotFoundError:  # removed between the stat and the open
            return _RulesRead(origin, None, "none", 0, now)
        # The key is from before the read: a write during it changes the stat, so the next
        # tick reads again rather than keeping a torn read forever.
        kube = rules if rules.has_kube_services else None
        return _RulesRead(origin, kube, "file", rules.skipped_lines, now, key)

    def _run_iptables_save(self, origin: str, now: float, deadline: float) -> _RulesRead:
        argv = [self.ctx.settings.lbskew_iptables_save_command, "-t", "nat"]
        text = _run_bounded(argv, deadline, MAX_RULES_BYTES)
        if text is None:  # missing or not permitted: no rules, as on a node without kube-proxy
            return _RulesRead(origin, None, "none", 0, now)
        rules = parse_iptables_save(text.splitlines())
        kube = rules if rules.has_kube_services else None
        return _RulesRead(origin, kube, "iptables-save", rules.skipped_lines, now)

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
            streamed = _stream_command(argv, deadline)
        except CannotSee:
            self._deny(CONNTRACK_METRICS)
            return None
        if streamed is not None:
            src.conntrack = "conntrack-cli"
        return streamed

    def _deny(self, specs: tuple[MetricSpec, ...]) -> None:
        self._unreadable.update(dict.fromkeys((m.name for m in specs), "permission"))

    def _emit_chain(
        self,
        fams: dict[str, Family],
        labels: tuple[str, str, str],
        chains: list[ServiceChain],
        flows: _FlowIndex | None,
        seen: set[tuple[str, ...]],
    ) -> None:
        first = chains[0]
        endpoints = [_Endpoint(e.address, e.share) for e in first.endpoints]
        by_addr = {e.address: e for e in endpoints if e.address}
        if flows is not None:
            for ch in chains:
                for addr, tally in flows.get((ch.protocol, ch.vip, ch.port), ()):
                    ep = by_addr.get(addr)
                    if ep is None:  # connections to an endpoint the rules no longer name
                        ep = by_addr[addr] = _Endpoint(addr, 0.0, in_rules=False)
                        endpoints.append(ep)
                    ep.active += tally.active
                    ep.entries += tally.entries
                    ep.bytes += tally.bytes
        names = self._view
        svc = first.service
        slice_eps = (
            names.service_endpoints(svc.namespace, svc.name, svc.port)
            if names is not None and svc is not None
            else None
        )
        name_source = "iptables-comment" if svc is not None else "unknown"
        if slice_eps is not None:
            name_source = "endpointslice"
        for ch in chains:
            fams[SERVICE_INFO.name].add(
                (*labels, ch.vip, ch.protocol, "iptables", ch.chain, name_source), 1
            )
        for problem, n in sorted(first.problems(slice_eps).items()):
            fams[CHAIN_PROBLEMS.name].add((*labels, problem), n)
        self._emit_endpoints(fams, labels, endpoints, observed=flows is not None, seen=seen)
        in_rules = [e for e in endpoints if e.in_rules]
        if flows is not None and in_rules:
            fair = [1.0 / len(in_rules)] * len(in_rules)
            self._emit_skew(
                fams, labels, [e.active for e in in_rules], [e.expected for e in in_rules], fair
            )

    def _emit_ipvs(
        self, fams: dict[str, Family], vs: ipvs.VirtualService, seen: set[tuple[str, ...]]
    ) -> None:
        names = self._view
        owners = [names.endpoint(rs.address) for rs in vs.servers] if names else []
        owner = next((o for o in owners if o is not None), None)
        if owner is not None:
            labels = (owner.namespace, owner.service, owner.port or str(vs.port))
            name_source = "endpointslice"
        else:  # IPVS keeps no Service names: identify the port by its VIP
            labels = ("", f"{vs.vip}:{vs.port}" if vs.port else f"fwm:{vs.vip}", str(vs.port))
            name_source = "unknown"
        if labels in self._used:
            # The ClusterIP, NodePort and external-IP virtual services of one Service share
            # real servers, hence names: keep their series apart by VIP.
            labels = (labels[0], labels[1], f"{labels[2]}@{vs.vip}:{vs.port}")
            if labels in self._used:
                return
        self._used.add(labels)
        fams[SERVICE_INFO.name].add(
            (*labels, vs.vip, vs.protocol, "ipvs", vs.scheduler, name_source), 1
        )
        shares = vs.expected_shares()
        endpoints = [
            _Endpoint(rs.address, share, active=rs.active_conns)
            for rs, share in zip(vs.servers, shares, strict=True)
        ]
        if not endpoints:
            fams[CHAIN_PROBLEMS.name].add((*labels, "no_endpoints"), 1)
        self._emit_endpoints(fams, labels, endpoints, observed=True, seen=seen, entries=False)
        if endpoints:
            self._emit_skew(fams, labels, [e.active for e in endpoints], shares, shares)

    def _emit_endpoints(
        self,
        fams: dict[str, Family],
        labels: tuple[str, str, str],
        endpoints: list[_Endpoint],
        *,
        observed: bool,
        seen: set[tuple[str, ...]],
        entries: bool = True,
    ) -> None:
        """Per-endpoint series; connection counts only when a connection source was read
        (``observed``), so that "no conntrack" never looks like "no connections"."""
        names = self._view
        total = 0
        for ep in endpoints:
            if ep.in_rules:
                fams[EXPECTED_SHARE.name].add((*labels, ep.address), ep.expected)
            if not observed:
                continue
            owner = names.endpoint(ep.address) if names is not None and ep.address else None
            pod = owner.pod if owner is not None else ""
            ep_labels = (*labels, ep.address, pod)
            total += ep.active
            fams[ENDPOINT_CONNECTIONS.name].add(ep_labels, ep.active)
            if entries:
                fams[ENDPOINT_ENTRIES.name].add(ep_labels, ep.entries)
                counter = self._bytes_counter(ep_labels, ep.bytes)
                if counter is not None:
                    fams[ENDPOINT_BYTES.name].add(ep_labels, counter)
                seen.add(ep_labels)
        if observed:
            fams[SERVICE_CONNECTIONS.name].add(labels, total)

    def _bytes_counter(self, key: tuple[str, ...], live: int) -> int | None:
        """Counter value for ``key``: grows by the growth of the live byte sum, never shrinks
        (bytes of connections that closed between ticks are missed: a lower bound). None when
        the table is full: the series is left out (counted) rather than exported as a counter
        that could go down."""
        last, total = self._bytes.get(key, (0, 0))
        if key not in self._bytes and len(self._bytes) >= MAX_BYTE_SERIES:
            self._bytes_dropped += 1
            return None
        total += max(live - last, 0)
        self._bytes[key] = (live, total)
        return total

    def _emit_skew(
        self,
        fams: dict[str, Family],
        labels: tuple[str, str, str],
        counts: list[int],
        expected: list[float],
        fair: list[float],
    ) -> None:
        r = skew.assess(
            counts, expected, fair, min_samples=self.ctx.settings.lbskew_min_samples
        )
        fams[MAX_MEAN.name].add(labels, r.max_mean_ratio)
        fams[CV.name].add(labels, r.cv)
        fams[CHI2_P.name].add(labels, r.p_value)
        fams[FAIR_P.name].add(labels, r.fair_p_value)
        fams[SUFFICIENT.name].add(labels, 1 if r.sufficient else 0)
        fams[SKEWED.name].add(labels, 1 if r.skewed else 0)


_FlowIndex = dict[tuple[str, str, int], list[tuple[str, conntrack.EndpointTally]]]


def _flows_by_vip(summary: conntrack.ConntrackSummary) -> _FlowIndex:
    """(protocol, VIP, port) -> [(endpoint "ip:port", tally)], built once per tick."""
    out: _FlowIndex = {}
    for (proto, vip, vport, ep_ip, ep_port), tally in summary.flows.items():
        addr = f"[{ep_ip}]:{ep_port}" if ":" in ep_ip else f"{ep_ip}:{ep_port}"
        out.setdefault((proto, vip, vport), []).append((addr, tally))
    return out


def _group_chains(rules: NatRules) -> dict[tuple[str, str, str], list[ServiceChain]]:
    """Service labels -> the chains reached for it (one per VIP; several VIPs can share one
    KUBE-SVC chain, e.g. a ClusterIP plus externalIPs). Unnamed chains use the chain name."""
    out: dict[tuple[str, str, str], list[ServiceChain]] = {}
    by_chain: dict[str, tuple[str, str, str]] = {}
    for ch in rules.services:
        if ch.chain in by_chain:
            out[by_chain[ch.chain]].append(ch)
            continue
        if ch.service is not None:
            labels = (ch.service.namespace, ch.service.name, ch.service.port or str(ch.port))
        else:
            labels = ("", ch.chain, str(ch.port))
        if labels in out:  # a second chain under the same name: keep the labels unique
            labels = (labels[0], labels[1], f"{labels[2]}/{ch.protocol}")
            if labels in out:
                continue
        by_chain[ch.chain] = labels
        out[labels] = [ch]
    return out


def _run_bounded(argv: list[str], deadline: float, max_bytes: int) -> str | None:
    """Run ``argv`` and return its stdout; None when the tool is missing (a machine without
    kube-proxy); CannotSee when it says we are not permitted; raise on timeout, oversized
    output or another failure."""
    res = _run(argv, deadline, max_stdout=max_bytes)
    if res is None:
        return None
    if res.truncated:
        raise RuntimeError(f"{argv[0]}: output exceeds {max_bytes} bytes")
    if res.returncode != 0:
        err = res.stderr_text()
        if _not_permitted(err):
            raise CannotSee(
                "permission",
                f"{argv[0]} refused us ({err}): the nat rules cannot be read; run the "
                "agent as root with CAP_NET_ADMIN or disable --no-collector.lbskew",
            )
        raise RuntimeError(f"{argv[0]} exited {res.returncode}: {err}")
    return res.stdout.decode("utf-8", "replace")


def _run(argv: list[str], deadline: float, max_stdout: int = 0,
         on_stdout: Callable[[bytes], None] | None = None) -> subproc.ProcResult | None:
    """One run of ``argv`` (agent.subproc) killed at ``deadline``; None when the tool is
    missing; CannotSee when we may not run it; TimeoutError at the deadline."""
    try:
        res = subproc.run_sync(argv, limit=deadline - time.monotonic(), max_stdout=max_stdout,
                               overflow="kill", on_stdout=on_stdout)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise CannotSee("permission", f"{argv[0]}: not executable for us: {exc}") from exc
    if res.timed_out:
        raise TimeoutError(f"{argv[0]}: no result before the collector's deadline")
    return res


def _not_permitted(stderr: str) -> bool:
    low = stderr.lower()
    return "permission denied" in low or "must be root" in low or "not permitted" in low


def _stream_command(argv: list[str], deadline: float) -> conntrack.ConntrackSummary | None:
    """Stream ``conntrack -L`` stdout into the aggregator (memory bounded by the block size).
    None when the tool is missing or fails (no conntrack support); CannotSee when it says we
    are not permitted."""
    agg = conntrack.ConntrackAggregator()
    decoder = codecs.getincrementaldecoder("ascii")("replace")
    res = _run(argv, deadline, on_stdout=lambda block: agg.feed(decoder.decode(block)))
    if res is None:
        return None
    if res.returncode != 0:
        err = res.stderr_text()
        if _not_permitted(err):
            raise CannotSee("permission", f"{argv[0]} refused us: {err}")
        return None
    return agg.finish()
