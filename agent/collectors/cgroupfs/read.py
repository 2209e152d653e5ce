"""Read one tick of per-pod and per-container cgroup statistics from a cgroupfs root.

Called (in a worker thread) by agent.collectors.cgroup every tick and by bench/cgroup_collect.py.
:func:`scan` detects the layout, discovers kubepods cgroups, and reads each control file once
with plain ``os.open`` (relative to the cgroup directory) and ``os.read``: the cheapest way to
read a kernfs file from Python, ~9 us per file on a real kernel. Files that are missing,
unreadable, garbage or that vanish mid-read are skipped and counted by reason in
:attr:`NodeScan.errors`; a cgroup whose listed directory disappears while it is read (pod
deleted) is dropped whole, so no half-read pod is reported. Keeping files open and re-reading
them with ``pread`` would be ~3x cheaper, but kernfs pins ~11 KB of kernel memory per open file
(~90 MB at 750 cgroups), so files are opened per read.

Limit files (v2 ``memory.max`` and ``cpu.max``, v1 ``memory.limit_in_bytes`` and
``cpu.cfs_quota_us`` + ``cpu.cfs_period_us``) change only when the kubelet resizes a pod or
someone writes them by hand, so a :class:`LimitCache` (one per collector) keeps each cgroup
directory's parsed limits between scans: 2 of the 6 files per v2 container cgroup are then not
opened. The collector invalidates it whenever the kubelet's pod list changed or could not be
fetched, and it re-reads everything every ``full_every``-th scan in case of a change made
outside the kubelet.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar, cast

from agent.collectors.cgroupfs.layout import (
    CgroupRef,
    Hierarchy,
    Layout,
    ListingCache,
    detect,
    discover,
)
from agent.collectors.cgroupfs.parse import (
    PSI_RESOURCES,
    ParseError,
    parse_int,
    parse_keyed,
    parse_psi,
    parse_v1_cfs_quota,
    parse_v1_memory_limit,
    parse_v2_cpu_max,
    parse_v2_max,
)

# Error reasons (label values of nodemedic_cgroup_read_errors_total).
MISSING = "missing"  # an expected file is absent while its cgroup still exists
PERMISSION = "permission"
PARSE = "parse"  # empty or garbage content
VANISHED = "vanished"  # the cgroup was removed between discovery and read (counted per cgroup)
IO = "io"  # any other OSError
REASONS = (MISSING, PERMISSION, PARSE, VANISHED, IO)

_READ_SIZE = 65536
_MAX_FILE = 1 << 20
# O_NONBLOCK: no effect on kernfs or regular files, but a FIFO in a bad tree cannot hang us.
_O_RDONLY = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_MESSAGES = 20

V1_MEMORY_FILES = (
    "memory.usage_in_bytes",
    "memory.stat",
    "memory.limit_in_bytes",
    "memory.oom_control",
)
V1_CPU_FILES = ("cpu.stat", "cpu.cfs_quota_us", "cpu.cfs_period_us")
V1_CPUACCT_FILES = ("cpuacct.usage",)
PSI_FILES = tuple(f"{r}.pressure" for r in PSI_RESOURCES)
V2_FILES = ("memory.current", "memory.stat", "memory.max", "memory.events", "cpu.stat", "cpu.max")
WATCHED_FILES = frozenset(
    V1_MEMORY_FILES + V1_CPU_FILES + V1_CPUACCT_FILES + V2_FILES + PSI_FILES
)

_V1_MEMSTAT_KEYS = (b"total_inactive_file",)
_V1_OOM_KEYS = (b"oom_kill",)
_V1_CPUSTAT_KEYS = (b"nr_periods", b"nr_throttled", b"throttled_time")
_V2_MEMSTAT_KEYS = (b"inactive_file",)
_V2_EVENTS_KEYS = (b"oom", b"oom_kill")
_V2_CPUSTAT_KEYS = (b"usage_usec", b"nr_periods", b"nr_throttled", b"throttled_usec")


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET  # "not cached", as opposed to a cached None ("no limit")
_T = TypeVar("_T")


class CgroupLimits:
    """The parsed limits of one cgroup directory: memory bytes (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``) and CPU cores (v2 ``cpu.max``, v1 quota / period); ``None`` is
    "no limit", :data:`UNSET` "not read yet"."""

    __slots__ = ("cpu", "memory")

    def __init__(self) -> None:
        self.memory: int | _Unset | None = UNSET
        self.cpu: float | _Unset | None = UNSET


class LimitCache:
    """Parsed limits of each cgroup directory, reused between scans until invalidated.

    A limit is cached only after its file was read and parsed (an unreadable or garbage limit
    file is read again next scan, never taken for "no limit"); ``None`` is a cached "no limit",
    distinct from :data:`UNSET`. Every cached value is dropped at the next :meth:`begin` after
    :meth:`invalidate` (the collector calls it when the kubelet's pod list changed, so a pod
    resize is seen on the read after the kubelet reports it, and when that list is
    unavailable, so without it limits are read every time), and at every ``full_every``-th
    :meth:`begin` after the last such full read (a change made outside the kubelet is seen
    within ``full_every`` reads). A directory is keyed by its path, which holds the pod UID and
    container ID, so a new container's limits are read at once; only directories used by the
    last scan stay cached, so the cache is bounded by the live cgroups. ``full_every=1``
    disables it.
    """

    def __init__(self, full_every: int = 10) -> None:
        self.full_every = max(1, full_every)
        self._values: dict[str, CgroupLimits] = {}
        self._used: dict[str, CgroupLimits] = {}
        self._since_full = 0  # scans since (and including) the last one that read every limit
        self._stale = True
        self.full = False  # whether the last begun scan re-reads every limit
        self.hits = 0  # limit values served from the cache by the last scan

    def invalidate(self) -> None:
        """Pod specs may have changed: the next scan re-reads every limit file."""
        self._stale = True

    def begin(self) -> None:
        self._since_full += 1
        self.full = self._stale or self.full_every == 1 or self._since_full > self.full_every
        if self.full:
            self._values = {}
            self._since_full = 1
        self._stale = False
        self._used = {}
        self.hits = 0

    def end(self) -> None:
        self._values = self._used  # only directories read this scan stay cached

    def get(self, directory: str) -> CgroupLimits | None:
        """The cached limits of ``directory`` (kept for the next scan), or None."""
        entry = self._values.get(directory)
        if entry is not None:
            self._used[directory] = entry
        return entry

    def store(self, directory: str) -> CgroupLimits:
        """A new entry for ``directory`` (which :meth:`get` did not find) to cache freshly
        parsed limits in."""
        entry = self._used[directory] = CgroupLimits()
        return entry

    def forget(self, directory: str) -> None:
        self._values.pop(directory, None)
        self._used.pop(directory, None)

    def __len__(self) -> int:
        return len(self._used)


class _Vanished(Exception):
    """The cgroup directory disappeared while we were reading it."""


class CgroupStats:
    """Values read for one cgroup; ``None`` means "not available" (never a made-up zero)."""

    __slots__ = (
        "cfs_periods",
        "cfs_throttled_periods",
        "cfs_throttled_seconds",
        "container_id",
        "cpu_quota_cores",
        "cpu_usage_seconds",
        "memory_inactive_file",
        "memory_limit",
        "memory_usage",
        "oom_events",
        "oom_kills",
        "psi",
        "qos",
        "uid",
    )

    def __init__(self, uid: str, container_id: str, qos: str) -> None:
        self.uid = uid
        self.container_id = container_id
        self.qos = qos
        self.memory_usage: int | None = None
        self.memory_inactive_file: int | None = None
        self.memory_limit: int | None = None  # None also when unlimited
        self.oom_kills: int | None = None
        self.oom_events: int | None = None
        self.cpu_usage_seconds: float | None = None
        self.cfs_periods: int | None = None
        self.cfs_throttled_periods: int | None = None
        self.cfs_throttled_seconds: float | None = None
        self.cpu_quota_cores: float | None = None  # None also when unlimited
        # (resource, kind, avg10 ratio, total seconds)
        self.psi: list[tuple[str, str, float, float]] = []

    @property
    def working_set(self) -> int | None:
        """usage - inactive_file, floored at 0, as cAdvisor and the kubelet compute it."""
        if self.memory_usage is None or self.memory_inactive_file is None:
            return None
        return max(0, self.memory_usage - self.memory_inactive_file)


@dataclass(slots=True)
class NodeScan:
    """Result of one :func:`scan`: the layout, per-cgroup stats, and errors by reason."""

    layout: Layout
    stats: list[CgroupStats] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)  # first few error details, for logs
    sandboxes: int = 0  # pod sandbox (pause) cgroups found and left out, see layout.discover


class _Reader:
    """Reads files of one cgroup, classifying failures; one instance per scan."""

    __slots__ = ("cached", "directory", "limits", "psi", "scan")

    def __init__(
        self, scan: NodeScan, psi: str = "container", limits: LimitCache | None = None
    ) -> None:
        self.scan = scan
        self.psi = psi  # "container", "pod" (pod cgroups only) or "off": --cgroup.psi
        self.limits = limits
        self.directory = ""  # the cgroup directory being read, for messages
        self.cached: CgroupLimits | None = None  # its cached limits, set per directory

    def enter(self, directory: str) -> None:
        """Start reading ``directory``."""
        self.directory = directory
        limits = self.limits
        self.cached = None if limits is None or limits.full else limits.get(directory)

    def hit(self) -> None:
        """A limit was served from the cache instead of being read."""
        assert self.limits is not None
        self.limits.hits += 1

    def remember(self) -> CgroupLimits | None:
        """The entry to cache this directory's freshly parsed limits in (None: no cache)."""
        if self.cached is None and self.limits is not None:
            self.cached = self.limits.store(self.directory)
        return self.cached

    def limit(self, h: Hierarchy, d: int, kind: Literal["memory", "cpu"], name: str,
              parse: Callable[[bytes], _T]) -> _T | _Unset:
        """The ``kind`` limit of this cgroup: cached, else file ``name`` read and parsed (and
        cached once parsed); UNSET when the file could not be read or parsed (counted)."""
        cached = self.cached
        if cached is not None and (value := getattr(cached, kind)) is not UNSET:
            self.hit()
            return cast("_T", value)
        data = self.read(h, d, name)
        if data is None:
            return UNSET
        try:
            parsed = parse(data)
        except ParseError as exc:
            self.bad(name, exc)
            return UNSET
        if (keep := self.remember()) is not None:
            setattr(keep, kind, parsed)
        return parsed

    def error(self, reason: str, message: str) -> None:
        errors = self.scan.errors
        errors[reason] = errors.get(reason, 0) + 1
        if len(self.scan.messages) < _MAX_MESSAGES:
            self.scan.messages.append(f"{reason}: {message}")

    def read(self, h: Hierarchy, dfd: int, name: str) -> bytes | None:
        """Content of file ``name`` in the cgroup directory open as ``dfd``, or None (counted)
        when it cannot be read.

        Files not present in the hierarchy's kubepods directory are not attempted at all.
        Raises _Vanished when the cgroup itself is gone. Opening relative to the directory fd
        saves the kernel a path walk per file, the biggest cost after kernfs's own open.
        """
        if name not in h.expected:
            return None
        try:
            fd = os.open(name, _O_RDONLY, dir_fd=dfd)
            try:
                data = os.read(fd, _READ_SIZE)
                if len(data) == _READ_SIZE:
                    whole = self._read_rest(fd, data)
                    if whole is None:
                        self.error(PARSE, f"{self.directory}/{name}: larger than {_MAX_FILE} bytes")
                        return None
                    data = whole
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            if not os.path.isdir(self.directory):
                raise _Vanished(self.directory) from None
            self.error(MISSING, f"{self.directory}/{name}")
            return None
        except PermissionError:
            self.error(PERMISSION, f"{self.directory}/{name}")
            return None
        except OSError as exc:
            # ENODEV: the cgroup was removed after open (kernfs node deactivated).
            if exc.errno == errno.ENODEV or not os.path.isdir(self.directory):
                raise _Vanished(self.directory) from None
            self.error(IO, f"{self.directory}/{name}: {exc.strerror}")
            return None
        return data

    @staticmethod
    def _read_rest(fd: int, first: bytes) -> bytes | None:
        """Rest of a file bigger than one read; None past _MAX_FILE (no control file is near
        that, but a fixture tree could hold a link to /dev/zero)."""
        chunks, total = [first], len(first)
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_FILE:
                return None
        return b"".join(chunks)

    def bad(self, name: str, exc: ParseError) -> None:
        self.error(PARSE, f"{self.directory}/{name}: {exc}")


def _read_v1_memory(r: _Reader, h: Hierarchy, d: int, s: CgroupStats) -> None:
    data = r.read(h, d, "memory.usage_in_bytes")
    if data is not None:
        try:
            s.memory_usage = parse_int(data)
        except ParseError as exc:
            r.bad("memory.usage_in_bytes", exc)
    data = r.read(h, d, "memory.stat")
    if data is not None:
        try:
            v = parse_keyed(data, _V1_MEMSTAT_KEYS).get(b"total_inactive_file")
            if v is None:
                raise ParseError("no total_inactive_file line")
            s.memory_inactive_file = v
        except ParseError as exc:
            r.bad("memory.stat", exc)
    if (mem := r.limit(h, d, "memory", "memory.limit_in_bytes", parse_v1_memory_limit)
            ) is not UNSET:
        s.memory_limit = mem
    data = r.read(h, d, "memory.oom_control")
    if data is not None:
        try:
            kv = parse_keyed(data, (b"under_oom", *_V1_OOM_KEYS))
            if b"under_oom" not in kv:
                raise ParseError("no under_oom line")
            # oom_kill exists since Linux 4.13; older kernels simply do not report it.
            s.oom_kills = kv.get(b"oom_kill")
        except ParseError as exc:
            r.bad("memory.oom_control", exc)
    # v1 has no OOM *event* counter (memory.failcnt counts limit hits that reclaim resolved,
    # not OOMs), so oom_events stays None rather than reporting something else under its name.


def _read_v1_cpu(r: _Reader, h: Hierarchy, d: int, s: CgroupStats) -> None:
    cached = r.cached
    if cached is not None and cached.cpu is not UNSET:
        r.hit()
        if cached.cpu is None:
            return  # no quota (see below), as read before
        s.cpu_quota_cores = cached.cpu
    elif not _read_v1_quota(r, h, d, s):
        return
    data = r.read(h, d, "cpu.stat")
    if data is not None:
        try:
            kv = parse_keyed(data, _V1_CPUSTAT_KEYS)
            if len(kv) != 3:
                raise ParseError("missing nr_periods/nr_throttled/throttled_time")
            s.cfs_periods = kv[b"nr_periods"]
            s.cfs_throttled_periods = kv[b"nr_throttled"]
            s.cfs_throttled_seconds = kv[b"throttled_time"] / 1e9
        except ParseError as exc:
            r.bad("cpu.stat", exc)


def _read_v1_quota(r: _Reader, h: Hierarchy, d: int, s: CgroupStats) -> bool:
    """Read the CFS quota into ``s``; False when cpu.stat is not worth reading."""
    quota = r.read(h, d, "cpu.cfs_quota_us")
    if quota is None:
        return False
    if quota.strip() == b"-1":
        # No quota: CFS bandwidth control is off for this cgroup, so its nr_periods and
        # nr_throttled cannot move (throttling by an ancestor's quota is counted there).
        # Skipping cpu.stat saves a kernfs read for every unlimited container.
        if (keep := r.remember()) is not None:
            keep.cpu = None
        return False
    period = r.read(h, d, "cpu.cfs_period_us")
    if period is not None:
        try:
            s.cpu_quota_cores = parse_v1_cfs_quota(quota, period)
        except ParseError as exc:
            r.bad("cpu.cfs_quota_us", exc)
        else:
            if (keep := r.remember()) is not None:
                keep.cpu = s.cpu_quota_cores
    return True


def _read_v1_cpuacct(r: _Reader, h: Hierarchy, d: int, s: CgroupStats) -> None:
    data = r.read(h, d, "cpuacct.usage")
    if data is not None:
        try:
            s.cpu_usage_seconds = parse_int(data) / 1e9
        except ParseError as exc:
            r.bad("cpuacct.usage", exc)


def _read_v2(r: _Reader, h: Hierarchy, d: int, s: CgroupStats) -> None:
    # In hybrid mode the v1 controllers were read first; the unified tree only fills gaps
    # (usually just PSI), so its files are not even opened when v1 already gave the values.
    if s.memory_usage is None:
        data = r.read(h, d, "memory.current")
        if data is not None:
            try:
                s.memory_usage = parse_int(data)
            except ParseError as exc:
                r.bad("memory.current", exc)
            data = r.read(h, d, "memory.stat")
            if data is not None:
                try:
                    v = parse_keyed(data, _V2_MEMSTAT_KEYS).get(b"inactive_file")
                    if v is None:
                        raise ParseError("no inactive_file line")
                    s.memory_inactive_file = v
                except ParseError as exc:
                    r.bad("memory.stat", exc)
            if (mem := r.limit(h, d, "memory", "memory.max", parse_v2_max)) is not UNSET:
                s.memory_limit = mem
    if s.oom_kills is None:
        data = r.read(h, d, "memory.events")
        if data is not None:
            try:
                kv = parse_keyed(data, _V2_EVENTS_KEYS)
                if len(kv) != 2:
                    raise ParseError("missing oom/oom_kill lines")
                s.oom_events = kv[b"oom"]
                s.oom_kills = kv[b"oom_kill"]
            except ParseError as exc:
                r.bad("memory.events", exc)
    # cpu.max exists only where the v2 cpu controller is enabled; a controller lives in one
    # hierarchy, so in hybrid mode (v1 cpu mounted) the unified cpu.stat adds nothing to v1's.
    if s.cpu_usage_seconds is None or (s.cfs_periods is None and "cpu.max" in h.expected):
        data = r.read(h, d, "cpu.stat")
        if data is not None:
            try:
                kv = parse_keyed(data, _V2_CPUSTAT_KEYS)
                usage = kv.get(b"usage_usec")
                if usage is None:
                    raise ParseError("no usage_usec line")
                if s.cpu_usage_seconds is None:
                    s.cpu_usage_seconds = usage / 1e6
                # nr_periods & co. exist only when the cpu controller is enabled for the cgroup.
                if s.cfs_periods is None and len(kv) == 4:
                    s.cfs_periods = kv[b"nr_periods"]
                    s.cfs_throttled_periods = kv[b"nr_throttled"]
                    s.cfs_throttled_seconds = kv[b"throttled_usec"] / 1e6
            except ParseError as exc:
                r.bad("cpu.stat", exc)
        if s.cpu_quota_cores is None and (
                quota := r.limit(h, d, "cpu", "cpu.max", parse_v2_cpu_max)) is not UNSET:
            s.cpu_quota_cores = quota
    # Three files per cgroup: on nodes with many containers PSI is the largest share of reads.
    wanted = r.psi == "container" or (r.psi == "pod" and not s.container_id)
    if wanted and not s.psi:
        for resource, fname in zip(PSI_RESOURCES, PSI_FILES, strict=True):
            data = r.read(h, d, fname)
            if data is None:
                continue
            try:
                for kind, ratio, seconds in parse_psi(data):
                    s.psi.append((resource, kind, ratio, seconds))
            except ParseError as exc:
                r.bad(fname, exc)


_ROLE_READERS: dict[str, Callable[[_Reader, Hierarchy, int, CgroupStats], None]] = {
    "memory": _read_v1_memory,
    "cpu": _read_v1_cpu,
    "cpuacct": _read_v1_cpuacct,
    "v2": _read_v2,
}


def read_cgroup(r: _Reader, ref: CgroupRef) -> CgroupStats | None:
    """Stats of one cgroup from all its hierarchies, or None when it vanished (counted)."""
    s = CgroupStats(ref.uid, ref.container_id, ref.qos)
    try:
        for h, d, probe in ref.dirs:
            r.enter(d)
            try:
                dfd = os.open(d, _O_DIR)
            except (FileNotFoundError, NotADirectoryError):
                if probe:
                    continue  # not in this hierarchy; only assumed to be
                raise _Vanished(d) from None
            except OSError as exc:
                r.error(PERMISSION if isinstance(exc, PermissionError) else IO, f"{d}: {exc}")
                continue
            try:
                for role in h.roles:
                    _ROLE_READERS[role](r, h, dfd, s)
            finally:
                os.close(dfd)
    except _Vanished:
        r.error(VANISHED, f"pod {ref.uid} container {ref.container_id or '-'}")
        return None
    return s


def scan(
    root: str | os.PathLike[str],
    *,
    after_discover: Callable[[list[CgroupRef]], None] | None = None,
    psi: str = "container",
    cache: ListingCache | None = None,
    limits: LimitCache | None = None,
) -> NodeScan:
    """Detect, discover and read every kubepods cgroup under ``root``.

    ``cache`` keeps directory listings between calls (see :class:`ListingCache`, which also
    names the procfs root used to tell pod sandboxes apart); without one every directory is
    listed and /proc is used. ``limits`` keeps parsed limit files between calls (see
    :class:`LimitCache`); without one every limit file is read.

    ``psi`` is --cgroup.psi: read the pressure files of every cgroup, of pod cgroups only, or
    of none.

    ``after_discover`` is a test hook run between discovery and reading (to delete a pod and
    prove that a vanishing pod is dropped and counted, not reported half-read).
    """
    layout = detect(os.fspath(root), WATCHED_FILES)
    result = NodeScan(layout)
    if cache is None:
        cache = ListingCache(full_every=1)
    refs = discover(layout, cache)
    result.sandboxes = cache.sandboxes
    if after_discover is not None:
        after_discover(refs)
    reader = _Reader(result, psi, limits)
    if limits is not None:
        limits.begin()
    out = result.stats
    for ref in refs:
        s = read_cgroup(reader, ref)
        if s is not None:
            out.append(s)
            continue
        for _, d, _ in ref.dirs:
            # Vanished: list its pod (and what held it) afresh next time, read its limits anew.
            cache.forget(d)
            cache.forget(os.path.dirname(d))
            if limits is not None:
                limits.forget(d)
    if limits is not None:
        limits.end()
    return result
