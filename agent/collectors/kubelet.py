"""The ``kubelet`` collector: kubelet health, pods by phase, /stats/summary usage and PLEG health.

Built by agent.runtime.pipeline; talks to the kubelet through the shared
agent.kubelet_client.KubeletClient (``ctx.kubelet``), querying /healthz, /pods,
/stats/summary and the kubelet's own /metrics concurrently every tick.

An unhealthy or unreachable kubelet (refused connection, timeout, HTTP 5xx, a bad answer) is an
observation, not a collector failure: the collector succeeds and reports ``nodemedic_kubelet_up 0``
(with ``nodemedic_kubelet_scrape_success`` per endpoint and the client's request outcomes saying
why), so a rule such as "kubelet_up == 0 for 2m" keeps firing while the kubelet is down. When
every endpoint fails the collector is ``degraded()``: /status does not call it ok and
``nodemedic_collector_degraded`` is 1, while its observations are still exported. The
families of an endpoint that could not be read are left out (never zero-filled), and the reason is
logged when it changes.

A kubelet we cannot *see* is not a kubelet that is down: when /healthz fails because of our own
access (HTTP 401 or 403, a certificate that does not verify against --kubelet.ca-file, an
unreadable token file) the collector fails with agent.collectors.base.CannotSee, so
``nodemedic_kubelet_up`` is absent (not 0) and the kubelet rules freeze. The same failure on
another endpoint makes that endpoint's metrics ``unreadable()`` (missing data, not "no pods").
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import structlog
from prometheus_client.parser import text_string_to_metric_families

from agent.collectors.base import CannotSee, Collector, CollectorContext
from agent.collectors.podgaps import KUBELET_PODS_WITHOUT_STATS, report, summary_pods_without_stats
from agent.collectors.registry import register
from agent.kubelet_client import CLIENT_METRICS, KubeletError, PodList, get_or_create
from agent.structs.metrics import Family, MetricSpec

log = structlog.get_logger("nodemedic.collectors.kubelet")

_POD = ("namespace", "pod", "uid")
_PSI = ("resource", "kind")

UP = MetricSpec(
    "nodemedic_kubelet_up", "1 when the kubelet's /healthz answered ok this tick, else 0.", "gauge",
)
HEALTHZ_DURATION = MetricSpec(
    "nodemedic_kubelet_healthz_duration_seconds",
    "Time the kubelet's /healthz took to answer (or to fail).", "gauge",
)
SCRAPE_SUCCESS = MetricSpec(
    "nodemedic_kubelet_scrape_success",
    "1 when the kubelet endpoint (healthz, pods, stats_summary, metrics) was read and parsed "
    "this tick, else 0.", "gauge", ("endpoint",),
)
PODS = MetricSpec(
    "nodemedic_kubelet_pods", "Pods the kubelet runs, by phase (from /pods).", "gauge", ("phase",),
)
RESTARTS = MetricSpec(
    "nodemedic_kubelet_container_restarts_total",
    "Container restarts as the kubelet reports them (restartCount).", "counter",
    ("namespace", "pod", "container"),
)
WAITING = MetricSpec(
    "nodemedic_kubelet_containers_waiting",
    "Containers in the waiting state, by reason (CrashLoopBackOff, ImagePullBackOff, ...).",
    "gauge", ("reason",),
)
NODE_CPU_CORES = MetricSpec(
    "nodemedic_kubelet_node_cpu_usage_cores", "Node CPU usage in cores (/stats/summary).", "gauge",
)
NODE_CPU_SECONDS = MetricSpec(
    "nodemedic_kubelet_node_cpu_usage_seconds_total", "Node CPU time used (/stats/summary).",
    "counter",
)
NODE_MEM_WS = MetricSpec(
    "nodemedic_kubelet_node_memory_working_set_bytes",
    "Node memory working set, the figure the kubelet evicts on (/stats/summary).", "gauge",
)
NODE_MEM_AVAIL = MetricSpec(
    "nodemedic_kubelet_node_memory_available_bytes",
    "Node memory available as the kubelet computes it for memory.available evictions.", "gauge",
)
NODE_MEM_USAGE = MetricSpec(
    "nodemedic_kubelet_node_memory_usage_bytes", "Node memory usage incl. page cache.", "gauge",
)
NODE_MEM_RSS = MetricSpec("nodemedic_kubelet_node_memory_rss_bytes", "Node memory RSS.", "gauge")
NODE_SWAP = MetricSpec("nodemedic_kubelet_node_swap_usage_bytes", "Node swap in use.", "gauge")
NODE_FS_AVAIL = MetricSpec(
    "nodemedic_kubelet_node_fs_available_bytes",
    "Available bytes of the kubelet's filesystems: nodefs, imagefs, containerfs.", "gauge",
    ("fs",),
)
NODE_FS_CAP = MetricSpec(
    "nodemedic_kubelet_node_fs_capacity_bytes", "Capacity of the kubelet's filesystems.", "gauge",
    ("fs",),
)
NODE_FS_USED = MetricSpec(
    "nodemedic_kubelet_node_fs_used_bytes",
    "Bytes used (by the kubelet/runtime on imagefs and containerfs).", "gauge", ("fs",),
)
NODE_FS_INODES = MetricSpec(
    "nodemedic_kubelet_node_fs_inodes", "Inodes of the kubelet's filesystems.", "gauge", ("fs",),
)
NODE_FS_INODES_FREE = MetricSpec(
    "nodemedic_kubelet_node_fs_inodes_free", "Free inodes of the kubelet's filesystems.", "gauge",
    ("fs",),
)
NODE_PROCS = MetricSpec(
    "nodemedic_kubelet_node_processes", "Processes on the node (rlimit.curproc).", "gauge",
)
NODE_MAX_PIDS = MetricSpec(
    "nodemedic_kubelet_node_max_pids", "The node's PID limit (rlimit.maxpid).", "gauge",
)
NODE_PSI_AVG10 = MetricSpec(
    "nodemedic_kubelet_node_pressure_avg10_ratio",
    "Node PSI avg10 from /stats/summary (0-1), when the kubelet reports PSI.", "gauge", _PSI,
)
NODE_PSI_TOTAL = MetricSpec(
    "nodemedic_kubelet_node_pressure_seconds_total",
    "Node PSI total stall time from /stats/summary, when the kubelet reports PSI.", "counter",
    _PSI,
)
POD_CPU = MetricSpec(
    "nodemedic_kubelet_pod_cpu_usage_cores", "Pod CPU usage in cores (/stats/summary).", "gauge",
    _POD,
)
POD_MEM_WS = MetricSpec(
    "nodemedic_kubelet_pod_memory_working_set_bytes", "Pod memory working set (/stats/summary).",
    "gauge", _POD,
)
POD_EPHEMERAL = MetricSpec(
    "nodemedic_kubelet_pod_ephemeral_storage_used_bytes",
    "Pod ephemeral storage used (rootfs + logs + emptyDir), the figure evictions use.", "gauge",
    _POD,
)
POD_PSI_AVG10 = MetricSpec(
    "nodemedic_kubelet_pod_pressure_avg10_ratio",
    "Pod PSI avg10 from /stats/summary (0-1), when the kubelet reports PSI; only with "
    "--no-collector.cgroup (otherwise the cgroup collector is the per-pod PSI source).", "gauge",
    (*_POD, *_PSI),
)
PLEG_INTERVAL = MetricSpec(
    "nodemedic_kubelet_pleg_relist_interval_seconds",
    "Mean PLEG relist interval since the previous tick (lifetime mean on the first tick or after "
    "a kubelet restart), from kubelet_pleg_relist_interval_seconds.", "gauge",
)
PLEG_DURATION = MetricSpec(
    "nodemedic_kubelet_pleg_relist_duration_seconds",
    "Mean PLEG relist duration since the previous tick, from kubelet_pleg_relist_duration_seconds.",
    "gauge",
)
PLEG_AGE = MetricSpec(
    "nodemedic_kubelet_pleg_last_seen_age_seconds",
    "Seconds since PLEG was last seen active (kubelet_pleg_last_seen_seconds); the kubelet turns "
    "NotReady when this passes 3 minutes.", "gauge",
)
SKIPPED = MetricSpec(
    "nodemedic_kubelet_skipped_items_total",
    "Malformed items skipped in kubelet answers, by endpoint.", "counter", ("endpoint",),
)

_PHASES: Final = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_PLEG_FAMILIES: Final = (
    "kubelet_pleg_relist_interval_seconds",
    "kubelet_pleg_relist_duration_seconds",
    "kubelet_pleg_last_seen_seconds",
)
_ENDPOINTS: Final = ("healthz", "pods", "stats_summary", "metrics")
# What each endpoint (other than healthz) feeds: missing data when that endpoint cannot be seen.
_ENDPOINT_METRICS: Final[dict[str, tuple[MetricSpec, ...]]] = {
    "pods": (PODS, RESTARTS, WAITING),
    "stats_summary": (
        NODE_CPU_CORES, NODE_CPU_SECONDS, NODE_MEM_WS, NODE_MEM_AVAIL, NODE_MEM_USAGE,
        NODE_MEM_RSS, NODE_SWAP, NODE_FS_AVAIL, NODE_FS_CAP, NODE_FS_USED, NODE_FS_INODES,
        NODE_FS_INODES_FREE, NODE_PROCS, NODE_MAX_PIDS, NODE_PSI_AVG10, NODE_PSI_TOTAL,
        POD_CPU, POD_MEM_WS, POD_EPHEMERAL, POD_PSI_AVG10,
    ),
    "metrics": (PLEG_INTERVAL, PLEG_DURATION, PLEG_AGE),
}


class KubeletBadSummary(ValueError):
    """/stats/summary decoded but is not a Summary object."""


# --- /metrics (PLEG) -----------------------------------------------------------------------------
def parse_pleg(text: str) -> dict[str, tuple[float, float]]:
    """PLEG families from the kubelet's /metrics -> {family: (sum, count)}, or (value, 1) for a
    gauge. Only lines of those families are handed to the parser: /metrics of a busy kubelet is
    large and a stray bad line elsewhere must not hide PLEG health."""
    lines = [
        ln for ln in text.splitlines()
        if ln.startswith(("kubelet_pleg_", "# HELP kubelet_pleg_", "# TYPE kubelet_pleg_"))
    ]
    out: dict[str, tuple[float, float]] = {}
    for fam in text_string_to_metric_families("\n".join(lines) + "\n"):
        if fam.name not in _PLEG_FAMILIES:
            continue
        if fam.type in ("histogram", "summary"):
            s = {smp.name.removeprefix(fam.name): smp.value for smp in fam.samples}
            if "_sum" in s and "_count" in s:
                out[fam.name] = (s["_sum"], s["_count"])
        elif fam.samples:
            out[fam.name] = (fam.samples[0].value, 1.0)
    return out


# --- /stats/summary ------------------------------------------------------------------------------
def _num(obj: Any, *keys: str) -> float | None:
    """obj[k1][k2]... as a float, or None when any level is missing or not a number."""
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return None
        obj = obj[k]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return None
    try:
        return float(obj)
    except OverflowError:  # an integer beyond float range (valid JSON): drop just this value
        return None


def _add(fam: Family, labels: tuple[str, ...], value: float | None) -> None:
    if value is not None:
        fam.add(labels, value)


def _psi(fam_avg: Family, fam_total: Family | None, prefix: tuple[str, ...], stats: Any) -> None:
    """Add PSI of cpu/memory/io from a summary stats object (avg10 % -> ratio, total us -> s).

    The Summary API docs say ``total`` is in nanoseconds, but kubelets pass the kernel's
    microseconds through: the captured summary's node cpu ``some.total`` 34335662 is the same
    capture's cAdvisor ``container_pressure_cpu_waiting_seconds_total{id="/"} 34.335662``.
    """
    for res in ("cpu", "memory", "io"):
        for kind in ("some", "full"):
            avg10 = _num(stats, res, "psi", kind, "avg10")
            _add(fam_avg, (*prefix, res, kind), _scale(avg10, 0.01))
            if fam_total is not None:
                _add(fam_total, (res, kind), _scale(_num(stats, res, "psi", kind, "total"), 1e-6))


def _reads_psi(node: Any) -> bool:
    """Whether the kubelet reads PSI at all. On a cgroup v1 host with a v2 unified mount its
    cAdvisor reads none yet fills every PSI field with 0 (node and pods, avg and total), while
    /proc/pressure shows stalls: a real node's stall totals since boot are never all zero, so
    all-zero totals are missing data, not "no pressure"."""
    totals = [_num(node, res, "psi", kind, "total")
              for res in ("cpu", "memory", "io") for kind in ("some", "full")]
    return any(totals)


def _scale(v: float | None, factor: float) -> float | None:
    return None if v is None else v * factor


def summary_families(doc: Any, *, pod_psi: bool = True) -> tuple[list[Family], int]:
    """Families from a decoded /stats/summary and the number of pod entries skipped.

    ``pod_psi=False`` leaves out per-pod PSI: the collector passes it while the ``cgroup``
    collector runs, which reads the same kernel files per pod and per container (on a 250-pod
    node the kubelet's copy was 1,500 duplicate series)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("node"), Mapping):
        raise KubeletBadSummary("/stats/summary: expected an object with a node section")
    node = doc["node"]
    fams: dict[str, Family] = {}

    def fam(spec: MetricSpec) -> Family:
        if spec.name not in fams:
            fams[spec.name] = spec.family()
        return fams[spec.name]

    _add(fam(NODE_CPU_CORES), (), _scale(_num(node, "cpu", "usageNanoCores"), 1e-9))
    _add(fam(NODE_CPU_SECONDS), (), _scale(_num(node, "cpu", "usageCoreNanoSeconds"), 1e-9))
    _add(fam(NODE_MEM_WS), (), _num(node, "memory", "workingSetBytes"))
    _add(fam(NODE_MEM_AVAIL), (), _num(node, "memory", "availableBytes"))
    _add(fam(NODE_MEM_USAGE), (), _num(node, "memory", "usageBytes"))
    _add(fam(NODE_MEM_RSS), (), _num(node, "memory", "rssBytes"))
    _add(fam(NODE_SWAP), (), _num(node, "swap", "swapUsageBytes"))
    _add(fam(NODE_PROCS), (), _num(node, "rlimit", "curproc"))
    _add(fam(NODE_MAX_PIDS), (), _num(node, "rlimit", "maxpid"))
    runtime = node.get("runtime") if isinstance(node.get("runtime"), Mapping) else {}
    for fs_name, fs in (
        ("nodefs", node.get("fs")),
        ("imagefs", runtime.get("imageFs")),
        ("containerfs", runtime.get("containerFs")),
    ):
        _add(fam(NODE_FS_AVAIL), (fs_name,), _num(fs, "availableBytes"))
        _add(fam(NODE_FS_CAP), (fs_name,), _num(fs, "capacityBytes"))
        _add(fam(NODE_FS_USED), (fs_name,), _num(fs, "usedBytes"))
        _add(fam(NODE_FS_INODES), (fs_name,), _num(fs, "inodes"))
        _add(fam(NODE_FS_INODES_FREE), (fs_name,), _num(fs, "inodesFree"))
    psi = _reads_psi(node)
    if psi:
        _psi(fam(NODE_PSI_AVG10), fam(NODE_PSI_TOTAL), (), node)

    skipped = 0
    pods = doc.get("pods") or []
    if not isinstance(pods, list):
        raise KubeletBadSummary("/stats/summary: pods is not a list")
    for pod in pods:
        ref = pod.get("podRef") if isinstance(pod, Mapping) else None
        if not isinstance(ref, Mapping) or not all(
            isinstance(ref.get(k), str) for k in ("namespace", "name", "uid")
        ):
            skipped += 1
            continue
        labels = (ref["namespace"], ref["name"], ref["uid"])
        _add(fam(POD_CPU), labels, _scale(_num(pod, "cpu", "usageNanoCores"), 1e-9))
        _add(fam(POD_MEM_WS), labels, _num(pod, "memory", "workingSetBytes"))
        _add(fam(POD_EPHEMERAL), labels, _num(pod, "ephemeral-storage", "usedBytes"))
        if pod_psi and psi:
            _psi(fam(POD_PSI_AVG10), None, labels, pod)
    # A kubelet without PSI support (cgroup v1, < 1.33) gives no PSI: leave those families out.
    return [f for f in fams.values() if f.samples], skipped


# --- collector -----------------------------------------------------------------------------------
@register("kubelet")
class KubeletCollector(Collector):
    """Kubelet health, pods, resource usage and PLEG health over the kubelet's HTTP(S) API."""

    help = "kubelet /healthz, /pods, /stats/summary and PLEG relist health from its /metrics."
    metrics = (
        UP, HEALTHZ_DURATION, SCRAPE_SUCCESS, PODS, RESTARTS, WAITING,
        NODE_CPU_CORES, NODE_CPU_SECONDS, NODE_MEM_WS, NODE_MEM_AVAIL, NODE_MEM_USAGE,
        NODE_MEM_RSS, NODE_SWAP, NODE_FS_AVAIL, NODE_FS_CAP, NODE_FS_USED, NODE_FS_INODES,
        NODE_FS_INODES_FREE, NODE_PROCS, NODE_MAX_PIDS, NODE_PSI_AVG10, NODE_PSI_TOTAL,
        POD_CPU, POD_MEM_WS, POD_EPHEMERAL, POD_PSI_AVG10,
        PLEG_INTERVAL, PLEG_DURATION, PLEG_AGE, SKIPPED, KUBELET_PODS_WITHOUT_STATS,
        *CLIENT_METRICS,
    )

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self._owns_client = not ctx.kubelet
        self.client = get_or_create(ctx)
        self.skipped: Counter[str] = Counter()
        # endpoint -> error message of this tick (None when fine); read by /status and tests.
        self.last_errors: dict[str, str | None] = dict.fromkeys(_ENDPOINTS)
        self._pleg_prev: dict[str, tuple[float, float]] = {}
        self._unreadable: dict[str, str] = {}
        self._degraded: str | None = None
        self._gaps: dict[str, Any] = {}  # /stats/summary pods without any usage value
        # The cgroup collector is on by default; when it runs, its PSI is the per-pod source.
        self._pod_psi = not ctx.settings.collector_enabled("cgroup", True)

    async def collect(self) -> list[Family]:
        health, pods, summary, pleg = await asyncio.gather(
            self.client.probe_healthz(),
            self.client.pod_list(),
            self._summary(),
            self._pleg(),
            return_exceptions=True,
        )
        fams: list[Family] = []
        results: dict[str, str | None] = {}

        if isinstance(health, BaseException):
            raise health  # probe_healthz() never raises; anything else is a bug worth failing on
        seconds, error, _ = health
        self._unreadable = {}
        if error is not None and error.cannot_see:
            errors: dict[str, str | None] = {"healthz": str(error)}
            for ep, r in (("pods", pods), ("stats_summary", summary), ("metrics", pleg)):
                errors[ep] = str(r) if isinstance(r, KubeletError) else None
            self.last_errors = errors
            raise CannotSee(
                error.cannot_see,
                f"cannot see the kubelet, its health is unknown (not reported as down): {error}",
            )
        ok = error is None
        results["healthz"] = None if ok else str(error)
        up, dur = UP.family(), HEALTHZ_DURATION.family()
        up.add((), 1 if ok else 0)
        dur.add((), seconds)
        fams += [up, dur]

        if isinstance(pods, PodList):
            results["pods"] = None
            fams += self._pod_families(pods)
        else:
            results["pods"] = self._error(pods)
        if isinstance(summary, tuple):
            results["stats_summary"] = None
            fams += summary[0]
            self.skipped["stats_summary"] += summary[1]
        else:
            results["stats_summary"] = self._error(summary)
            self._gaps = {}
        if isinstance(pleg, dict):
            results["metrics"] = None
            fams += self._pleg_families(pleg)
        else:
            results["metrics"] = self._error(pleg)

        for ep, result in (("pods", pods), ("stats_summary", summary), ("metrics", pleg)):
            reason = result.cannot_see if isinstance(result, KubeletError) else None
            if reason:
                self._unreadable.update(dict.fromkeys((m.name for m in _ENDPOINT_METRICS[ep]),
                                                      reason))
        success = SCRAPE_SUCCESS.family()
        for ep in _ENDPOINTS:
            success.add((ep,), 0 if results[ep] else 1)
            if results[ep] != self.last_errors.get(ep):
                if results[ep]:
                    log.warning("kubelet_endpoint_failed", endpoint=ep, error=results[ep])
                else:
                    log.info("kubelet_endpoint_recovered", endpoint=ep)
        self.last_errors = results
        failed = [f"{ep}: {results[ep]}" for ep in _ENDPOINTS if results[ep]]
        self._degraded = ("every kubelet endpoint failed: " + "; ".join(failed)
                          if len(failed) == len(_ENDPOINTS) else None)
        skipped = SKIPPED.family()
        for ep in ("pods", "stats_summary"):
            skipped.add((ep,), self.skipped[ep])
        fams += [success, skipped, *self.client.families()]
        return fams

    def status(self) -> dict[str, Any]:
        """For /status: why each kubelet endpoint failed this tick (None when it was read)."""
        return {"kubelet_url": self.client.base_url, "endpoint_errors": dict(self.last_errors),
                **self._gaps}

    def unreadable(self) -> dict[str, str]:
        """Metrics of endpoints refused to us this tick (401/403/TLS), as missing data."""
        return dict(self._unreadable)

    def degraded(self) -> str | None:
        """Set while no endpoint answers: kubelet_up 0 is exported, but the collector is not ok."""
        return self._degraded

    @staticmethod
    def _error(result: object) -> str:
        """Message of an expected failure; unexpected exceptions (bugs) propagate."""
        if isinstance(result, (KubeletError, ValueError)):
            return str(result)
        if isinstance(result, BaseException):
            raise result
        return f"unexpected result {type(result).__name__}"

    async def _summary(self) -> tuple[list[Family], int]:
        doc = await self.client.get_json("/stats/summary")
        fams, skipped = summary_families(doc, pod_psi=self._pod_psi)
        gaps, self._gaps = report(KUBELET_PODS_WITHOUT_STATS, summary_pods_without_stats(doc))
        return [*fams, gaps], skipped

    async def _pleg(self) -> dict[str, tuple[float, float]]:
        text = await self.client.get_text("/metrics")
        return await asyncio.to_thread(parse_pleg, text)

    def _pod_families(self, pods: PodList) -> list[Family]:
        self.skipped["pods"] += pods.skipped
        phases: Counter[str] = Counter(dict.fromkeys(_PHASES, 0))
        waiting: Counter[str] = Counter()
        restarts = RESTARTS.family()
        for p in pods.pods:
            phases[p.ref.phase or "Unknown"] += 1
            for cname, n in p.restarts.items():
                restarts.add((p.ref.namespace, p.ref.name, cname), n)
            for reason in p.waiting.values():
                waiting[reason] += 1
        by_phase = PODS.family()
        for phase, n in sorted(phases.items()):
            by_phase.add((phase,), n)
        wait = WAITING.family()
        for reason, n in sorted(waiting.items()):
            wait.add((reason,), n)
        return [by_phase, restarts, wait]

    def _pleg_families(self, pleg: dict[str, tuple[float, float]]) -> list[Family]:
        fams: list[Family] = []
        for name, spec in (
            ("kubelet_pleg_relist_interval_seconds", PLEG_INTERVAL),
            ("kubelet_pleg_relist_duration_seconds", PLEG_DURATION),
        ):
            if name not in pleg:
                continue
            total, count = pleg[name]
            prev = self._pleg_prev.get(name)
            self._pleg_prev[name] = (total, count)
            # Mean over the last tick's relists; the lifetime mean when there is no usable
            # previous reading (first tick, kubelet restarted and reset its counters).
            if prev is not None and count > prev[1] and total >= prev[0]:
                mean = (total - prev[0]) / (count - prev[1])
            elif count > 0:
                mean = total / count
            else:
                continue
            f = spec.family()
            f.add((), mean)
            fams.append(f)
        if "kubelet_pleg_last_seen_seconds" in pleg:
            f = PLEG_AGE.family()
            f.add((), max(0.0, time.time() - pleg["kubelet_pleg_last_seen_seconds"][0]))
            fams.append(f)
        return fams

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()
