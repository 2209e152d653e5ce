"""The metric catalogue check-rules validates rule files against: names, types and labels.

:data:`AGREED_METRICS` are the collector metrics agreed between engineers; :func:`default_catalogue`
overlays what the registered collectors declare (a collector's own MetricSpec always wins);
tests build their own with :func:`catalogue_from_specs`. ``unknown_metric`` words the "did you
mean" message for a name that is not in a catalogue.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.structs.metrics import MetricSpec


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What check-rules knows about a metric; ``None`` means "not known yet, do not check"."""

    type: str | None
    labelnames: tuple[str, ...] | None


Catalogue = Mapping[str, MetricInfo]

_CG = ("namespace", "pod", "uid", "container", "qos")
_LB = ("namespace", "service", "port")
# The collector metrics agreed between engineers (names.md). Used where a collector does not
# declare its metrics yet; a collector's own MetricSpec always wins.
AGREED_METRICS: dict[str, MetricInfo] = {
    **{n: MetricInfo("gauge", _CG) for n in (
        "nodemedic_container_memory_usage_bytes", "nodemedic_container_memory_working_set_bytes",
        "nodemedic_container_memory_limit_bytes", "nodemedic_container_cpu_quota_cores")},
    **{n: MetricInfo("counter", _CG) for n in (
        "nodemedic_container_oom_kills_total", "nodemedic_container_oom_events_total",
        "nodemedic_container_cpu_usage_seconds_total",
        "nodemedic_container_cpu_cfs_periods_total",
        "nodemedic_container_cpu_cfs_throttled_periods_total",
        "nodemedic_container_cpu_cfs_throttled_seconds_total")},
    "nodemedic_container_pressure_avg10_ratio": MetricInfo("gauge", (*_CG, "resource", "kind")),
    "nodemedic_container_pressure_seconds_total": MetricInfo(
        "counter", (*_CG, "resource", "kind")),
    "nodemedic_kubelet_up": MetricInfo("gauge", ()),
    "nodemedic_kubelet_healthz_duration_seconds": MetricInfo("gauge", ()),
    "nodemedic_kubelet_pods": MetricInfo("gauge", ("phase",)),
    "nodemedic_kubelet_pleg_relist_interval_seconds": MetricInfo("gauge", ()),
    "nodemedic_host_clock_synchronized": MetricInfo("gauge", ()),
    "nodemedic_host_clock_offset_seconds": MetricInfo("gauge", ()),
    "nodemedic_host_filesystem_avail_bytes": MetricInfo("gauge", ("path",)),
    "nodemedic_host_filesystem_size_bytes": MetricInfo("gauge", ("path",)),
    "nodemedic_host_filesystem_files_free": MetricInfo("gauge", ("path",)),
    "nodemedic_host_memory_available_bytes": MetricInfo("gauge", ()),
    "nodemedic_host_load1": MetricInfo("gauge", ()),
    "nodemedic_host_pressure_avg10_ratio": MetricInfo("gauge", ("resource", "kind")),
    "nodemedic_api_up": MetricInfo("gauge", ()),
    "nodemedic_node_condition": MetricInfo("gauge", ("condition", "status")),
    "nodemedic_node_unschedulable": MetricInfo("gauge", ()),
    "nodemedic_node_taint": MetricInfo("gauge", ("key", "effect")),
    "nodemedic_node_lease_age_seconds": MetricInfo("gauge", ()),
    "nodemedic_service_endpoint_connections": MetricInfo("gauge", (*_LB, "endpoint", "pod")),
    "nodemedic_service_endpoint_bytes_total": MetricInfo("counter", (*_LB, "endpoint", "pod")),
    "nodemedic_service_endpoint_expected_share": MetricInfo("gauge", (*_LB, "endpoint")),
    "nodemedic_service_skew_max_mean_ratio": MetricInfo("gauge", _LB),
    "nodemedic_service_skew_cv": MetricInfo("gauge", _LB),
    "nodemedic_service_skew_chi2_p_value": MetricInfo("gauge", _LB),
    "nodemedic_service_connections": MetricInfo("gauge", _LB),
    "nodemedic_service_chain_problems": MetricInfo("gauge", (*_LB, "problem")),
}


def catalogue_from_specs(specs: Iterable[MetricSpec]) -> dict[str, MetricInfo]:
    """Build a catalogue from metric specs (tests pass their own)."""
    return {s.name: MetricInfo(s.type, tuple(s.labelnames)) for s in specs}


def default_catalogue() -> dict[str, MetricInfo]:
    """Agreed metric names overlaid with what the registered collectors declare."""
    from agent.collectors import registry  # deferred: collectors import heavier modules

    out = dict(AGREED_METRICS)
    # A collector module broken mid-development must not break check-rules: the agreed names
    # still apply, and the daemon reports the broken collector itself.
    with contextlib.suppress(Exception):
        registry.load_builtin()
    for name, (_collector, spec) in registry.metric_catalogue().items():
        out[name] = MetricInfo(spec.type, tuple(spec.labelnames))
    return out


def unknown_metric(name: str, catalogue: Catalogue) -> str:
    near = difflib.get_close_matches(name, list(catalogue), n=1)
    return f"unknown metric {name!r}" + (f"; did you mean {near[0]}?" if near else "")
