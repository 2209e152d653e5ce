"""Find the cgroup hierarchies under a cgroupfs root and the kubepods pod/container cgroups in them.

Called by agent.collectors.cgroupfs.read once per tick (so a tree that changes between ticks, or a
pod created a second ago, is picked up). A :class:`ListingCache` (one per collector) makes that
cheap: a directory is re-listed only when its (inode, mtime, link count) changed, which costs one
``stat`` instead of a ``scandir`` for every unchanged pod directory. Handles:

- cgroup v2 mounted at the root (``cgroup.controllers`` at the root) or at ``<root>/unified``
  alone;
- cgroup v1 controllers ``memory``, ``cpu``, ``cpuacct`` (separate, or joined as
  ``cpu,cpuacct``), optionally with a v2 ``unified`` hierarchy beside them (systemd's "hybrid"
  mode: the unified tree carries PSI files even when it has no controllers);
- the kubelet's systemd driver (``kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope``, also ``docker-<id>.scope``
  and ``crio-<id>.scope``) and cgroupfs driver (``kubepods/burstable/pod<uid>/<id>``, Guaranteed
  pods directly under ``kubepods``).

A pod's sandbox (the runtime's ``pause`` container, which containerd, CRI-O and cri-dockerd put
in the pod cgroup beside its containers) is not a container: it has no limits of its own, its
usage is already in its pod's cgroup, and the kubelet never reports it. :func:`discover` leaves
it out (counted in :attr:`ListingCache.sandboxes`) when its cgroup holds exactly one process whose
``comm`` is ``pause`` and the kubelet does not list its ID as a container of the pod (an
overprovisioning pod that runs the pause image as its container keeps it). The check costs two
small reads, once per new container cgroup.

Everything here is synchronous and cheap (a few ``stat``/``scandir`` calls per directory); the
collector runs it in a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["memory", "cpu", "cpuacct", "v2"]
Mode = Literal["v1", "v2", "hybrid", "none"]

_TOPS = ("kubepods.slice", "kubepods")
_QOS_DIRS = {
    "kubepods-burstable.slice": "burstable",
    "kubepods-besteffort.slice": "besteffort",
    "burstable": "burstable",
    "besteffort": "besteffort",
}
_CONTAINER_PREFIXES = ("cri-containerd-", "docker-", "crio-", "containerd-")
# Directories inside a pod cgroup that are not containers: cri-o's conmon monitor process, and
# "system.slice"-style helpers some runtimes add.
_NOT_CONTAINER_PREFIXES = ("crio-conmon-",)
_UID_CHARS = frozenset("0123456789abcdefABCDEF-")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted hierarchy we read from: v1 controller(s) or a v2 tree.

    ``roles`` says which files to read there (a joined ``cpu,cpuacct`` directory has both cpu
    roles). ``expected`` is the set of our control files present in its kubepods directory: the
    kubelet creates pods below with the same controllers, so a file in ``expected`` that is
    missing in a live pod cgroup is an error, and a file not in it is never opened (e.g.
    ``memory.current`` in a v2 tree with no memory controller).
    """

    path: str
    roles: tuple[Role, ...]
    expected: frozenset[str] = frozenset()


@dataclass(slots=True)
class CgroupRef:
    """One pod-level (``container_id == ""``) or container cgroup, with its directory in every
    hierarchy where it was found, in read-priority order (v1 controllers before unified).

    ``dirs`` holds (hierarchy, directory, probe): a probed directory was not listed, only
    assumed from another hierarchy, so its absence is not an error.
    """

    uid: str
    container_id: str
    qos: str
    dirs: list[tuple[Hierarchy, str, bool]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Layout:
    """What :func:`detect` found under the cgroupfs root."""

    mode: Mode
    hierarchies: tuple[Hierarchy, ...]


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def detect(root: str, watched_files: frozenset[str]) -> Layout:
    """Detect v1 / v2 / hybrid under ``root``; ``watched_files`` are the control files the reader
    uses, to compute each hierarchy's ``expected`` set."""
    found: list[tuple[str, tuple[Role, ...]]] = []
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        found.append((root, ("v2",)))
        mode: Mode = "v2"
    else:
        joined = os.path.join(root, "cpu,cpuacct")
        cpu = os.path.join(root, "cpu")
        cpuacct = os.path.join(root, "cpuacct")
        memory = os.path.join(root, "memory")
        if _is_dir(memory):
            found.append((memory, ("memory",)))
        # "cpu" and "cpuacct" are usually symlinks to "cpu,cpuacct" when joined: read it once.
        if _is_dir(joined):
            found.append((joined, ("cpu", "cpuacct")))
        elif _is_dir(cpu) and _is_dir(cpuacct) and os.path.realpath(cpu) == os.path.realpath(
            cpuacct
        ):
            found.append((cpu, ("cpu", "cpuacct")))
        else:
            if _is_dir(cpu):
                found.append((cpu, ("cpu",)))
            if _is_dir(cpuacct):
                found.append((cpuacct, ("cpuacct",)))
        unified = os.path.join(root, "unified")
        has_unified = os.path.exists(os.path.join(unified, "cgroup.controllers"))
        if has_unified:
            found.append((unified, ("v2",)))
        if len(found) > (1 if has_unified else 0):
            mode = "hybrid" if has_unified else "v1"
        elif has_unified:
            mode = "v2"
        else:
            mode = "none"
    hierarchies = tuple(
        Hierarchy(path, roles, _expected(path, watched_files)) for path, roles in found
    )
    return Layout(mode, hierarchies)


def _expected(path: str, watched: frozenset[str]) -> frozenset[str]:
    for top in _TOPS:
        try:
            with os.scandir(os.path.join(path, top)) as it:
                return frozenset(e.name for e in it if e.name in watched)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return frozenset()
    return frozenset()


def pod_uid(name: str) -> str | None:
    """UID from a pod cgroup directory name, or None when the name is not a pod cgroup.

    ``pod<uid>`` (cgroupfs) and ``kubepods[-<qos>]-pod<uid_with_underscores>.slice`` (systemd).
    """
    if name.endswith(".slice"):
        name = name[:-6].rsplit("-", 1)[-1]
        uid = name[3:].replace("_", "-") if name.startswith("pod") else ""
    else:
        uid = name[3:] if name.startswith("pod") else ""
    if not uid or not _UID_CHARS.issuperset(uid):
        return None
    return uid.lower()


def container_id(name: str) -> str | None:
    """Runtime container ID from a container cgroup directory name, or None when not one."""
    if name.startswith(_NOT_CONTAINER_PREFIXES):
        return None
    if name.endswith(".scope"):
        name = name[:-6]
    for prefix in _CONTAINER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if not name or not name.isalnum():
        return None
    return name


SANDBOX_COMM = b"pause\n"
# What a container's one process is called between the runtime creating it and its exec
# (runc's "runc:[2:INIT]", crun's "crun"): not told yet, whatever it becomes.
_RUNTIME_INIT = (b"runc:", b"crun")


def is_sandbox(path: str, procfs: str) -> bool | None:
    """True when the cgroup at ``path`` holds exactly one process and its ``comm`` is ``pause``;
    False when it holds another; None when that cannot be told yet (no process, the runtime's
    init not yet exec'd, unreadable)."""
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as f:
            pids = f.read(64).split()
    except OSError:
        return None
    if not pids:
        return None
    if len(pids) != 1 or not pids[0].isdigit() or len(pids[0]) > 10:
        return False
    if pids[0] == b"0":
        # The process is outside our PID namespace (an agent container without hostPID): it
        # cannot be told, ever; read as a container, as before, and not asked again.
        return False
    try:
        with open(os.path.join(procfs, pids[0].decode(), "comm"), "rb") as f:
            comm = f.read(32)
    except OSError:
        return None
    if comm.startswith(_RUNTIME_INIT):
        return None  # the runtime's init, before it execs the container's process: ask again
    return comm == SANDBOX_COMM


def _subdirs(path: str) -> list[str]:
    """Names of the subdirectories of ``path``; [] when it vanished or cannot be listed."""
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


class ListingCache:
    """Subdirectory names of each discovered directory, reused while its stat key holds.

    The key is (inode, mtime, link count). On a plain filesystem adding or removing a child
    changes the mtime; on cgroupfs (kernfs) it does not (kernfs leaves a directory's mtime alone
    unless someone has set an attribute on it: measured on Linux 6.18), but the link count is
    2 + the number of subdirectories there, so any change of the count is seen. What the key can
    miss on kernfs is a swap (one child removed and one added between two ticks); three things
    bound that: the kubelet's container IDs (:meth:`expect`: a pod whose listing lacks a
    container the kubelet reports is re-listed once), a listed directory that vanished while
    being read is forgotten (re-listed next tick), and every ``full_every``-th discovery lists
    everything afresh. ``full_every=1`` disables the cache.
    """

    def __init__(self, full_every: int = 6, procfs: str = "/proc") -> None:
        self.full_every = max(1, full_every)
        self.procfs = procfs
        self._dirs: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
        self._used: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
        self._rounds = 0
        self._expected: dict[str, frozenset[str]] = {}
        self._checked: set[tuple[str, str]] = set()
        # Container ID -> is it a sandbox, once told (a process's comm does not change while it
        # runs; a sandbox's ID is never reused by a container). Kept for IDs seen this round.
        self._sandbox: dict[str, bool] = {}
        self._sandbox_used: dict[str, bool] = {}
        self.listed = 0  # directories listed (not served from the cache) by the last discovery
        self.stale_pods = 0  # pods re-listed because the kubelet knew a container we did not
        self.sandboxes = 0  # pod sandbox cgroups left out by the last discovery

    def expect(self, containers: dict[str, frozenset[str]]) -> None:
        """Pod UID -> runtime container IDs the kubelet reported (the previous tick's answer)."""
        self._expected = containers

    def begin(self) -> None:
        self._rounds += 1
        if self.full_every == 1 or self._rounds % self.full_every == 1:
            self._dirs = {}
            self._checked = set()
        self._used = {}
        self._sandbox_used = {}
        self.listed = self.stale_pods = self.sandboxes = 0

    def end(self) -> None:
        self._dirs = self._used  # only directories seen this round stay cached
        self._sandbox = self._sandbox_used

    def forget(self, path: str) -> None:
        self._dirs.pop(path, None)
        self._used.pop(path, None)

    def subdirs(self, path: str, *, fresh: bool = False) -> list[str]:
        """Like :func:`_subdirs`, from the cache when ``path`` is unchanged. The stat comes
        before the listing, so a child added in between changes the key seen next round."""
        try:
            st = os.stat(path)
        except OSError:
            return []
        key = (st.st_ino, st.st_mtime_ns, st.st_nlink)
        hit = self._dirs.get(path)
        if fresh or hit is None or hit[0] != key:
            hit = (key, _subdirs(path))
            self.listed += 1
        self._used[path] = hit
        return hit[1]

    def sandbox(self, uid: str, cid: str, pod_dir: str, name: str) -> bool:
        """True when the container cgroup ``cid`` of pod ``uid`` (``name`` in ``pod_dir``) is the
        pod's sandbox (see :func:`is_sandbox`); a container the kubelet lists for the pod never
        is."""
        if cid in self._expected.get(uid, ()):
            return False
        told = self._sandbox.get(cid)
        if told is None:
            told = is_sandbox(os.path.join(pod_dir, name), self.procfs)
            if told is None:
                return False  # no process yet: read as a container, asked again next round
        self._sandbox_used[cid] = told
        if told:
            self.sandboxes += 1
        return told

    def missing(self, uid: str, ids: set[str]) -> bool:
        """True (once per container) when the kubelet reports a container of ``uid`` that the
        listing ``ids`` lacks."""
        new = [c for c in self._expected.get(uid, ()) if c not in ids
               and (uid, c) not in self._checked]
        self._checked.update((uid, c) for c in new)
        return bool(new)


def discover(layout: Layout, cache: ListingCache | None = None) -> list[CgroupRef]:
    """Every pod and container cgroup in every hierarchy, merged by (pod uid, container id).

    Pod-level refs come first in the list for each pod, followed by its containers. Listing a
    directory on kernfs costs ~30 us (pod directories hold 20-60 control files), so container
    directories are listed only in the first hierarchy that has the pod; in the others the
    same container directories are *probed* at read time (the runtime creates a container in
    every hierarchy at once), which costs one ``open`` that the read needs anyway.
    """
    if cache is None:
        cache = ListingCache(full_every=1)
    cache.begin()
    found = _Discovery(cache)
    for h in layout.hierarchies:
        for top in _TOPS:
            top_path = os.path.join(h.path, top)
            for name in cache.subdirs(top_path):
                qos = _QOS_DIRS.get(name)
                if qos is not None:
                    qos_path = os.path.join(top_path, name)
                    for pod_name in cache.subdirs(qos_path):
                        found.pod(h, os.path.join(qos_path, pod_name), pod_name, qos)
                else:
                    found.pod(h, os.path.join(top_path, name), name, "guaranteed")
    cache.end()
    return list(found.refs.values())


class _Discovery:
    """Accumulates refs over hierarchies; remembers each pod's container directory names."""

    def __init__(self, cache: ListingCache) -> None:
        self.cache = cache
        self.refs: dict[tuple[str, str], CgroupRef] = {}
        self.containers: dict[str, list[tuple[str, str]]] = {}  # uid -> [(dir name, id)]

    def pod(self, h: Hierarchy, path: str, name: str, qos: str) -> None:
        uid = pod_uid(name)
        if uid is None:
            return
        self.add(h, path, (uid, ""), qos, probe=False)
        known = self.containers.get(uid)
        if known is not None:
            for cname, cid in known:
                self.add(h, os.path.join(path, cname), (uid, cid), qos, probe=True)
            return
        known = self.containers[uid] = self._containers(path, uid)
        for cname, ident in known:
            self.add(h, os.path.join(path, cname), (uid, ident), qos, probe=False)

    def _containers(self, path: str, uid: str) -> list[tuple[str, str]]:
        """(directory name, container ID) of each container cgroup in the pod directory, the
        pod's sandbox left out."""
        names = self.cache.subdirs(path)
        out = [(n, i) for n in names if (i := container_id(n)) is not None]
        if self.cache.missing(uid, {i for _, i in out}):
            self.cache.stale_pods += 1
            names = self.cache.subdirs(path, fresh=True)
            out = [(n, i) for n in names if (i := container_id(n)) is not None]
        sandbox = self.cache.sandbox
        return [(n, i) for n, i in out if not sandbox(uid, i, path, n)]

    def add(
        self, h: Hierarchy, path: str, key: tuple[str, str], qos: str, *, probe: bool
    ) -> None:
        ref = self.refs.get(key)
        if ref is None:
            ref = self.refs[key] = CgroupRef(key[0], key[1], qos)
        ref.dirs.append((h, path, probe))
