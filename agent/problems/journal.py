"""The systemd journal through ``journalctl --output=json --follow`` as a supervised child.

One child per distinct filter (syslog identifiers ``-t`` and/or units ``-u``), started with an
argv (never a shell), ``--since=@<now - lookback>`` so the lookback window is re-read at start,
and restarted with backoff when it exits; agent.subproc starts it in its own process group and
kills the whole group when it is stopped. Its stdout is read line by line with a bounded buffer:
a line above ``max_line`` bytes is dropped and counted ``too_long``. Lines are parsed (JSON ->
timestamp and MESSAGE) by the consumer in a worker thread, like every source.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from agent import subproc
from agent.backoff import Backoff
from agent.problems.linequeue import LineQueue

JOURNALCTL = "journalctl"


def journal_argv(identifiers: tuple[str, ...], units: tuple[str, ...], lookback: float, *,
                 binary: str = JOURNALCTL, now: float | None = None,
                 directory: str = "", after_cursor: str = "") -> list[str]:
    """The journalctl command line for one source (matches of one kind are ORed).
    ``directory``: read that journal directory (NPD's logPath) instead of the system's.
    ``after_cursor``: a restarted child resumes after the last entry read, so nothing is
    matched twice; the first one starts ``lookback`` seconds back."""
    argv = [binary, "--output=json", "--follow", "--no-pager", "--quiet"]
    if after_cursor:
        argv.append(f"--after-cursor={after_cursor}")
    else:
        since = int((time.time() if now is None else now) - lookback)
        argv.append(f"--since=@{since}")
    if directory:
        argv.append(f"--directory={directory}")
    for ident in identifiers:
        argv += ["-t", ident]
    for unit in units:
        argv += ["-u", unit]
    return argv


def parse_journal_line(raw: bytes | str) -> tuple[float, str, str] | None:
    """(wall time, MESSAGE, __CURSOR) of one journal JSON entry; None when it is not one."""
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    msg = entry.get("MESSAGE")
    if isinstance(msg, list):  # non-UTF-8 messages are arrays of byte values
        try:
            msg = bytes(msg).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    if not isinstance(msg, str):
        return None
    try:
        ts = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6
    except (TypeError, ValueError):
        ts = 0.0
    return ts or time.time(), msg, str(entry.get("__CURSOR") or "")


async def run_journal(argv_for: Callable[[], list[str]], queue: LineQueue,
                      max_line: int = 65536, backoff_max: float = 30.0) -> None:
    """Run journalctl forever (``argv_for()`` gives each start's command line, so a restart
    resumes after the last cursor), restarting it with backoff; feed ``queue``."""
    stats = queue.stats
    backoff = Backoff(1.0, backoff_max)
    first = True
    while True:
        if not first:
            stats.restarts += 1
        first = False
        started = time.monotonic()
        argv = argv_for()
        try:
            proc = await subproc.spawn(argv, stream_limit=max_line)
        except OSError as exc:
            stats.up, stats.last_error = False, f"{argv[0]}: {exc.strerror or exc}"
        else:
            stats.up, stats.last_error = True, None
            try:
                await _pump(proc, queue)
            finally:
                await subproc.stop(proc)
            code = proc.returncode
            stats.up = False
            stats.last_error = f"{argv[0]} exited with status {code}"
        if time.monotonic() - started > 60:
            backoff.reset()
        await asyncio.sleep(backoff.next())


async def _pump(proc: asyncio.subprocess.Process, queue: LineQueue) -> None:
    assert proc.stdout is not None
    while True:
        try:
            line = await proc.stdout.readline()
        except ValueError:  # longer than the stream limit: asyncio discarded it
            queue.stats.dropped["too_long"] += 1
            continue
        if not line:
            return
        await queue.wait_room(1)  # journalctl blocks on its pipe meanwhile: nothing is lost
        queue.put_many((line,))
