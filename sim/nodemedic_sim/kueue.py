"""What Kueue's Topology-Aware Scheduling sees of a failed node, so nodemedic can trigger it fast.

Used by the failover tests and docs (and any tool that wants the same view): pure, no I/O.
Kueue (TASFailedNodeReplacement) replaces *one* failed node of a workload instead of evicting the
whole workload. Its node-failure controller watches Nodes and marks a node of a workload's
``topologyAssignment`` for replacement when
- the node is NotReady for 30 s (``NodeFailureDelay``, default), or
- it is NotReady and *all* of that workload's pods on it are terminating or terminated
  (feature ``TASReplaceNodeOnPodTermination``), or
- it carries an untolerated NoExecute taint, or NoSchedule / ``spec.unschedulable`` and all the
  workload's pods on it are terminating, failed or unscheduled (``TASReplaceNodeOnNodeTaints``).
A second failed node of the same workload makes Kueue evict the whole workload.
nodemedic's cordon + ``nodemedic.io/node-failed:NoSchedule`` + eviction of every pod on the node
satisfies the second and third conditions as soon as the node is judged failed, and it never
evicts pods on other nodes. ``assigned_nodes`` reads a topologyAssignment (v1beta1 ``domains`` or
v1beta2 ``slices``); ``replacement_ready`` is Kueue's "all pods terminating" test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HOSTNAME_LEVEL = "kubernetes.io/hostname"


def _level_values(entry: Mapping[str, Any], count: int) -> list[str]:
    if "universal" in entry:
        return [str(entry["universal"])] * count
    ind = entry.get("individual") or {}
    prefix, suffix = str(ind.get("prefix", "")), str(ind.get("suffix", ""))
    roots = [str(r) for r in ind.get("roots") or []]
    if len(roots) != count:
        raise ValueError(f"{len(roots)} roots for domainCount {count}")
    return [f"{prefix}{r}{suffix}" for r in roots]


def _pod_counts(counts: Mapping[str, Any], count: int) -> list[int]:
    if "universal" in counts:
        return [int(counts["universal"])] * count
    ind = counts.get("individual", counts.get("podCounts"))
    values = [int(v) for v in ind or []]
    if len(values) != count:
        raise ValueError(f"{len(values)} pod counts for domainCount {count}")
    return values


def assigned_nodes(assignment: Mapping[str, Any]) -> dict[str, int]:
    """Node name -> pods assigned there. Empty unless the lowest level is the hostname (only
    then does Kueue replace nodes). Raises ValueError on an inconsistent assignment."""
    levels = [str(x) for x in assignment.get("levels") or []]
    if not levels or levels[-1] != HOSTNAME_LEVEL:
        return {}
    out: dict[str, int] = {}
    for domain in assignment.get("domains") or []:  # v1beta1
        values = domain.get("values") or []
        if len(values) != len(levels):
            raise ValueError("domain values do not match the levels")
        out[str(values[-1])] = out.get(str(values[-1]), 0) + int(domain.get("count", 0))
    for sl in assignment.get("slices") or []:  # v1beta2
        count = int(sl.get("domainCount", 0))
        per_level = sl.get("valuesPerLevel") or []
        if len(per_level) != len(levels):
            raise ValueError("valuesPerLevel does not match the levels")
        hosts = _level_values(per_level[-1], count)
        for host, pods in zip(hosts, _pod_counts(sl.get("podCounts") or {}, count), strict=True):
            out[host] = out.get(host, 0) + pods
    return out


def replacement_ready(pods_on_node: Iterable[Mapping[str, Any]]) -> bool:
    """Kueue's TASReplaceNodeOnPodTermination test for one workload's pods on a failed node:
    every one is terminating (deletionTimestamp) or terminated (Succeeded/Failed)."""
    for pod in pods_on_node:
        terminating = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        done = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if not (terminating or done):
            return False
    return True
