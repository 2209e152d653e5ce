"""The exposition is rendered by the first scrape after a tick: later scrapes reuse it, ticks
nobody scrapes cost no render, and every scrape still shows the latest finished tick."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge

from agent.exporter.render import Exposition, Renderer
from agent.structs.metrics import Family, MetricSpec

TICK = MetricSpec("nodemedic_test_tick", "Which tick.", "gauge", ())


class Ticks:
    """Stands in for the daemon: each tick publishes a new value and marks the renderer stale."""

    def __init__(self) -> None:
        self.n = 0
        self.rendered: list[Exposition] = []
        self.renderer = Renderer(CollectorRegistry(auto_describe=False), self.families,
                                 self.rendered.append)

    def families(self) -> list[Family]:
        fam = TICK.family()
        fam.add([], self.n)
        return [fam]

    def tick(self) -> None:
        self.n += 1
        self.renderer.invalidate()


async def test_nothing_before_the_first_tick() -> None:
    t = Ticks()
    assert await t.renderer.current() is None
    assert t.renderer.renders == 0


async def test_first_scrape_after_a_tick_renders_the_rest_reuse_it() -> None:
    t = Ticks()
    for _ in range(5):  # five ticks, nobody scraping: no render at all
        t.tick()
    assert t.renderer.renders == 0
    first = await t.renderer.current()
    assert first is not None and b"nodemedic_test_tick 5.0" in first.text
    assert await t.renderer.current() is first  # a second scrape in the same tick: cached
    assert t.renderer.renders == 1 and t.rendered == [first]
    t.tick()
    after = await t.renderer.current()
    assert after is not None and b"nodemedic_test_tick 6.0" in after.text
    assert t.renderer.renders == 2


async def test_concurrent_scrapes_share_one_render() -> None:
    t = Ticks()
    t.tick()
    exps = await asyncio.gather(*(t.renderer.current() for _ in range(10)))
    assert t.renderer.renders == 1
    assert all(e is exps[0] for e in exps)


async def test_a_tick_during_a_render_is_rendered_by_the_next_scrape() -> None:
    t = Ticks()
    t.tick()
    pending = asyncio.ensure_future(t.renderer.current())
    await asyncio.sleep(0)  # the render has started with tick 1's families
    t.tick()
    first = await pending
    assert first is not None and b"nodemedic_test_tick 1.0" in first.text
    second = await t.renderer.current()
    assert second is not None and b"nodemedic_test_tick 2.0" in second.text


async def test_self_metrics_are_shown_as_at_the_end_of_the_tick() -> None:
    """A render on a later scrape still shows the agent's own metrics of the tick it renders,
    not values a tick in progress has already changed."""
    registry = CollectorRegistry(auto_describe=False)
    gauge = Gauge("nodemedic_test_failures", "Failures.", registry=registry)
    renderer = Renderer(registry, list)
    gauge.set(1)
    renderer.invalidate()
    gauge.set(2)  # the next tick has begun
    exp = await renderer.current()
    assert exp is not None and b"nodemedic_test_failures 1.0" in exp.text
