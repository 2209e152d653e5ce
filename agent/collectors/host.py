"""The ``host`` collector: CPU, load, memory, swap, filesystems, file handles, uptime, PSI, clock.

Built by agent.runtime.pipeline like every collector. Procfs files are read under
``settings.path_procfs`` (psutil is pointed there too), filesystems at ``settings.host_disk_paths``
(missing ones are reported with ``nodemedic_host_filesystem_present 0``, not an error), and the
clock state comes from the kernel's adjtimex(2), which ntpd/chronyd/systemd-timesyncd keep
up to date: a drifting clock breaks Lease heartbeats, TLS handshakes and token expiry.
Everything that touches files or syscalls runs in one worker thread per tick.

A source we may not read (EACCES/EPERM, psutil.AccessDenied) is not a source that went away: its
metrics are ``unreadable()`` (reason permission) for that tick, and a watched path whose
filesystem we may not stat gets no ``filesystem_present`` 0 (that would claim it is missing).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil
import structlog

from agent.collectors.base import Collector, CollectorContext
from agent.collectors.registry import register
from agent.structs.metrics import Family, MetricSpec

log = structlog.get_logger("nodemedic.collectors.host")

CPU_SECONDS = MetricSpec(
    "nodemedic_host_cpu_seconds_total", "CPU time of all CPUs by mode (from /proc/stat).",
    "counter", ("mode",),
)
CPU_USAGE = MetricSpec(
    "nodemedic_host_cpu_usage_ratio",
    "Busy share of all CPUs (0-1) since the previous tick; absent on the first tick.",
    "gauge",
)
CPUS = MetricSpec("nodemedic_host_cpus", "Number of logical CPUs.", "gauge")
LOAD1 = MetricSpec("nodemedic_host_load1", "1-minute load average.", "gauge")
LOAD5 = MetricSpec("nodemedic_host_load5", "5-minute load average.", "gauge")
LOAD15 = MetricSpec("nodemedic_host_load15", "15-minute load average.", "gauge")
MEM_TOTAL = MetricSpec("nodemedic_host_memory_total_bytes", "Total usable RAM.", "gauge")
MEM_AVAIL = MetricSpec(
    "nodemedic_host_memory_available_bytes",
    "Memory available for new work without swapping (MemAvailable).", "gauge",
)
SWAP_TOTAL = MetricSpec("nodemedic_host_swap_total_bytes", "Total swap space.", "gauge")
SWAP_USED = MetricSpec("nodemedic_host_swap_used_bytes", "Swap space in use.", "gauge")
FS_PRESENT = MetricSpec(
    "nodemedic_host_filesystem_present",
    "1 when a watched path (--host.disk-paths) exists and its filesystem was read, else 0.",
    "gauge", ("path",),
)
FS_AVAIL = MetricSpec(
    "nodemedic_host_filesystem_avail_bytes",
    "Bytes available to unprivileged users on the filesystem holding the path.", "gauge", ("path",),
)
FS_SIZE = MetricSpec(
    "nodemedic_host_filesystem_size_bytes", "Size of the filesystem holding the path.", "gauge",
    ("path",),
)
FS_FILES = MetricSpec(
    "nodemedic_host_filesystem_files", "Inodes of the filesystem holding the path.", "gauge",
    ("path",),
)
FS_FILES_FREE = MetricSpec(
    "nodemedic_host_filesystem_files_free", "Free inodes of the filesystem holding the path.",
    "gauge", ("path",),
)
FS_READONLY = MetricSpec(
    "nodemedic_host_filesystem_readonly", "1 when the filesystem holding the path is read-only.",
    "gauge", ("path",),
)
FDS_ALLOC = MetricSpec(
    "nodemedic_host_file_descriptors_allocated",
    "File handles allocated system-wide (/proc/sys/fs/file-nr).", "gauge",
)
FDS_MAX = MetricSpec(
    "nodemedic_host_file_descriptors_max", "System-wide file handle limit (fs.file-max).", "gauge",
)
UPTIME = MetricSpec("nodemedic_host_uptime_seconds", "Seconds since boot (/proc/uptime).", "gauge")
BOOT_TIME = MetricSpec(
    "nodemedic_host_boot_time_seconds", "Boot time, seconds since the epoch.", "gauge",
)
PSI_AVG10 = MetricSpec(
    "nodemedic_host_pressure_avg10_ratio",
    "System-wide PSI: share of the last 10 s that some/all tasks stalled on the resource (0-1).",
    "gauge", ("resource", "kind"),
)
PSI_TOTAL = MetricSpec(
    "nodemedic_host_pressure_seconds_total",
    "System-wide PSI: total seconds that some/all tasks stalled on the resource.",
    "counter", ("resource", "kind"),
)
CLOCK_SYNC = MetricSpec(
    "nodemedic_host_clock_synchronized",
    "1 when the kernel considers the clock synchronised by NTP (adjtimex: STA_UNSYNC clear and "
    "not TIME_ERROR), else 0.", "gauge",
)
CLOCK_OFFSET = MetricSpec(
    "nodemedic_host_clock_offset_seconds",
    "Time offset the NTP daemon last handed the kernel to slew away (adjtimex offset).", "gauge",
)
CLOCK_MAXERR = MetricSpec(
    "nodemedic_host_clock_maxerror_seconds",
    "Kernel's maximum error bound of the clock (grows 500 ppm while no NTP update arrives).",
    "gauge",
)
CLOCK_ESTERR = MetricSpec(
    "nodemedic_host_clock_esterror_seconds", "Kernel's estimated error of the clock.", "gauge",
)
READ_ERRORS = MetricSpec(
    "nodemedic_host_read_errors_total",
    "Host sources that could not be read or parsed and were skipped, by source.",
    "counter", ("source",),
)

_PSI_RESOURCES: Final = ("cpu", "memory", "io", "irq")


# --- adjtimex ------------------------------------------------------------------------------------
# struct timex from <sys/timex.h> (Linux, LP64 and ILP32 alike: C longs map to c_long). With
# modes=0 the call only reads, needs no privilege, and returns the clock state.
class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),  # the kernel reserves 11 more ints
    ]


_STA_UNSYNC: Final = 0x0040  # set by the kernel at boot and when maxerror passes 16 s
_STA_NANO: Final = 0x2000  # offset is in ns instead of us
_TIME_ERROR: Final = 5  # adjtimex return value: clock not synchronised


@dataclass(frozen=True, slots=True)
class ClockState:
    synchronized: bool
    offset_seconds: float
    maxerror_seconds: float
    esterror_seconds: float


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, looked up once: find_library runs ``ldconfig -p`` (a process) per call."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def read_clock() -> ClockState:
    """Read the kernel's NTP state with adjtimex(2); raise OSError when the call fails.

    ``offset`` is what the NTP daemon last asked the kernel to slew (the daemon's own estimate of
    the error, in us, or ns with STA_NANO); ``maxerror``/``esterror`` are in us. The clock counts
    as synchronised when STA_UNSYNC is clear and the kernel does not return TIME_ERROR: that is
    what ``timedatectl`` shows as "System clock synchronized" and node_exporter as
    ``node_timex_sync_status``.
    """
    tx = _Timex()
    tx.modes = 0
    state = _libc().adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return clock_state(state, tx.status, tx.offset, tx.maxerror, tx.esterror)


def clock_state(state: int, status: int, offset: int, maxerror: int, esterror: int) -> ClockState:
    """Interpret adjtimex's return value and struct fields (see :func:`read_clock`)."""
    unit = 1e-9 if status & _STA_NANO else 1e-6
    return ClockState(
        synchronized=state != _TIME_ERROR and not status & _STA_UNSYNC,
        offset_seconds=offset * unit,
        maxerror_seconds=maxerror * 1e-6,
        esterror_seconds=esterror * 1e-6,
    )


# --- procfs readers ------------------------------------------------------------------------------
def parse_pressure(text: str) -> dict[str, tuple[float, float]]:
    """``some avg10=1.50 ... total=123`` lines -> {kind: (avg10 ratio, total seconds)}."""
    out: dict[str, tuple[float, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        fields = dict(kv.split("=", 1) for kv in rest.split())
        # avg10 is a percentage; total is in microseconds.
        out[kind] = (float(fields["avg10"]) / 100.0, int(fields["total"]) / 1e6)
    if not out:
        raise ValueError("no some/full lines")
    return out


@dataclass
class HostReading:
    """Raw values read in the worker thread; turned into families on the loop."""

    cpu_times: dict[str, float] = field(default_factory=dict)
    cpus: int | None = None
    load: tuple[float, float, float] | None = None
    mem: tuple[int, int] | None = None  # total, available
    swap: tuple[int, int] | None = None  # total, used
    fs: dict[str, tuple[int, int, int, int, bool] | None] = field(default_factory=dict)
    fds: tuple[int, int] | None = None  # allocated, max
    uptime: float | None = None
    boot_time: float | None = None
    pressure: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    clock: ClockState | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, message)
    denied: set[str] = field(default_factory=set)  # sources refused to us (EACCES/EPERM)


# The metrics each source of read_host feeds (missing data when the source is refused to us).
_SOURCE_METRICS: Final[dict[str, tuple[MetricSpec, ...]]] = {
    "cpu": (CPU_SECONDS, CPU_USAGE, CPUS),
    "loadavg": (LOAD1, LOAD5, LOAD15),
    "meminfo": (MEM_TOTAL, MEM_AVAIL),
    "swap": (SWAP_TOTAL, SWAP_USED),
    "file_nr": (FDS_ALLOC, FDS_MAX),
    "uptime": (UPTIME, BOOT_TIME),
    "clock": (CLOCK_SYNC, CLOCK_OFFSET, CLOCK_MAXERR, CLOCK_ESTERR),
    "pressure": (PSI_AVG10, PSI_TOTAL),
    "filesystem": (FS_PRESENT, FS_AVAIL, FS_SIZE, FS_FILES, FS_FILES_FREE, FS_READONLY),
}


def read_host(procfs: Path, disk_paths: tuple[str, ...]) -> HostReading:
    """Read everything once; each source that fails is recorded in ``errors`` and skipped."""
    r = HostReading()

    def attempt(source: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except (OSError, ValueError, IndexError, KeyError, RuntimeError,
                psutil.AccessDenied) as exc:
            r.errors.append((source, f"{type(exc).__name__}: {exc}"))
            if _denied(exc):
                r.denied.add(source)

    def cpu() -> None:
        times = psutil.cpu_times()
        r.cpu_times = {k: float(v) for k, v in times._asdict().items()}
        r.cpus = psutil.cpu_count() or None

    def load() -> None:
        # Not psutil.getloadavg(): that is os.getloadavg() and ignores --path.procfs.
        a, b, c = (procfs / "loadavg").read_text().split()[:3]
        r.load = (float(a), float(b), float(c))

    def mem() -> None:
        vm = psutil.virtual_memory()
        r.mem = (int(vm.total), int(vm.available))

    def swap() -> None:
        sm = psutil.swap_memory()
        r.swap = (int(sm.total), int(sm.used))

    def fds() -> None:
        allocated, _unused, maximum = (procfs / "sys/fs/file-nr").read_text().split()[:3]
        r.fds = (int(allocated), int(maximum))

    def uptime() -> None:
        r.uptime = float((procfs / "uptime").read_text().split()[0])
        r.boot_time = float(psutil.boot_time())

    def clock() -> None:
        r.clock = read_clock()

    attempt("cpu", cpu)
    attempt("loadavg", load)
    attempt("meminfo", mem)
    attempt("swap", swap)
    attempt("file_nr", fds)
    attempt("uptime", uptime)
    attempt("clock", clock)
    for res in _PSI_RESOURCES:
        path = procfs / "pressure" / res
        try:
            r.pressure[res] = parse_pressure(path.read_text())
        except FileNotFoundError:
            continue  # kernel without PSI (or without irq PSI): nothing to report
        except (OSError, ValueError, KeyError) as exc:
            r.errors.append(("pressure", f"{path}: {type(exc).__name__}: {exc}"))
            if _denied(exc):
                r.denied.add("pressure")
    for p in disk_paths:
        try:
            st = os.statvfs(p)
        except FileNotFoundError:
            r.fs[p] = None
            continue
        except OSError as exc:
            if _denied(exc):  # unknown, not absent: no filesystem_present 0 for it
                r.denied.add("filesystem")
            else:
                r.fs[p] = None
            r.errors.append(("filesystem", f"{p}: {exc.strerror or exc}"))
            continue
        r.fs[p] = (
            st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, st.f_files, st.f_ffree,
            bool(st.f_flag & os.ST_RDONLY),
        )
    return r


def _denied(exc: BaseException) -> bool:
    """Our own rights were refused (EACCES, EPERM), as opposed to the source being broken."""
    return isinstance(exc, (PermissionError, psutil.AccessDenied)) or (
        isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM))


def _busy_ratio(prev: dict[str, float], cur: dict[str, float]) -> float | None:
    """Busy share between two cpu_times readings (idle and iowait count as not busy).

    guest/guest_nice are already inside user/nice in /proc/stat, so they are not added twice.
    """
    keys = [k for k in cur if k not in ("guest", "guest_nice")]
    total = sum(cur[k] - prev.get(k, 0.0) for k in keys)
    idle = sum(cur.get(k, 0.0) - prev.get(k, 0.0) for k in ("idle", "iowait"))
    if total <= 0:
        return None
    return min(1.0, max(0.0, (total - idle) / total))


@register("host")
class HostCollector(Collector):
    """Host resources via psutil, procfs and adjtimex."""

    help = "CPU, load, memory, swap, filesystems, file descriptors, uptime, PSI and clock sync."
    metrics = (
        CPU_SECONDS, CPU_USAGE, CPUS, LOAD1, LOAD5, LOAD15, MEM_TOTAL, MEM_AVAIL, SWAP_TOTAL,
        SWAP_USED, FS_PRESENT, FS_AVAIL, FS_SIZE, FS_FILES, FS_FILES_FREE, FS_READONLY,
        FDS_ALLOC, FDS_MAX, UPTIME, BOOT_TIME, PSI_AVG10, PSI_TOTAL, CLOCK_SYNC, CLOCK_OFFSET,
        CLOCK_MAXERR, CLOCK_ESTERR, READ_ERRORS,
    )

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.procfs = Path(ctx.settings.path_procfs)
        # psutil reads procfs through a module-wide path: set it only when it differs (a
        # non-default --path.procfs, or a reload back to /proc after one), so agents sharing a
        # process with the default never touch it.
        if str(self.procfs) != psutil.PROCFS_PATH:
            psutil.PROCFS_PATH = str(self.procfs)
        self.disk_paths = tuple(ctx.settings.host_disk_paths)
        self.read_errors: Counter[str] = Counter()
        self.last_errors: list[tuple[str, str]] = []
        self._prev_cpu: dict[str, float] | None = None
        self._missing_logged: set[str] = set()
        self.missing_paths: list[str] = []  # watched paths absent at the last tick
        self._unreadable: dict[str, str] = {}

    async def collect(self) -> list[Family]:
        if not self.procfs.is_dir():
            raise FileNotFoundError(f"procfs root {self.procfs} is not a directory")
        r = await asyncio.to_thread(read_host, self.procfs, self.disk_paths)
        for source, msg in r.errors:
            self.read_errors[source] += 1
            log.warning("host_read_failed", source=source, error=msg)
        self.last_errors = r.errors
        self._unreadable = {
            spec.name: "permission" for src in sorted(r.denied) for spec in _SOURCE_METRICS[src]
        }
        return self._families(r)

    def unreadable(self) -> dict[str, str]:
        """Metrics of sources refused to us this tick (EACCES/EPERM)."""
        return dict(self._unreadable)

    def status(self) -> dict[str, Any]:
        """For /status: sources skipped this tick and watched paths that do not exist."""
        return {
            "read_errors": [f"{src}: {msg}" for src, msg in self.last_errors],
            "missing_disk_paths": self.missing_paths,
        }

    def _families(self, r: HostReading) -> list[Family]:
        fams: list[Family] = []

        def one(spec: MetricSpec, value: float | None) -> None:
            if value is not None:
                f = spec.family()
                f.add((), value)
                fams.append(f)

        if r.cpu_times:
            f = CPU_SECONDS.family()
            for mode, secs in sorted(r.cpu_times.items()):
                f.add((mode,), secs)
            fams.append(f)
            if self._prev_cpu is not None:
                one(CPU_USAGE, _busy_ratio(self._prev_cpu, r.cpu_times))
            self._prev_cpu = r.cpu_times
        one(CPUS, r.cpus)
        if r.load is not None:
            one(LOAD1, r.load[0])
            one(LOAD5, r.load[1])
            one(LOAD15, r.load[2])
        if r.mem is not None:
            one(MEM_TOTAL, r.mem[0])
            one(MEM_AVAIL, r.mem[1])
        if r.swap is not None:
            one(SWAP_TOTAL, r.swap[0])
            one(SWAP_USED, r.swap[1])
        fs_specs = (FS_PRESENT, FS_AVAIL, FS_SIZE, FS_FILES, FS_FILES_FREE, FS_READONLY)
        present, avail, size, files, ffree, ro = (s.family() for s in fs_specs)
        self.missing_paths = [p for p, st in r.fs.items() if st is None]
        for path, st in r.fs.items():
            present.add((path,), 0 if st is None else 1)
            if st is None:
                if path not in self._missing_logged:
                    self._missing_logged.add(path)
                    log.info("host_disk_path_missing", path=path)
                continue
            avail.add((path,), st[0])
            size.add((path,), st[1])
            files.add((path,), st[2])
            ffree.add((path,), st[3])
            ro.add((path,), 1 if st[4] else 0)
        fams += [present, avail, size, files, ffree, ro]
        if r.fds is not None:
            one(FDS_ALLOC, r.fds[0])
            one(FDS_MAX, r.fds[1])
        one(UPTIME, r.uptime)
        one(BOOT_TIME, r.boot_time)
        if r.pressure:
            a10, tot = PSI_AVG10.family(), PSI_TOTAL.family()
            for res, kinds in r.pressure.items():
                for kind, (ratio, seconds) in sorted(kinds.items()):
                    a10.add((res, kind), ratio)
                    tot.add((res, kind), seconds)
            fams += [a10, tot]
        if r.clock is not None:
            one(CLOCK_SYNC, 1 if r.clock.synchronized else 0)
            one(CLOCK_OFFSET, r.clock.offset_seconds)
            one(CLOCK_MAXERR, r.clock.maxerror_seconds)
            one(CLOCK_ESTERR, r.clock.esterror_seconds)
        errs = READ_ERRORS.family()
        for source, n in sorted(self.read_errors.items()):
            errs.add((source,), n)
        fams.append(errs)
        return fams
