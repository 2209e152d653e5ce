"""One collection: run every enabled collector concurrently, each under its own timeout.

Called by agent.runtime.daemon once per tick. A collector that raises or times out is marked
failed for that tick (its families are dropped, its error kept for /status), and never aborts the
tick. A collector that times out is left to finish in the background; until it does, it is not
started again and stays failed with "previous run still in progress", so a hung file read in a
worker thread holds one thread, not one per tick. Collectors must bound their own I/O (HTTP
timeouts) so that a stuck run ends. Each failure carries a reason (``error``, ``timeout``, or the
CannotSee reason when the agent's own access failed), and a successful collector's
``unreadable()`` metrics are recorded so the snapshot reports them as missing data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import MappingProxyType

import structlog

from agent.collectors.base import CannotSee, Collector
from agent.structs.durations import format_duration
from agent.structs.metrics import Family
from agent.structs.snapshot import CollectorStatus, Snapshot

log = structlog.get_logger("nodemedic.pipeline")


class Collection:
    """Runs a fixed set of collectors and builds immutable snapshots."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self.collectors = list(collectors)
        self._inflight: dict[str, asyncio.Task[list[Family]]] = {}
        self._last_error: dict[str, str | None] = {}
        self.owners = MappingProxyType(
            {spec.name: c.name for c in self.collectors for spec in c.metrics}
        )

    async def _run_one(self, c: Collector) -> tuple[CollectorStatus, list[Family]]:
        start = time.perf_counter()
        prev = self._inflight.get(c.name)
        if prev is not None and not prev.done():
            return CollectorStatus(c.name, False, 0.0, "previous run still in progress",
                                   reason="error"), []
        task = asyncio.create_task(c.collect(), name=f"collect:{c.name}")
        self._inflight[c.name] = task
        done, _ = await asyncio.wait({task}, timeout=c.timeout)
        elapsed = time.perf_counter() - start
        if not done:
            # Not cancelled on purpose: cancelling would free the slot while a worker thread is
            # still blocked (threads cannot be cancelled), and the next tick would block another.
            task.add_done_callback(_consume)
            return CollectorStatus(c.name, False, elapsed,
                                   f"timed out after {format_duration(c.timeout)}",
                                   reason="timeout"), []
        exc = task.exception()
        if exc is not None:
            msg = f"{type(exc).__name__}: {exc}"[:500]
            reason = exc.reason if isinstance(exc, CannotSee) else "error"
            return CollectorStatus(c.name, False, elapsed, msg, reason=reason), []
        families = task.result()
        try:
            unreadable = MappingProxyType(dict(c.unreadable()))
        except Exception as exc:  # a broken hook must not pass unreadable data off as read
            msg = f"unreadable(): {type(exc).__name__}: {exc}"[:500]
            return CollectorStatus(c.name, False, elapsed, msg, reason="error"), []
        try:
            degraded = c.degraded()
        except Exception as exc:  # a broken hook must not hide the collector's state
            degraded = f"degraded(): {type(exc).__name__}: {exc}"[:500]
        status = CollectorStatus(c.name, True, elapsed, None, tuple(f.name for f in families),
                                 unreadable=unreadable, degraded=degraded)
        return status, families

    async def collect(self) -> Snapshot:
        """Run all collectors concurrently and return the snapshot of this tick."""
        wall, mono = time.time(), time.monotonic()
        results = await asyncio.gather(*(self._run_one(c) for c in self.collectors))
        families: dict[str, Family] = {}
        statuses: dict[str, CollectorStatus] = {}
        for status, fams in results:
            statuses[status.name] = status
            self._log_transition(status)
            for fam in fams:
                if fam.name in families:  # two collectors must not claim one name; keep first
                    log.error("duplicate_family", family=fam.name, collector=status.name)
                    continue
                families[fam.name] = fam
        return Snapshot(
            taken_at=wall,
            monotonic=mono,
            families=MappingProxyType(families),
            collectors=MappingProxyType(statuses),
            owners=self.owners,
        )

    def _log_transition(self, status: CollectorStatus) -> None:
        """Log when a collector starts failing, changes error, or recovers — not every tick."""
        prev = self._last_error.get(status.name)
        if status.ok and status.unreadable:
            text = "cannot read " + ", ".join(
                f"{m} ({r})" for m, r in sorted(status.unreadable.items()))
            if text != prev:
                log.error("collector_cannot_read", collector=status.name,
                          reasons=sorted(status.cannot_see), metrics=sorted(status.unreadable))
            self._last_error[status.name] = text
            return
        if status.ok:
            if prev is not None:
                log.info("collector_recovered", collector=status.name, previous_error=prev)
            self._last_error[status.name] = None
            return
        if status.error != prev:
            if status.cannot_see:  # our configuration, not the node: say so loudly
                log.error("collector_cannot_see", collector=status.name, reason=status.reason,
                          error=status.error)
            else:
                log.warning("collector_failed", collector=status.name, error=status.error)
        self._last_error[status.name] = status.error

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        for c in self.collectors:
            try:
                await asyncio.wait_for(c.close(), timeout=2.0)
            except Exception as exc:  # closing must never block shutdown
                log.warning("collector_close_failed", collector=c.name, error=str(exc))


def _consume(task: asyncio.Task[list[Family]]) -> None:
    """Retrieve a cancelled/failed task's exception so asyncio does not log it as unhandled."""
    if not task.cancelled():
        task.exception()
