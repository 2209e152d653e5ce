"""Running external programs safely: the one place the agent starts a child process.

Every child is started from an argv list (never a shell string) with stdin closed, in its own
session (process group), and the whole group is SIGKILLed when it times out, when the caller is
cancelled, and once the run is over, so a forked grandchild cannot outlive it. stdout and stderr
are captured up to a cap each (the rest is read and discarded, or with ``overflow="kill"`` ends
the run), or stdout is handed block by block to a callback (memory bounded by the block size).
A program that cannot be started raises the OSError (FileNotFoundError: not installed,
PermissionError: not executable for us); everything else is in the returned :class:`ProcResult`.

- ``run`` (async) for the event loop: plugin checks, the fencing hook;
- ``run_sync`` for worker threads: the lbskew collector's iptables-save and conntrack;
- ``spawn`` / ``stop`` for a long-running child whose stdout the caller streams (journalctl).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

BLOCK = 1 << 20  # bytes read at once
Overflow = Literal["discard", "kill"]


@dataclass(frozen=True, slots=True)
class ProcResult:
    """How one run ended. ``returncode`` is None when the run was killed (timeout, overflow)."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes  # at most the cap given; empty when a callback took it
    stderr: bytes
    seconds: float
    timed_out: bool = False
    truncated: bool = False  # stdout went past its cap

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def stderr_text(self, limit: int = 200) -> str:
        return self.stderr.decode("utf-8", "replace").strip()[:limit]


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Capture:
    """Bounded capture of one stream."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.over = False

    def add(self, block: bytes) -> None:
        room = self.cap - len(self.data)
        if len(block) > room:
            self.over = True
        if room > 0:
            self.data.extend(block[:room])


def _pipe(cap: int, streaming: bool = False) -> int:
    return subprocess.PIPE if cap > 0 or streaming else subprocess.DEVNULL


async def _start(argv: Sequence[str], stdout: int, stderr: int,
                 limit: int = 65536) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own session. The start itself is shielded: a caller cancelled
    meanwhile still gets the group killed (asyncio, cancelled inside create_subprocess_exec,
    kills only the child and then waits for pipes a grandchild may hold open for ever)."""
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr, limit=limit,
        start_new_session=True, close_fds=True))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        try:
            proc = await starting
        except Exception:  # noqa: S110 - it did not start: nothing to kill
            pass
        else:
            kill_group(proc.pid)
            await proc.wait()
        raise


async def run(argv: Sequence[str], *, limit: float, max_stdout: int = 65536,
              max_stderr: int = 4096, overflow: Overflow = "discard") -> ProcResult:
    """Run ``argv`` for at most ``limit`` seconds. A cap of 0 sends that stream to
    /dev/null. Raises OSError when it cannot start; cancelling the caller kills the group."""
    start = time.monotonic()
    proc = await _start(argv, _pipe(max_stdout), _pipe(max_stderr))
    out, err = _Capture(max_stdout), _Capture(max_stderr)
    killed = False

    async def drain(stream: asyncio.StreamReader | None, into: _Capture, limit: bool) -> None:
        nonlocal killed
        if stream is None:
            return
        while block := await stream.read(65536):
            into.add(block)
            if limit and into.over and overflow == "kill":
                killed = True
                kill_group(proc.pid)

    async def whole() -> None:
        await asyncio.gather(drain(proc.stdout, out, True), drain(proc.stderr, err, False))
        await proc.wait()

    timed_out = False
    try:
        await asyncio.wait_for(whole(), limit)
    except TimeoutError:
        timed_out = True
    finally:
        kill_group(proc.pid)  # the whole group, stragglers included (and on cancel)
        if proc.returncode is None:
            await proc.wait()
    code = None if timed_out or killed else proc.returncode
    return ProcResult(tuple(argv), code, bytes(out.data), bytes(err.data),
                      time.monotonic() - start, timed_out, out.over)


def run_sync(argv: Sequence[str], *, limit: float, max_stdout: int = 65536,
             max_stderr: int = 4096, overflow: Overflow = "discard",
             on_stdout: Callable[[bytes], None] | None = None) -> ProcResult:
    """``run`` for a worker thread (never on the event loop). With ``on_stdout`` every stdout
    block goes to it instead of being captured (``max_stdout`` is then not applied)."""
    start = time.monotonic()
    deadline = start + limit
    streaming = on_stdout is not None
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=_pipe(max_stdout, streaming),
        stderr=_pipe(max_stderr), start_new_session=True, close_fds=True)
    out, err = _Capture(max_stdout), _Capture(max_stderr)
    timed_out = killed = False
    try:
        with selectors.DefaultSelector() as sel:
            for stream, into in ((proc.stdout, out), (proc.stderr, err)):
                if stream is not None:
                    sel.register(stream.fileno(), selectors.EVENT_READ, into)
            while sel.get_map():
                left = deadline - time.monotonic()
                ready = sel.select(timeout=left) if left > 0 else []
                if not ready:  # a plain read would block as long as a hung tool keeps its pipe
                    timed_out = True
                    break
                for key, _ in ready:
                    block = os.read(key.fd, BLOCK)
                    if not block:
                        sel.unregister(key.fd)
                    elif key.data is out and on_stdout is not None:
                        on_stdout(block)
                    else:
                        key.data.add(block)
                if out.over and overflow == "kill":
                    killed = True
                    break
        if not (timed_out or killed):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        kill_group(proc.pid)
        proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s is not None:
                s.close()
    code = None if timed_out or killed else proc.returncode
    return ProcResult(tuple(argv), code, bytes(out.data), bytes(err.data),
                      time.monotonic() - start, timed_out, out.over)


async def spawn(argv: Sequence[str], *, stream_limit: int = 65536,
                stderr: bool = False) -> asyncio.subprocess.Process:
    """Start a long-running child in its own session whose stdout the caller reads (lines up
    to ``stream_limit`` bytes); end it with :func:`stop`. Raises OSError when it cannot start."""
    return await _start(argv, subprocess.PIPE, subprocess.PIPE if stderr else subprocess.DEVNULL,
                        stream_limit)


async def stop(proc: asyncio.subprocess.Process, grace: float = 2.0) -> None:
    """SIGTERM the child, SIGKILL its whole group after ``grace`` seconds (or at once if it
    has exited: its stragglers), and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    kill_group(proc.pid)
    if proc.returncode is None:
        await proc.wait()
