"""Custom plugin checks: NPD's exit-status protocol, timeout with process-group kill, output
cap, concurrency limit — with real processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from agent.problems.checks import OK, PROBLEM, UNKNOWN, CheckResult, CheckRunner, run_plugin
from agent.problems.model import CheckMonitor, CheckRule


def script(tmp: Path, name: str, body: str) -> str:
    p = tmp / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


async def test_exit_status_protocol(tmp_path: Path) -> None:
    """0 is OK, 1 a problem, anything else unknown; stdout (trimmed) is the message."""
    for code, want in ((0, OK), (1, PROBLEM), (2, UNKNOWN), (7, UNKNOWN)):
        s = script(tmp_path, f"e{code}.sh", f"echo 'status {code}'\nexit {code}\n")
        assert await run_plugin((s,), 5, 80) == (want, f"status {code}", False)


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A hung check is killed at its timeout, grandchildren included; the result is unknown."""
    pidfile = tmp_path / "child.pid"
    s = script(tmp_path, "hang.sh", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    start = time.monotonic()
    status, message, timed_out = await run_plugin((s,), 0.5, 80)
    assert (status, timed_out) == (UNKNOWN, True) and "timed out" in message
    assert time.monotonic() - start < 5
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the check's grandchild survived")


async def test_flooding_output_is_capped(tmp_path: Path) -> None:
    """A check writing 50 MB keeps only max_output bytes and still returns its status."""
    s = script(tmp_path, "flood.sh", "head -c 50000000 /dev/zero | tr '\\0' 'x'\nexit 1\n")
    status, message, _ = await run_plugin((s,), 20, 80)
    assert status == PROBLEM and message == "x" * 80


async def test_concurrency_is_limited(tmp_path: Path) -> None:
    """No more than ``concurrency`` checks of a monitor run at once."""
    stamp = tmp_path / "stamps"
    s = script(tmp_path, "slow.sh", f"echo start >> {stamp}\nsleep 0.3\necho end >> {stamp}\n")
    rules = tuple(CheckRule("temporary", f"R{i}", (s,), 5) for i in range(4))
    results: list[CheckResult] = []

    async def collect(r: CheckResult) -> None:
        results.append(r)

    runner = CheckRunner(CheckMonitor("m", "f", 60, 5, 80, 2, (), rules), collect)
    await runner.run_round()
    seq = stamp.read_text().split()
    running = peak = 0
    for s_ in seq:
        running += 1 if s_ == "start" else -1
        peak = max(peak, running)
    assert peak == 2 and len(results) == 4
