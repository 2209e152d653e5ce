"""The ``kubelet`` collector: kubelet health, pods by phase, /stats/summary usage and PLEG health.

Built by agent.runtime.pipeline; talks to the kubelet through the shared
agent.kubelet_client.KubeletClient (``ctx.kubelet``), querying /healthz, /pods,
/stats/summary and the kubelet's own /metrics concurrently every tick (/stats/summary at most
once per ``--kubelet.summary-min-interval``, its families re-served in between — never on a
tick whose /healthz failed: the kubelet's last figures are not exported beside ``kubelet_up 0``).

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
from typing import Any, Final, NamedTuple

import structlog
from prometheus_client.parser import text_string_to_metric_families

from agent.collectors.base import CannotSee, Collector, CollectorContext
from agent.collectors.kubelet_summary import (
    NODE_CPU_CORES,
    NODE_CPU_SECONDS,
    NODE_FS_AVAIL,
    NODE_FS_CAP,
    NODE_FS_INODES,
    NODE_FS_INODES_FREE,
    NODE_FS_USED,
    NODE_MAX_PIDS,
    NODE_MEM_AVAIL,
    NODE_MEM_RSS,
    NODE_MEM_USAGE,
    NODE_MEM_WS,
    NODE_PROCS,
    NODE_PSI_AVG10,
    NODE_PSI_TOTAL,
    NODE_SWAP,
    POD_CPU,
    POD_EPHEMERAL,
    POD_MEM_WS,
    POD_PSI_AVG10,
    KubeletBadSummary,
    decode_summary,
    summary_families,
)
from agent.collectors.podgaps import KUBELET_PODS_WITHOUT_STATS, report, summary_pods_without_stats
from agent.collectors.registry import register
from agent.kubelet_client import CLIENT_METRICS, KubeletError, PodList, get_or_create
from agent.structs.metrics import Family, MetricSpec

log = structlog.get_logger("nodemedic.collectors.kubelet")

__all__ = ["KubeletBadSummary", "KubeletCollector", "parse_pleg", "summary_families"]

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


class _SummaryRead(NamedTuple):
    """One tick's /stats/summary families: read now (``fresh``) or re-served from the last read."""

    families: list[Family]
    skipped: int  # pod entries skipped by this read (0 when re-served)
    fresh: bool


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
        # The families of the last /pods decode: the client returns the same PodList while the
        # body is unchanged, and the same families then cost the rules and the render nothing.
        self._pod_fams: tuple[PodList, list[Family]] | None = None
        self._summary_read: tuple[float, list[Family]] | None = None  # (monotonic, families)

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
        if isinstance(summary, _SummaryRead) and not (ok or summary.fresh):
            # /healthz failed and this summary is an earlier read re-served: exporting it beside
            # kubelet_up 0 would show the dead kubelet's pods as still using what they used.
            # Missing data instead, and the next tick asks again (no waiting out the interval).
            self._summary_read = None
            results["stats_summary"] = ("not re-served while /healthz fails (the last read is "
                                        "from before this tick)")
            self._gaps = {}
        elif isinstance(summary, _SummaryRead):
            results["stats_summary"] = None
            fams += summary.families
            self.skipped["stats_summary"] += summary.skipped
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

    async def _summary(self) -> _SummaryRead:
        """/stats/summary's families, the pod entries skipped, and whether it was read now; at
        most one read per --kubelet.summary-min-interval (a 250-pod summary is ~0.9 MB of JSON,
        and each read makes the kubelet gather every container's stats): ticks in between
        re-serve the last read's very families (the second of slack absorbs tick jitter). A
        failed read is retried on the next tick."""
        now, every = time.monotonic(), self.ctx.settings.kubelet_summary_min_interval
        last, self._summary_read = self._summary_read, None
        if last is not None and now - last[0] < every - 1.0:
            self._summary_read = last
            return _SummaryRead(list(last[1]), 0, fresh=False)
        doc = await self.client.get_json("/stats/summary", decode_summary)
        fams, skipped = summary_families(doc, pod_psi=self._pod_psi)
        gaps, self._gaps = report(KUBELET_PODS_WITHOUT_STATS, summary_pods_without_stats(doc))
        out = [*fams, gaps]
        self._summary_read = (now, out)
        return _SummaryRead(list(out), skipped, fresh=True)

    async def _pleg(self) -> dict[str, tuple[float, float]]:
        text = await self.client.get_text("/metrics")
        return await asyncio.to_thread(parse_pleg, text)

    def _pod_families(self, pods: PodList) -> list[Family]:
        self.skipped["pods"] += pods.skipped
        last = self._pod_fams
        if last is not None and last[0] is pods:
            return list(last[1])
        fams = self._build_pod_families(pods)
        self._pod_fams = (pods, fams)
        return list(fams)

    @staticmethod
    def _build_pod_families(pods: PodList) -> list[Family]:
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
