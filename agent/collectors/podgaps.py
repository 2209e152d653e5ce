"""Pods a collector discovered but could read no value for: counted and named, never silent.

A pod whose cgroup directory exists but none of whose cgroup files could be read, or whose
/stats/summary entry carries no usage at all, has no series: a dashboard shows nothing and a
``sum by (namespace)`` counts it as zero. The ``cgroup`` and ``kubelet`` collectors count such
pods in a gauge each and name the first ``MAX_NAMED`` in /status (the collector's ``detail``),
so a pod without data reads as "no data", not as an idle pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.collectors.cgroupfs.read import CgroupStats
from agent.structs.metrics import Family, MetricSpec
from agent.structs.pods import PodRef

MAX_NAMED = 20

CGROUP_PODS_WITHOUT_VALUES = MetricSpec(
    "nodemedic_cgroup_pods_without_values",
    "Pod cgroups found this tick of which no value could be read (not the pod's nor any of its "
    "containers'): those pods have no series at all rather than zeros; /status names them.",
    "gauge",
)
KUBELET_PODS_WITHOUT_STATS = MetricSpec(
    "nodemedic_kubelet_pods_without_stats",
    "Pods listed in the kubelet's /stats/summary with no usage value (no CPU, memory or "
    "ephemeral storage): those pods have no usage series rather than zeros; /status names them.",
    "gauge",
)

_CGROUP_VALUES = ("memory_usage", "memory_limit", "oom_kills", "oom_events", "cpu_usage_seconds",
                  "cfs_periods", "cpu_quota_cores")


def report(spec: MetricSpec, names: Sequence[str]) -> tuple[Family, dict[str, Any]]:
    """The gauge for ``names`` and the /status detail naming the first of them."""
    fam = spec.family()
    fam.add((), len(names))
    return fam, {"pods_without_values": len(names),
                 "pods_without_values_named": sorted(names)[:MAX_NAMED]}


def cgroup_pods_without_values(stats: Iterable[CgroupStats],
                               pods: Mapping[str, PodRef] | None) -> list[str]:
    """``namespace/name`` (or the UID, unattributed) of each pod none of whose cgroups gave a
    value."""
    read: dict[str, bool] = {}
    for s in stats:
        has = bool(s.psi) or any(getattr(s, a) is not None for a in _CGROUP_VALUES)
        read[s.uid] = read.get(s.uid, False) or has
    out = []
    for uid, has in read.items():
        if not has:
            ref = pods.get(uid) if pods else None
            out.append(f"{ref.namespace}/{ref.name}" if ref is not None else uid)
    return out


def summary_pods_without_stats(doc: Any) -> list[str]:
    """``namespace/name`` of each /stats/summary pod entry with no usage value."""
    pods = doc.get("pods") if isinstance(doc, Mapping) else None
    out = []
    for pod in pods if isinstance(pods, list) else []:
        ref = pod.get("podRef") if isinstance(pod, Mapping) else None
        if not isinstance(ref, Mapping) or not all(
                isinstance(ref.get(k), str) for k in ("namespace", "name")):
            continue  # counted as skipped by the parser
        if not any(_number(pod, *keys) for keys in (("cpu", "usageNanoCores"),
                                                     ("memory", "workingSetBytes"),
                                                     ("ephemeral-storage", "usedBytes"))):
            out.append(f"{ref['namespace']}/{ref['name']}")
    return out


def _number(obj: Any, *keys: str) -> bool:
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return False
        obj = obj[k]
    return isinstance(obj, (int, float)) and not isinstance(obj, bool)
