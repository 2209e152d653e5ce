"""Custom plugin checks with NPD's protocol, run safely.

A check is an argv (never a shell string) whose program lies in ``--problems.plugin-dir`` (the
loader resolves and checks that; others are disabled). Exit status 0 is OK, 1 a problem, anything
else (and a timeout) unknown; the first ``max_output`` bytes of stdout are the message.
Safety (agent.subproc): every run gets its own session (process group) and is SIGKILLed as a
group at its timeout, and the group is killed after the run too, so a forked grandchild cannot
outlive it; stdout is read in bounded chunks and everything past the cap is discarded, so a
flooding check costs no memory; ``concurrency`` bounds the checks running at once per monitor; a
round that is still running when the next is due is skipped and counted, never stacked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent import subproc
from agent.problems.model import CheckMonitor, CheckRule
from agent.structs.durations import format_duration

OK, PROBLEM, UNKNOWN = 0, 1, 2
RESULTS = {OK: "ok", PROBLEM: "problem", UNKNOWN: "unknown"}


@dataclass(frozen=True, slots=True)
class CheckResult:
    monitor: str
    rule: CheckRule
    status: int
    message: str
    seconds: float
    timed_out: bool = False


async def run_plugin(argv: tuple[str, ...], limit: float, max_output: int
                     ) -> tuple[int, str, bool]:
    """(status, message, timed out) of one run limited to ``limit`` seconds."""
    res = await subproc.run(argv, limit=limit, max_stdout=max_output, max_stderr=0)
    message = res.stdout.decode("utf-8", "replace").strip()
    if res.timed_out:
        why = f"timed out after {format_duration(limit)}" + (f": {message}" if message else "")
        return UNKNOWN, why, True
    code = res.returncode
    status = code if code in (OK, PROBLEM) else UNKNOWN
    return status, message, False


class CheckRunner:
    """Runs one custom-plugin-monitor's enabled rules every ``interval`` seconds."""

    def __init__(self, monitor: CheckMonitor,
                 on_result: Callable[[CheckResult], Awaitable[None]]) -> None:
        self.monitor = monitor
        self._on_result = on_result
        self._sem = asyncio.Semaphore(monitor.concurrency)
        self.runs: Counter[tuple[str, str]] = Counter()
        self.skipped_rounds = 0
        self.last: dict[str, str] = {}
        self._round: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> list[CheckRule]:
        return [r for r in self.monitor.rules if not r.disabled]

    async def run_round(self) -> None:
        await asyncio.gather(*(self._run(r) for r in self.enabled))

    async def _run(self, rule: CheckRule) -> None:
        async with self._sem:
            start = time.monotonic()
            try:
                status, message, timed_out = await run_plugin(
                    rule.argv, rule.timeout, self.monitor.max_output)
            except OSError as exc:
                status, message, timed_out = UNKNOWN, f"cannot run: {exc.strerror or exc}", False
            result = CheckResult(self.monitor.name, rule, status, message,
                                 time.monotonic() - start, timed_out)
        label = "timeout" if timed_out else RESULTS[status]
        self.runs[(rule.reason, label)] += 1
        self.last[rule.reason] = label
        await self._on_result(result)

    async def loop(self) -> None:
        while True:
            if self._round is not None and not self._round.done():
                self.skipped_rounds += 1
            else:
                self._round = asyncio.create_task(self.run_round())
            await asyncio.sleep(self.monitor.interval)

    async def close(self) -> None:
        if self._round is not None:
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._round

    def status(self) -> dict[str, object]:
        return {
            "rules": {r.reason: (r.disabled and f"disabled: {r.disabled}") or
                      self.last.get(r.reason, "not run yet") for r in self.monitor.rules},
            "skipped_rounds": self.skipped_rounds,
        }
