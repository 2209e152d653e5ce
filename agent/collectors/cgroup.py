"""The ``cgroup`` collector: per-pod and per-container memory, OOM, CPU, CFS and PSI metrics.

Built by agent.runtime.pipeline (registered as ``cgroup``, enabled by default). Each tick it reads
the kubepods cgroups under ``--path.cgroupfs`` (v1, v2 or hybrid; systemd or cgroupfs driver) in
a worker thread via agent.collectors.cgroupfs (directory listings cached while unchanged, see
agent.collectors.cgroupfs.layout.ListingCache; the kubelet's container IDs make a pod whose new
container the cache has not seen re-listed; limit files kept between reads while the kubelet's
pod list is unchanged, see agent.collectors.cgroupfs.read.LimitCache), and attributes them to
namespace/pod/container with the kubelet's pod list from ``ctx.kubelet`` when that client is
present and answers. Without it, series carry the pod UID with empty namespace/pod and the
runtime container ID as ``container``. The ``qos`` label always comes from the cgroup path
(where the kubelet actually placed the pod): ``guaranteed``, ``burstable`` or ``besteffort``.
Pod sandboxes (the runtime's pause container) are found and counted, not read (see
agent.collectors.cgroupfs.layout).

A cgroup file we may not read (EACCES: an AppArmor/SELinux profile, a missing capability) skips
that value and counts it, and makes this tick's per-cgroup metrics ``unreadable()``
(reason permission): a container whose memory we cannot read is not a container whose memory
went away, so rules reading those metrics freeze instead of resolving. The same holds when the
kubelet refuses us the pod list (401/403/TLS): without names, pod targets are unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import structlog

from agent.collectors.base import Collector, CollectorContext
from agent.collectors.cgroupfs import REASONS, NodeScan, scan
from agent.collectors.cgroupfs.layout import ListingCache
from agent.collectors.cgroupfs.read import PERMISSION, LimitCache
from agent.collectors.podgaps import CGROUP_PODS_WITHOUT_VALUES, cgroup_pods_without_values, report
from agent.collectors.registry import register
from agent.structs.metrics import Family, LabelValues, MetricSpec
from agent.structs.pods import PodRef

log = structlog.get_logger("nodemedic.collector.cgroup")

# Every LIMITS_FULL_EVERY-th read re-reads every limit file even when the kubelet's pod list has
# not changed: bounds how long a limit written outside the kubelet goes unseen (5 min at 30 s).
LIMITS_FULL_EVERY = 10

_L = ("namespace", "pod", "uid", "container", "qos")
_LP = (*_L, "resource", "kind")

MEMORY_USAGE = MetricSpec(
    "nodemedic_container_memory_usage_bytes",
    "Memory charged to the cgroup (v1 memory.usage_in_bytes, v2 memory.current), page cache "
    "included. Pod-level cgroups have container=\"\".",
    "gauge",
    _L,
)
MEMORY_WORKING_SET = MetricSpec(
    "nodemedic_container_memory_working_set_bytes",
    "Usage minus inactive file cache, as the kubelet computes it for eviction and OOM decisions.",
    "gauge",
    _L,
)
MEMORY_LIMIT = MetricSpec(
    "nodemedic_container_memory_limit_bytes",
    "Memory limit of the cgroup; absent when unlimited.",
    "gauge",
    _L,
)
OOM_KILLS = MetricSpec(
    "nodemedic_container_oom_kills_total",
    "Processes killed by the OOM killer in this cgroup (v2 memory.events oom_kill, "
    "v1 memory.oom_control oom_kill on Linux 4.13+).",
    "counter",
    _L,
)
OOM_EVENTS = MetricSpec(
    "nodemedic_container_oom_events_total",
    "Times the cgroup hit its limit and the OOM killer was invoked (v2 memory.events oom). "
    "Not available on cgroup v1, which has no such counter.",
    "counter",
    _L,
)
CPU_USAGE = MetricSpec(
    "nodemedic_container_cpu_usage_seconds_total",
    "CPU time consumed by the cgroup (v1 cpuacct.usage, v2 cpu.stat usage_usec).",
    "counter",
    _L,
)
CFS_PERIODS = MetricSpec(
    "nodemedic_container_cpu_cfs_periods_total",
    "CFS enforcement periods elapsed while the cgroup was runnable.",
    "counter",
    _L,
)
CFS_THROTTLED_PERIODS = MetricSpec(
    "nodemedic_container_cpu_cfs_throttled_periods_total",
    "CFS periods in which the cgroup was throttled because it used up its quota.",
    "counter",
    _L,
)
CFS_THROTTLED_SECONDS = MetricSpec(
    "nodemedic_container_cpu_cfs_throttled_seconds_total",
    "Total time the cgroup's tasks spent throttled by its CFS quota.",
    "counter",
    _L,
)
CPU_QUOTA = MetricSpec(
    "nodemedic_container_cpu_quota_cores",
    "CPU limit in cores (CFS quota / period); absent when unlimited.",
    "gauge",
    _L,
)
PRESSURE_AVG10 = MetricSpec(
    "nodemedic_container_pressure_avg10_ratio",
    "PSI share of the last 10 s in which some (or all, kind=full) of the cgroup's tasks were "
    "stalled on the resource (avg10 / 100).",
    "gauge",
    _LP,
)
PRESSURE_SECONDS = MetricSpec(
    "nodemedic_container_pressure_seconds_total",
    "PSI total stall time of the cgroup's tasks on the resource.",
    "counter",
    _LP,
)
READ_ERRORS = MetricSpec(
    "nodemedic_cgroup_read_errors_total",
    "cgroup values skipped because a file was missing, unreadable, garbage, or the pod vanished "
    "mid-read (reason = missing, permission, parse, vanished, io).",
    "counter",
    ("reason",),
)
CGROUPS = MetricSpec(
    "nodemedic_cgroup_cgroups",
    "kubepods cgroups found this tick, by level: pod and container (read) and sandbox (the "
    "runtime's pause container: not read, its usage is in its pod's cgroup).",
    "gauge",
    ("level",),
)
ATTRIBUTION = MetricSpec(
    "nodemedic_cgroup_pod_attribution",
    "1 when this tick's cgroups were attributed to namespace/pod/container with the kubelet's "
    "pod list, 0 when only pod UIDs and container IDs are known.",
    "gauge",
)

# Per-cgroup series, in the order build_families unpacks them.
CGROUP_SERIES = (
    MEMORY_USAGE,
    MEMORY_WORKING_SET,
    MEMORY_LIMIT,
    OOM_KILLS,
    OOM_EVENTS,
    CPU_USAGE,
    CFS_PERIODS,
    CFS_THROTTLED_PERIODS,
    CFS_THROTTLED_SECONDS,
    CPU_QUOTA,
    PRESSURE_AVG10,
    PRESSURE_SECONDS,
)
ALL_METRICS = (*CGROUP_SERIES, READ_ERRORS, CGROUPS, ATTRIBUTION, CGROUP_PODS_WITHOUT_VALUES)


@runtime_checkable
class PodLister(Protocol):
    """What the cgroup collector needs from ``ctx.kubelet`` (agent.kubelet_client).

    A client with an int ``pods_generation`` that changes whenever the pod list does (as
    KubeletClient has) lets the collector keep limit files between reads; without one they are
    read every time.
    """

    async def pods(self) -> list[PodRef]: ...


def build_families(
    result: NodeScan, pods: Mapping[str, PodRef] | None
) -> tuple[list[Family], int, int]:
    """Families for one scan; returns (families, pod cgroups, container cgroups).

    Samples are appended straight to ``Family.samples`` with one shared label tuple per cgroup:
    at 250 pods x 2 containers this runs for ~10,000 samples every tick.
    """
    fams = [spec.family() for spec in CGROUP_SERIES]
    (usage, ws, limit, kills, events, cpu, periods, throttled, throttled_s, quota, p_avg, p_tot) = (
        f.samples for f in fams
    )
    n_pods = n_containers = 0
    for s in result.stats:
        ref = pods.get(s.uid) if pods else None
        cid = s.container_id
        if cid:
            n_containers += 1
            container = ref.containers.get(cid, cid) if ref is not None else cid
        else:
            n_pods += 1
            container = ""
        lv: LabelValues = (
            (ref.namespace, ref.name, s.uid, container, s.qos)
            if ref is not None
            else ("", "", s.uid, container, s.qos)
        )
        if s.memory_usage is not None:
            usage.append((lv, float(s.memory_usage)))
            working_set = s.working_set
            if working_set is not None:
                ws.append((lv, float(working_set)))
        if s.memory_limit is not None:
            limit.append((lv, float(s.memory_limit)))
        if s.oom_kills is not None:
            kills.append((lv, float(s.oom_kills)))
        if s.oom_events is not None:
            events.append((lv, float(s.oom_events)))
        if s.cpu_usage_seconds is not None:
            cpu.append((lv, s.cpu_usage_seconds))
        if s.cfs_periods is not None and s.cfs_throttled_periods is not None:
            periods.append((lv, float(s.cfs_periods)))
            throttled.append((lv, float(s.cfs_throttled_periods)))
            if s.cfs_throttled_seconds is not None:
                throttled_s.append((lv, s.cfs_throttled_seconds))
        if s.cpu_quota_cores is not None:
            quota.append((lv, s.cpu_quota_cores))
        for resource, kind, ratio, seconds in s.psi:
            plv = (*lv, resource, kind)
            p_avg.append((plv, ratio))
            p_tot.append((plv, seconds))
    return fams, n_pods, n_containers


@register("cgroup", default_enabled=True)
class CgroupCollector(Collector):
    """Per-pod and per-container cgroup metrics for cgroup v1, v2 and hybrid hosts."""

    help = "Memory, OOM, CPU, CFS throttling and PSI per pod and container from the cgroupfs."
    metrics: ClassVar[Sequence[MetricSpec]] = ALL_METRICS

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self._errors = dict.fromkeys(REASONS, 0)
        self._kubelet_ok: bool | None = None
        self._kubelet_cannot_see: str | None = None
        self._unreadable: dict[str, str] = {}
        self._gaps: dict[str, object] = {}  # pods without any readable value, for /status
        self._logged: set[str] = set()
        self._last: list[Family] | None = None
        self._last_at = 0.0
        # True while a worker thread reads the tree. A timed-out collect() cannot stop its
        # thread, so a stuck cgroupfs must not get a new thread every tick.
        self._reading = False
        # Directory listings reused while unchanged; everything re-listed every 6th read (a
        # minute at the default interval) in case a swap slipped past the cache's key.
        self._listings = ListingCache(full_every=6)
        # Limit files (memory.max, cpu.max, v1 limit/quota/period) kept between reads: they
        # change when the kubelet resizes a pod (then its /pods body changes, see _read) or by
        # hand, which every 10th read (5 minutes at the default interval) catches.
        self._limits = LimitCache(full_every=LIMITS_FULL_EVERY)
        self._limits_generation: tuple[object, int] | None = None  # pod list read after

    async def _pods(self) -> dict[str, PodRef] | None:
        """UID -> PodRef from the shared kubelet client, or None when absent or failing."""
        client = self.ctx.kubelet
        if client is None or not isinstance(client, PodLister):
            return None
        try:
            refs = await asyncio.wait_for(client.pods(), timeout=self.timeout / 2)
        except Exception as exc:  # any kubelet failure only costs us attribution
            reason = getattr(exc, "cannot_see", None)
            self._kubelet_cannot_see = reason if isinstance(reason, str) else None
            if self._kubelet_ok is not False:
                log.warning(
                    "cgroup series lose namespace/pod names: kubelet pod list unavailable",
                    error=str(exc) or type(exc).__name__,
                )
            self._kubelet_ok = False
            return None
        if self._kubelet_ok is False:
            log.info("kubelet pod list available again; cgroup series attributed")
        self._kubelet_ok = True
        self._kubelet_cannot_see = None
        return {r.uid.lower(): r for r in refs}

    def _generation(self) -> tuple[object, int] | None:
        """(kubelet client, its ``pods_generation``), None when it has no such counter."""
        client = self.ctx.kubelet
        generation = getattr(client, "pods_generation", None)
        return (client, generation) if type(generation) is int else None

    async def collect(self) -> list[Family]:
        # --cgroup.min-interval: on big nodes reading every cgroup file every tick costs more
        # than the agent's CPU budget, so ticks closer than that to the last read re-serve it
        # (counters are then up to that old; the second of slack absorbs tick jitter).
        min_interval = self.ctx.settings.cgroup_min_interval
        now = time.monotonic()
        if self._last is not None and now - self._last_at < min_interval - 1.0:
            return list(self._last)
        families = await self._read()
        self._last, self._last_at = families, now
        return list(families)

    def status(self) -> dict[str, object]:
        return dict(self._gaps)

    def unreadable(self) -> dict[str, str]:
        """The per-cgroup metrics, while a cgroup file or the kubelet's pod list is refused."""
        return dict(self._unreadable)

    def _scan(self, root: Path) -> NodeScan:
        """Worker-thread body; the flag is set here, so a thread that never started (collect()
        cancelled first) cannot leave it set."""
        self._reading = True
        self._listings.procfs = str(self.ctx.settings.path_procfs)  # tells sandboxes apart
        try:
            return scan(root, psi=self.ctx.settings.cgroup_psi, cache=self._listings,
                        limits=self._limits)
        finally:
            self._reading = False

    async def _read(self) -> list[Family]:
        root = self.ctx.settings.path_cgroupfs
        if self._reading:
            raise RuntimeError(
                f"the previous read of {root} is still running (cgroupfs hanging?); not starting "
                "another"
            )
        # Limits are re-read when the pod list changed since they were last read (what the
        # shared client saw up to now, e.g. through the kubelet collector's fetch; a change
        # seen by the fetch running alongside this read makes the next read re-read them: a
        # resize shows in /pods once the kubelet has written the cgroup), and always while the
        # last fetch failed or the client cannot tell changes: nothing would tell us then.
        generation = self._generation() if self._kubelet_ok else None
        if generation is None or generation != self._limits_generation:
            self._limits.invalidate()
        self._limits_generation = generation
        pods, result = await asyncio.gather(self._pods(), asyncio.to_thread(self._scan, root))
        if pods is not None:  # the next read re-lists a pod whose new container it has not seen
            self._listings.expect({u: frozenset(p.containers) for u, p in pods.items()})
        if result.layout.mode == "none":
            raise RuntimeError(
                f"no cgroup hierarchy under {root} (expected cgroup.controllers, memory/, "
                "cpu/ or unified/); set --path.cgroupfs"
            )
        fams, n_pods, n_containers = await asyncio.to_thread(build_families, result, pods)
        for reason, count in result.errors.items():
            self._errors[reason] = self._errors.get(reason, 0) + count
        blind = PERMISSION if result.errors.get(PERMISSION) else self._kubelet_cannot_see
        self._unreadable = {m.name: blind for m in CGROUP_SERIES} if blind else {}
        for message in result.messages:
            # Log each distinct problem once (bounded), not every 10 s.
            if message not in self._logged and len(self._logged) < 1000:
                self._logged.add(message)
                log.warning("cgroup value skipped", detail=message)
        errors = READ_ERRORS.family()
        for reason, count in self._errors.items():
            errors.add((reason,), count)
        levels = CGROUPS.family()
        levels.add(("pod",), n_pods)
        levels.add(("container",), n_containers)
        levels.add(("sandbox",), result.sandboxes)
        attribution = ATTRIBUTION.family()
        attribution.add((), 1.0 if pods is not None else 0.0)
        gaps, self._gaps = report(CGROUP_PODS_WITHOUT_VALUES,
                                  cgroup_pods_without_values(result.stats, pods))
        return [*fams, errors, levels, attribution, gaps]
