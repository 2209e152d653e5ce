"""Render one tick's metrics to Prometheus text (and gzip) once, for every scraper to share.

Called by agent.runtime.daemon after each tick (in a worker thread: rendering thousands of series
is CPU work that must not stall the event loop). The HTTP server (agent.exporter.server) serves the
cached bytes, so scrape cost does not grow with the number of scrapers or with the series count.
Rendering itself is prometheus_client's ``generate_latest``, fed by a bridge collector that turns
our ``Family`` objects into prometheus_client metric families.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.samples import Sample

from agent.structs.metrics import Family

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def to_prometheus(families: Iterable[Family]) -> Iterator[Metric]:
    """Convert our families to prometheus_client metrics (empty families are still declared)."""
    for fam in families:
        spec = fam.spec
        typ = "gauge" if spec.type == "info" else spec.type
        # prometheus_client appends _total to counter names in HELP/TYPE; samples keep full names.
        base = spec.name[: -len("_total")] if typ == "counter" else spec.name
        metric = Metric(base, spec.help, typ)
        names = spec.labelnames
        name = spec.name
        metric.samples = [
            Sample(name, dict(zip(names, values, strict=True)), value, None, None, None)
            for values, value in fam.samples
        ]
        yield metric


class FamilySource(PromCollector):
    """prometheus_client collector that yields whatever ``provider`` returns at render time."""

    def __init__(self, provider: Callable[[], Iterable[Family]]) -> None:
        self._provider = provider

    def collect(self) -> Iterable[Metric]:
        return to_prometheus(self._provider())

    def describe(self) -> Iterable[Metric]:
        return ()  # unchecked collector: names come and go with the snapshot


@dataclass(frozen=True, slots=True)
class Exposition:
    """One rendered exposition; ``rendered_at`` is monotonic seconds."""

    text: bytes
    gzipped: bytes
    rendered_at: float
    render_seconds: float


class Renderer:
    """Renders a registry to text + gzip; thread-safe, keeps the latest result."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self.latest: Exposition | None = None

    def render(self) -> Exposition:
        start = time.perf_counter()
        with self._lock:
            text = generate_latest(self._registry)
            # Level 5: nearly level 9's ratio on repetitive exposition text, far less CPU.
            gz = gzip.compress(text, compresslevel=5, mtime=0)
            exp = Exposition(text, gz, time.monotonic(), time.perf_counter() - start)
            self.latest = exp
        return exp
