"""Concurrent saves of the local state file (agent.safety.localstate).

A save cancelled by a shutdown keeps running in its asyncio.to_thread thread while the final save
starts; two agents may share a state directory by mistake. Before the fix every save wrote one
fixed ``state.json.tmp``: the second save unlinked the first's temporary file, whose rename then
raised, and an older snapshot could land after a newer one.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.safety import localstate
from agent.safety.localstate import STATE_FILE, LocalState


def ledger(n: int) -> str:
    return json.dumps({"v": 1, "n": n})


def saved(directory: Path) -> int:
    return int(json.loads((directory / STATE_FILE).read_text())["ledger"]["n"])


def test_many_concurrent_saves_never_raise_and_leave_one_valid_file(tmp_path: Path) -> None:
    local = LocalState(tmp_path / "d")
    start = threading.Barrier(8)

    def saver(k: int) -> None:
        start.wait()
        for i in range(40):
            local.save(ledger(k * 1000 + i), synced_at=None)

    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(saver, k) for k in range(8)]:
            f.result()  # re-raises what a save raised
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [STATE_FILE]
    assert (tmp_path / "d" / STATE_FILE).stat().st_mode & 0o777 == 0o600
    assert saved(tmp_path / "d") % 1000 == 39  # some thread's last save
    local.save(ledger(7), synced_at=None)
    assert saved(tmp_path / "d") == 7


def test_an_older_save_never_replaces_a_newer_one(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The old save is held just before its rename while a newer one starts: the newer stays."""
    local = LocalState(tmp_path / "d")
    local.save(ledger(0), synced_at=None)
    held, release = threading.Event(), threading.Event()
    real_replace = os.replace
    first = [True]

    def slow_replace(src: str | Path, dst: str | Path) -> None:
        if first[0]:
            first[0] = False
            held.set()
            release.wait(5)
        real_replace(src, dst)

    monkeypatch.setattr(localstate.os, "replace", slow_replace)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            local.save(ledger(n), synced_at=None)
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    old = threading.Thread(target=run, args=(1,))
    old.start()
    assert held.wait(5)
    new = threading.Thread(target=run, args=(2,))
    new.start()
    new.join(0.3)  # the newer save has started (it waits for the older one now)
    release.set()
    old.join(5)
    new.join(5)
    assert errors == []
    assert saved(tmp_path / "d") == 2
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [STATE_FILE]


def test_a_failed_save_removes_its_temp_file_and_keeps_the_old_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalState(tmp_path / "d")
    local.save(ledger(1), synced_at=None)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(localstate.os, "write", full)
    with pytest.raises(OSError, match="No space"):
        local.save(ledger(2), synced_at=None)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [STATE_FILE]
    assert saved(tmp_path / "d") == 1
    local.save(ledger(3), synced_at=None)  # the next save is not blocked by the failed one
    assert saved(tmp_path / "d") == 3


def test_load_removes_temp_files_a_crash_left_but_not_one_being_written(tmp_path: Path) -> None:
    d = tmp_path / "d"
    local = LocalState(d)
    local.save(ledger(1), synced_at=None)
    (d / (STATE_FILE + ".tmp")).write_text("{half")  # the old fixed name
    (d / (STATE_FILE + ".k3j2x_9a.tmp")).write_text("{half")
    busy = d / (STATE_FILE + ".busy.tmp")
    busy.write_text("{writing")
    fd = os.open(busy, os.O_RDONLY)
    try:
        localstate.fcntl.flock(fd, localstate.fcntl.LOCK_EX)  # another process's live save
        loaded = local.load(now=0.0)
    finally:
        os.close(fd)
    assert loaded.problem is None and loaded.ledger_json is not None
    assert json.loads(loaded.ledger_json)["n"] == 1
    assert sorted(p.name for p in d.iterdir()) == [STATE_FILE, STATE_FILE + ".busy.tmp"]
