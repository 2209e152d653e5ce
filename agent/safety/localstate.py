"""The safety ledger on local disk: cooldowns, hourly caps and in-progress actions survive a
restart even when the Kubernetes API is down or not configured.

Used by agent.runtime.remediation: ``load`` once at start, ``save`` after every change (the same
JSON as the node annotation ``nodemedic.io/state``, see agent.safety.ledger, plus the wall time
of the last state the API accepted, which :func:`agent.safety.ledger.merge_unsynced` needs).
The file is ``state.json`` under ``--state.dir`` (the unit's StateDirectory, /var/lib/nodemedic).

- Writes are atomic: a temporary file of its own (``state.json.<random>.tmp``, 0600) in the same
  directory, fsync, rename, fsync of the directory. A crash leaves the old file or the new one,
  never half of one; ``load`` removes the temporary files a crash left (one a live writer holds
  is flock'ed by it and kept). A failed save removes its own temporary file.
- Saves of one directory are serialised in the process (a save cancelled by a shutdown keeps
  running in its thread while the final save starts): the last save to start is the one that
  stays, an older snapshot never replaces a newer one. Two processes sharing a directory by
  mistake no longer collide on one temporary name (which of them wins is not ordered).
- Size is bounded: the ledger JSON is cut to MAX_STATE_BYTES before it gets here, and a file
  larger than MAX_FILE_BYTES is not read.
- Fail safe: a file that exists but cannot be used (not JSON, unknown format, unreadable) is
  reported (``problem``) and moved aside to ``state.json.corrupt``; ``blind_since`` then says
  from when we cannot know what we did (the file's mtime: it was written right after our last
  action; now when even that is unknown). The stage turns it into "every cooldown started then"
  unless the API's state, written later, is available.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.safety.ledger import MAX_STATE_BYTES, STATE_VERSION

STATE_FILE = "state.json"
MAX_FILE_BYTES = 4 * MAX_STATE_BYTES  # the ledger JSON plus its small wrapper, with room
FORMAT = 1
TMP_PREFIX = STATE_FILE + "."  # temporary files: state.json.<random>.tmp; _is_temp also
TMP_SUFFIX = ".tmp"  # matches the fixed state.json.tmp of older versions


@dataclass
class _Order:
    """The save order of one directory, shared by every LocalState of it in this process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = 0  # the number of the last save to start
    installed: int = 0  # the number of the save whose file is in place


_ORDERS: dict[Path, _Order] = {}
_ORDERS_LOCK = threading.Lock()


def _order_of(directory: Path) -> _Order:
    with _ORDERS_LOCK:
        return _ORDERS.setdefault(Path(os.path.abspath(directory)), _Order())


def _is_temp(name: str) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


@dataclass(frozen=True)
class Loaded:
    """What ``load`` found. ``ledger_json`` is None when there was nothing usable."""

    ledger_json: str | None = None
    synced_at: float | None = None  # wall time of the last state the API accepted
    problem: str | None = None  # why an existing file could not be used
    blind_since: float | None = None  # wall time from which our past actions are unknown


class LocalState:
    """``state.json`` in one directory (created on first save, mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self._order = _order_of(directory)

    def load(self, now: float) -> Loaded:
        """Read the file; never raises. ``now`` (wall) is the blind time if even stat fails.
        Temporary files a crashed save left are removed first (they are never read)."""
        self._remove_stale_temps()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return Loaded()
        except OSError as exc:
            return Loaded(problem=f"cannot stat {self.path}: {exc}", blind_since=now)
        mtime = st.st_mtime
        if st.st_size > MAX_FILE_BYTES:
            return self._corrupt(f"{self.path} is {st.st_size} bytes (> {MAX_FILE_BYTES})", mtime)
        try:
            raw = self.path.read_bytes()[: MAX_FILE_BYTES + 1]
        except OSError as exc:
            return Loaded(problem=f"cannot read {self.path}: {exc}", blind_since=mtime)
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            return self._corrupt(f"{self.path} is not JSON: {exc}", mtime)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT:
            return self._corrupt(f"{self.path} has an unknown format", mtime)
        ledger, synced = doc.get("ledger"), doc.get("synced")
        if not isinstance(ledger, dict) or ledger.get("v") != STATE_VERSION:
            return self._corrupt(f"{self.path} holds no ledger of version {STATE_VERSION}", mtime)
        if not isinstance(synced, (int, float)) or isinstance(synced, bool):
            synced = None
        return Loaded(ledger_json=json.dumps(ledger), synced_at=synced)

    def _corrupt(self, problem: str, mtime: float) -> Loaded:
        """Keep the bad file for inspection (one copy) and report from when we are blind."""
        with contextlib.suppress(OSError):  # the next save replaces it anyway
            os.replace(self.path, self.path.with_name(STATE_FILE + ".corrupt"))
        return Loaded(problem=problem, blind_since=mtime)

    def _remove_stale_temps(self) -> None:
        """Remove ``state.json.*.tmp`` left by a crash; skip one a live save holds locked."""
        try:
            names = [n for n in os.listdir(self.directory) if _is_temp(n)]
        except OSError:
            return  # no directory yet, or unreadable: load reports what matters
        for name in names:
            with contextlib.suppress(OSError):  # gone meanwhile (renamed by its writer): fine
                fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a save is writing it
                    os.unlink(self.directory / name)
                finally:
                    os.close(fd)

    def save(self, ledger_json: str, synced_at: float | None) -> None:
        """Atomically replace the file. Raises OSError (the caller counts and logs it).

        Thread-safe: saves of one directory run one at a time, and one that finds a later-started
        save already in place returns without writing (the file is newer than what it holds)."""
        synced = "null" if synced_at is None else json.dumps(round(synced_at, 1))
        data = f'{{"v":{FORMAT},"synced":{synced},"ledger":{ledger_json}}}'.encode()
        if len(data) > MAX_FILE_BYTES:
            raise OSError(f"state of {len(data)} bytes exceeds {MAX_FILE_BYTES}")
        order = self._order
        with _ORDERS_LOCK:
            order.started += 1
            mine = order.started
        with order.lock:
            if order.installed > mine:
                return  # a save that started after this one is already in place
            self._write_and_rename(data)
            order.installed = mine
            self._fsync_directory()

    def _write_and_rename(self, data: bytes) -> None:
        """Write ``data`` to a temporary file of our own, fsync it, rename it over the file."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
        tmp = Path(name)
        try:
            try:
                # Held until the rename: a starting process's load leaves this file alone.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.fchmod(fd, 0o600)  # mkstemp's mode already; explicit, whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                os.replace(tmp, self.path)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()  # ours: never leave it behind (already gone once renamed)
            raise

    def _fsync_directory(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
