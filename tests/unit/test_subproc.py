"""agent.subproc with real processes: bounded capture, timeouts, cancellation and stop kill the
whole process group (grandchildren included), overflow can end a run, missing tools raise."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agent import subproc


def script(tmp: Path, name: str, body: str) -> str:
    p = tmp / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def grandchild_script(tmp: Path) -> tuple[str, Path]:
    pidfile = tmp / "child.pid"
    return script(tmp, "hang.sh", f"sleep 300 &\necho $! > {pidfile}\nwait\n"), pidfile


async def gone(pidfile: Path) -> bool:
    for _ in range(50):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    child = int(pidfile.read_text())
    for _ in range(150):
        try:
            os.kill(child, 0)
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state == "Z":  # killed, waiting for init to reap it
            return True
        await asyncio.sleep(0.02)
    os.kill(child, 9)
    return False


async def test_exit_code_and_bounded_capture(tmp_path: Path) -> None:
    s = script(tmp_path, "say.sh", "printf 'hello world'\nprintf 'oops' >&2\nexit 3\n")
    res = await subproc.run([s], limit=5, max_stdout=5, max_stderr=10)
    assert (res.returncode, res.stdout, res.stderr, res.truncated) == (3, b"hello", b"oops", True)
    assert not res.ok and not res.timed_out and res.argv == (s,)
    full = await subproc.run([s, "x"], limit=5)
    assert full.stdout == b"hello world" and not full.truncated


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    s, pidfile = grandchild_script(tmp_path)
    start = time.monotonic()
    res = await subproc.run([s], limit=0.5)
    assert res.timed_out and res.returncode is None
    assert time.monotonic() - start < 5
    assert await gone(pidfile), "the grandchild survived the timeout"


async def test_cancelling_the_caller_kills_the_group(tmp_path: Path) -> None:
    s, pidfile = grandchild_script(tmp_path)
    task = asyncio.create_task(subproc.run([s], limit=60))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert await gone(pidfile), "the grandchild survived the cancellation"


async def test_a_caller_cancelled_while_the_child_starts_is_not_stuck(tmp_path: Path) -> None:
    """Cancelled inside the start (a reload or shutdown at that moment): the run ends at once and
    the group is killed. Before, asyncio waited for the pipes the grandchild held (300 s)."""
    for i in range(10):
        pidfile = tmp_path / f"child{i}.pid"
        s = script(tmp_path, f"hang{i}.sh", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
        task = asyncio.create_task(subproc.run([s], limit=60))
        await asyncio.sleep(i * 0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        if pidfile.exists() and pidfile.read_text().strip():
            assert await gone(pidfile), "the grandchild survived the cancellation"


async def test_overflow_kill_ends_a_flooding_run(tmp_path: Path) -> None:
    s = script(tmp_path, "flood.sh", "exec cat /dev/zero\n")
    res = await subproc.run([s], limit=10, max_stdout=1000, overflow="kill")
    assert res.truncated and res.returncode is None and not res.timed_out
    assert res.stdout == b"\0" * 1000


async def test_flooding_output_is_discarded_past_the_cap(tmp_path: Path) -> None:
    s = script(tmp_path, "flood.sh", "head -c 5000000 /dev/zero\nexit 1\n")
    res = await subproc.run([s], limit=20, max_stdout=80)
    assert res.returncode == 1 and len(res.stdout) == 80 and res.truncated


async def test_a_missing_program_raises() -> None:
    with pytest.raises(FileNotFoundError):
        await subproc.run(["/nonexistent/tool"], limit=1)
    with pytest.raises(FileNotFoundError):
        subproc.run_sync(["/nonexistent/tool"], limit=1)


async def test_run_sync_streams_and_times_out(tmp_path: Path) -> None:
    s = script(tmp_path, "lines.sh", "seq 1 20000\nprintf err >&2\n")
    seen: list[bytes] = []
    res = await asyncio.to_thread(subproc.run_sync, [s], limit=10, on_stdout=seen.append)
    assert res.ok and res.stdout == b"" and res.stderr == b"err"
    assert b"".join(seen).split() == [str(i).encode() for i in range(1, 20001)]
    hang, pidfile = grandchild_script(tmp_path)
    start = time.monotonic()
    res = await asyncio.to_thread(subproc.run_sync, [hang], limit=0.5)
    assert res.timed_out and res.returncode is None and time.monotonic() - start < 5
    assert await gone(pidfile), "the grandchild survived run_sync's timeout"
    flood = script(tmp_path, "flood.sh", "exec cat /dev/zero\n")
    res = await asyncio.to_thread(subproc.run_sync, [flood], limit=10, max_stdout=100,
                                  overflow="kill")
    assert res.truncated and res.returncode is None and len(res.stdout) == 100


async def test_spawn_and_stop_kill_the_group(tmp_path: Path) -> None:
    s = script(tmp_path, "stream.sh", f"sleep 300 &\necho $! > {tmp_path}/child.pid\n"
               "echo ready\ntrap '' TERM\nwait\n")
    proc = await subproc.spawn([s])
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    start = time.monotonic()
    await subproc.stop(proc, grace=0.3)
    assert proc.returncode is not None and time.monotonic() - start < 5
    assert await gone(tmp_path / "child.pid"), "the streamed child's grandchild survived stop"
