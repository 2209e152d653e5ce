"""The safety ledger on local disk: cooldowns, hourly caps and in-progress actions survive a
restart even when the Kubernetes API is down or not configured.

Used by agent.runtime.remediation: ``load`` once at start, ``save`` after every change (the same
JSON as the node annotation ``nodemedic.io/state``, see agent.safety.ledger, plus the wall time
of the last state the API accepted, which :func:`agent.safety.ledger.merge_unsynced` needs).
The file is ``state.json`` under ``--state.dir`` (the unit's StateDirectory, /var/lib/nodemedic).

- Writes are atomic: a temporary file in the same directory, fsync, rename, fsync of the
  directory. A crash leaves the old file or the new one, never half of one.
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
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent.safety.ledger import MAX_STATE_BYTES, STATE_VERSION

STATE_FILE = "state.json"
MAX_FILE_BYTES = 4 * MAX_STATE_BYTES  # the ledger JSON plus its small wrapper, with room
FORMAT = 1


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

    def load(self, now: float) -> Loaded:
        """Read the file; never raises. ``now`` (wall) is the blind time if even stat fails."""
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

    def save(self, ledger_json: str, synced_at: float | None) -> None:
        """Atomically replace the file. Raises OSError (the caller counts and logs it)."""
        synced = "null" if synced_at is None else json.dumps(round(synced_at, 1))
        data = f'{{"v":{FORMAT},"synced":{synced},"ledger":{ledger_json}}}'.encode()
        if len(data) > MAX_FILE_BYTES:
            raise OSError(f"state of {len(data)} bytes exceeds {MAX_FILE_BYTES}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(STATE_FILE + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crash mid-write, perhaps with other permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
