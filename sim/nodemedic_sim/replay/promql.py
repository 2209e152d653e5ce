"""Fetch recorded series from Prometheus for ``nodemedic replay``: query_range, split per node.

Used by nodemedic_sim.replay.timeline. For each metric it asks ``last_over_time(METRIC[MAX_AGE])``
over the replay window at the replay step, so a value exists at a step only when a sample was
scraped in the MAX_AGE before it: Prometheus' own 5-minute lookback would carry a stopped series'
last value forward and replay minutes of "data" nobody collected (a gap must stay a gap). Windows
longer than Prometheus' 11,000 points per series are fetched in chunks. Series are grouped by
the node label (``instance`` as the shipped scrape configs set it) and their labels reduced to
the metric's own label names, in the order the engine expects (missing labels are ""). Read-only:
only GET /api/v1/query_range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

MAX_POINTS = 10_000  # per series and request (Prometheus refuses more than 11,000)
REQUEST_TIMEOUT = 60.0

LabelValues = tuple[str, ...]


class PrometheusError(Exception):
    """Prometheus could not be queried or answered an error; the message says which query."""


@dataclass(slots=True)
class Recorded:
    """The values of one metric: node -> step index -> [(label values, value)]."""

    metric: str
    by_node: dict[str, dict[int, list[tuple[LabelValues, float]]]] = field(default_factory=dict)
    duplicates: int = 0  # series dropped as the same node and labels as another (see fetch)


def steps(start: float, end: float, step: float) -> list[float]:
    """The evaluation times from ``start`` to ``end`` inclusive (what query_range returns)."""
    n = math.floor((end - start) / step + 1e-9)
    return [start + i * step for i in range(n + 1)]


def query_for(metric: str, max_age: float) -> str:
    """The PromQL of one metric: only samples scraped in the last ``max_age`` count. The range
    is a millisecond short so that it is (t - max_age, t] on every Prometheus version (before
    3.0 both ends were included: a sample exactly one step old would count twice)."""
    return f"last_over_time({metric}[{max(1, round(max_age * 1000) - 1)}ms])"


class PrometheusSource:
    """A Prometheus HTTP API at ``url`` (``http://host:9090``, optionally with a path prefix)."""

    def __init__(self, url: str, *, timeout: float = REQUEST_TIMEOUT,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = session

    async def __aenter__(self) -> PrometheusSource:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query_range(self, query: str, start: float, end: float,
                          step: float) -> list[dict[str, Any]]:
        """The ``result`` matrix of one query_range call (raises PrometheusError)."""
        assert self._session is not None, "use 'async with PrometheusSource(...)'"
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                  "step": f"{step:g}"}
        url = f"{self.url}/api/v1/query_range?{urlencode(params)}"
        try:
            async with self._session.get(url) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PrometheusError(f"cannot query {self.url}: {type(exc).__name__}: {exc}") from exc
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise PrometheusError(
                f"{self.url}: HTTP {resp.status}, not a Prometheus API answer: {text[:200]!r}"
            ) from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else text[:200]
            raise PrometheusError(f"{self.url}: query {query!r} failed: HTTP {resp.status}: "
                                  f"{error}")
        result = (body.get("data") or {}).get("result") or []
        return [r for r in result if isinstance(r, dict)]

    async def fetch(self, metric: str, labelnames: Sequence[str], times: Sequence[float],
                    step: float, *, max_age: float, node_label: str,
                    match: str = "") -> Recorded:
        """Every series of ``metric`` at ``times`` (evenly ``step`` apart), by node; ``match``
        adds label matchers (``job="nodemedic"``). Two series of one node that differ only in
        labels the metric does not have (two jobs scraping the agent) would be one series twice
        to the engine: the first is kept, the others counted in ``duplicates``."""
        out = Recorded(metric)
        if not times:
            return out
        t0 = times[0]
        query = query_for(metric + (f"{{{match}}}" if match else ""), max_age)
        for first in range(0, len(times), MAX_POINTS):
            chunk = times[first:first + MAX_POINTS]
            seen: set[tuple[str, LabelValues]] = set()
            for series in await self.query_range(query, chunk[0], chunk[-1], step):
                labels = series.get("metric") or {}
                node = labels.get(node_label, "")
                if not node:
                    continue  # not attributable to a node: the agent never saw it either
                lv = tuple(str(labels.get(name, "")) for name in labelnames)
                key = (node, lv)
                if key in seen:
                    out.duplicates += first == 0  # counted once, skipped in every chunk
                    continue
                seen.add(key)
                per_step = out.by_node.setdefault(node, {})
                for point in series.get("values") or []:
                    at, raw = float(point[0]), float(point[1])
                    i = round((at - t0) / step)
                    per_step.setdefault(i, []).append((lv, raw))
        return out

def nodes_of(recorded: Mapping[str, Recorded]) -> list[str]:
    """Every node that has any series in any of the recorded metrics, sorted."""
    return sorted({n for rec in recorded.values() for n in rec.by_node})
