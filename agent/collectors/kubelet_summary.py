"""Parsing the kubelet's /stats/summary into families: node and pod usage, filesystems, PSI.

Used by agent.collectors.kubelet (its ``stats_summary`` endpoint); split out of it so that the
collector's scheduling and health logic reads in one sitting. Values the summary leaves out are
left out (never zero-filled), and all-zero PSI totals are missing data (see ``_reads_psi``).

:func:`decode_summary` decodes only what is read here: of each pod entry its ``podRef``, ``cpu``,
``memory``, ``io`` and ``ephemeral-storage`` (msgspec skips the containers, volumes and network
sections without building them: ~1.5 ms instead of ~11 ms of ``json.loads`` for a 250-pod
summary of 1.2 MB, and a tenth of the garbage). A body that does not fit that shape, or that
only Python's JSON reads (NaN, numbers beyond a float, UTF-16), is decoded as plain JSON instead,
so every body gives the same families as ``json.loads`` would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from agent.kubelet_client import decode_json
from agent.structs.metrics import Family, MetricSpec

_POD = ("namespace", "pod", "uid")
_PSI = ("resource", "kind")

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


class KubeletBadSummary(ValueError):
    """/stats/summary decoded but is not a Summary object."""


# --- /stats/summary ------------------------------------------------------------------------------
class _Pod(msgspec.Struct):
    """The parts of a summary pod entry read here (Any: the readers below check the types)."""

    pod_ref: Any = msgspec.field(default=None, name="podRef")
    cpu: Any = None
    memory: Any = None
    io: Any = None
    ephemeral_storage: Any = msgspec.field(default=None, name="ephemeral-storage")


class _Summary(msgspec.Struct):
    node: Any = None
    pods: list[_Pod] = msgspec.field(default_factory=list)


_DECODER = msgspec.json.Decoder(_Summary)
# (JSON name, attribute) of each kept pod field, from _Pod itself: declared once.
_POD_FIELDS = tuple((f.encode_name, f.name) for f in msgspec.structs.fields(_Pod))


def decode_summary(body: bytes) -> Any:
    """/stats/summary reduced to what :func:`summary_families` and the pod-gap report read, as
    plain JSON values (a ``null`` and an absent field read the same to them). Falls back to a
    plain JSON decode for any body the typed decode refuses (see the module docstring)."""
    try:
        doc = _DECODER.decode(body)
    except msgspec.DecodeError:  # ValidationError (a body of another shape) is one too
        return decode_json(body)
    return {"node": doc.node,
            "pods": [{key: getattr(p, attr) for key, attr in _POD_FIELDS} for p in doc.pods]}


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
