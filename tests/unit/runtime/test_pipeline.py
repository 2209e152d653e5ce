"""One tick runs collectors concurrently; a failing, slow or hung collector fails alone."""

from __future__ import annotations

import asyncio
import threading
import time

from agent.collectors.base import Collector, CollectorContext
from agent.runtime.pipeline import Collection
from agent.settings import Settings
from agent.structs.metrics import Family, MetricSpec

SPEC_A = MetricSpec("nodemedic_test_a", "a", "gauge", ("x",))
SPEC_B = MetricSpec("nodemedic_test_b", "b", "gauge")


def ctx(timeout: float = 0.3) -> CollectorContext:
    return CollectorContext(Settings(collector_timeout=timeout))


class Good(Collector):
    name = "good"
    metrics = (SPEC_A,)

    async def collect(self) -> list[Family]:
        fam = SPEC_A.family()
        fam.add(["1"], 42)
        return [fam]


class Broken(Collector):
    name = "broken"
    metrics = (SPEC_B,)

    async def collect(self) -> list[Family]:
        raise RuntimeError("cgroup root vanished")


class Slow(Collector):
    name = "slow"
    metrics = (SPEC_B,)

    async def collect(self) -> list[Family]:
        await asyncio.sleep(10)
        return []


class HungThread(Collector):
    """Blocks a worker thread (like a hung NFS read) until released."""

    name = "hung"
    metrics = (SPEC_B,)
    calls = 0

    def __init__(self, c: CollectorContext, release: threading.Event) -> None:
        super().__init__(c)
        self.release = release

    async def collect(self) -> list[Family]:
        type(self).calls += 1
        await asyncio.to_thread(self.release.wait, 5)
        return [SPEC_B.family()]


async def test_failure_isolated_to_its_collector() -> None:
    """A raising collector is marked failed with its error; others' data is intact."""
    c = ctx()
    snap = await Collection([Good(c), Broken(c)]).collect()
    assert snap.collectors["good"].ok
    assert not snap.collectors["broken"].ok
    assert "cgroup root vanished" in (snap.collectors["broken"].error or "")
    fam = snap.family("nodemedic_test_a")
    assert fam is not None and fam.get(x="1") == 42
    assert snap.has_data_for("nodemedic_test_a")
    assert not snap.has_data_for("nodemedic_test_b")


async def test_timeout_marks_only_that_collector_and_bounds_the_tick() -> None:
    """A collector that exceeds its timeout is failed; the tick ends near the timeout."""
    c = ctx(0.2)
    start = time.monotonic()
    snap = await Collection([Good(c), Slow(c)]).collect()
    assert time.monotonic() - start < 2.0
    assert snap.collectors["good"].ok
    assert snap.collectors["slow"].error == "timed out after 200ms"


async def test_hung_thread_is_not_started_twice() -> None:
    """While a previous run is stuck in a thread, the collector is reported failed, not re-run."""
    release = threading.Event()
    c = ctx(0.1)
    HungThread.calls = 0
    coll = Collection([HungThread(c, release)])
    first = await coll.collect()
    second = await coll.collect()
    assert first.collectors["hung"].error == "timed out after 100ms"
    assert second.collectors["hung"].error == "previous run still in progress"
    assert HungThread.calls == 1
    release.set()
    await asyncio.sleep(0.1)
    third = await coll.collect()
    assert third.collectors["hung"].ok
    assert HungThread.calls == 2


async def test_failure_logged_once_then_recovery_logged() -> None:
    """A collector failing every tick is logged once; its recovery is logged once."""
    import logging

    import structlog

    c = ctx()
    broken = Broken(c)
    coll = Collection([broken])
    saved = structlog.get_config()  # other tests (the demo) may have set level "error"
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                await coll.collect()
            broken.collect = Good(c).collect  # type: ignore[method-assign]
            await coll.collect()
            await coll.collect()
    finally:
        structlog.configure(**saved)
    events = [e["event"] for e in logs]
    assert events == ["collector_failed", "collector_recovered"]


async def test_supervisor_forgets_finished_tasks() -> None:
    """One short task per SIGHUP must not grow the supervisor's task map forever."""
    from agent.runtime.tasks import Supervisor

    sup = Supervisor()

    async def quick() -> None:
        return None

    for i in range(50):
        await sup.spawn(f"reload-{i}", quick, restart=False)
    sup.spawn("last", quick, restart=False)
    assert len(sup._tasks) == 1
    await sup.stop()
