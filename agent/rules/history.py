"""Counter history for rate() and increase(): change points per series, windowed results.

:class:`History` keeps, per counter metric some rule reads with a window, the change points of
every series (:class:`SeriesChanges`, reset-corrected, bounded in series and samples) and one
:class:`Windowed` per (metric, function, window) that carries results over from tick to tick.
All times are monotonic (``Snapshot.monotonic``). No I/O.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence

from agent.structs.snapshot import Snapshot

from .compile import Leaf

MAX_HISTORY_SERIES = 100_000
MAX_CHANGES_PER_SERIES = 1024

Series = list[tuple[tuple[str, ...], float]]  # (label values, value) per series


class SeriesChanges:
    """Change points of one counter series, reset-corrected, for increase/rate over windows.

    Only changes are stored (most counters, e.g. OOM kills, never move), so an idle series costs
    one comparison per tick.
    """

    __slots__ = ("changes", "cursors", "first_seen", "last_raw", "offset", "popped", "seen")

    def __init__(self, now: float, raw: float, tick: int) -> None:
        self.popped = 0  # change points dropped from the left so far (cursor base)
        self.cursors: dict[float, int] = {}  # window -> absolute index of its base change
        self.first_seen = now
        self.last_raw = raw
        self.offset = 0.0
        self.changes: deque[tuple[float, float]] = deque([(now, raw)])
        self.seen = tick

    def update(self, now: float, raw: float, horizon: float) -> int:
        """Record a new raw value; return how many old change points were dropped."""
        if raw < self.last_raw:  # counter reset (process restart): keep counting upwards
            self.offset += self.last_raw
        self.last_raw = raw
        self.changes.append((now, raw + self.offset))
        dropped = 0
        ch = self.changes
        while len(ch) >= 2 and ch[1][0] <= now - horizon:
            ch.popleft()
            self.popped += 1
        while len(ch) > MAX_CHANGES_PER_SERIES:
            ch.popleft()
            self.popped += 1
            dropped += 1
        return dropped

    def since(self, start: float, window: float) -> tuple[float, float]:
        """The increase from ``start`` to now, and the window start from which that value is
        stale (a change point leaves the window; inf: only a new change point alters it)."""
        ch = self.changes
        last_t, last = ch[-1]
        if last_t <= start:
            return 0.0, math.inf  # unchanged for the whole window (most counters, most ticks)
        first_t, first = ch[0]
        if first_t > start:
            # Seen for less than the window: count what we saw (never guessed).
            return last - first, first_t
        # The change in effect at the window start: a per-window cursor that only moves
        # forward (amortised O(1) per tick instead of a search).
        popped = self.popped
        cur = self.cursors.get(window, popped)
        i = (cur if cur > popped else popped) - popped
        end = len(ch) - 1
        while i < end and ch[i + 1][0] <= start:
            i += 1
        self.cursors[window] = i + popped
        return last - ch[i][1], ch[i + 1][0]  # i < end: the last change is after start


class Windowed:
    """rate() or increase() of every series of one counter over one window, kept from tick to
    tick: only series that changed, or whose window start passed one of their change points
    (``due``, a heap of (window start, position)), are recomputed. Rebuilt from scratch when
    series come or go, after a tick it was not asked for, or when ``due`` grows past its bound.
    A tick where nothing was recomputed returns the very list of the last one (never changed
    once returned), so callers can carry their results over by identity.
    """

    __slots__ = ("counters", "due", "gen", "lvs", "out", "pos", "tick")

    def __init__(self) -> None:
        self.gen = -1
        self.tick = -1
        self.lvs: list[tuple[str, ...]] = []
        self.counters: list[SeriesChanges] = []
        self.pos: dict[tuple[str, ...], int] = {}
        self.out: Series = []
        self.due: list[tuple[float, int]] = []

    def value(self, i: int, start: float, window: float, now: float,
              rate: bool) -> float | None:
        """Recompute position ``i`` (None: no rate yet) and schedule when it goes stale."""
        c = self.counters[i]
        inc, stale = c.since(start, window)
        if rate:
            age = now - c.first_seen
            span = window if window <= age else age
            if span <= 0:
                return None
            if age < window and inc:
                # The span still grows: recompute next tick. Not for a series that has not
                # moved since it was first seen (most OOM and throttling counters): its rate is
                # 0 over any span until it moves (``changed``) or outlives the window (``due``).
                stale = start
            inc /= span
        if stale != math.inf:
            heapq.heappush(self.due, (stale, i))
        return inc

    def compute(self, hist: dict[tuple[str, ...], SeriesChanges],
                changed: Sequence[tuple[str, ...]], *, gen: int, tick: int, now: float,
                function: str, window: float) -> Series:
        start = now - window
        rate = function == "rate"
        if (self.gen == gen and self.tick == tick - 1
                and len(self.due) <= 4 * len(self.out) + 64):
            dirty = {self.pos[lv] for lv in changed}
            due = self.due
            while due and due[0][0] <= start:
                dirty.add(heapq.heappop(due)[1])
            if not dirty:
                self.tick = tick
                return self.out
            out, lvs = list(self.out), self.lvs
            moved = False
            for i in dirty:
                v = self.value(i, start, window, now, rate)
                if v is None:  # cannot happen while no series is new: start afresh
                    break
                if v != out[i][1]:
                    out[i] = (lvs[i], v)
                    moved = True
            else:
                self.tick = tick
                if moved:
                    self.out = out
                return self.out
        self.lvs, self.counters = list(hist), list(hist.values())
        self.due = []
        out = []
        complete = True
        for i, lv in enumerate(self.lvs):
            v = self.value(i, start, window, now, rate)
            if v is None:
                complete = False  # positions would shift once it has a rate: not reusable
                continue
            out.append((lv, v))
        self.out, self.pos = out, {lv: i for i, lv in enumerate(self.lvs)}
        self.gen, self.tick = (gen, tick) if complete else (-1, -1)
        return out



class History:
    """The change points of every counter series a windowed rule reads, and the windowed
    results built on them. ``set_horizons`` follows the rule set; ``update`` is called once per
    tick before any rule reads ``windowed``."""

    def __init__(self, max_series: int = MAX_HISTORY_SERIES) -> None:
        self.max_series = max_series
        self.evictions = 0
        self._series: dict[str, dict[tuple[str, ...], SeriesChanges]] = {}
        # Per counter: series updated this tick, and a generation bumped when series come or
        # go (or the metric is frozen); with them, windowed results carry over between ticks.
        # One Windowed per (metric, function, window) some rule reads: bounded by the rules.
        self._changed: dict[str, list[tuple[str, ...]]] = {}
        self._gen: dict[str, int] = {}
        self._windows: dict[tuple[str, str, float], Windowed] = {}
        self._horizons: dict[str, float] = {}
        # The family each counter was last recorded from: the same object again (a collector
        # re-serving its last read) holds no new observation, so it is not walked again.
        self._recorded: dict[str, object] = {}
        self._tick = 0

    @property
    def series_count(self) -> int:
        """Counter series held (the nodemedic_rule_history_series gauge)."""
        return sum(len(h) for h in self._series.values())

    def set_horizons(self, leaves: Iterable[Leaf]) -> None:
        """Keep history for exactly the counters these leaves read, as long as their longest
        window; forget the rest."""
        horizons: dict[str, float] = {}
        for leaf in leaves:
            if leaf.function != "value":
                for m in (leaf.metric, leaf.divide_by):
                    if m:
                        horizons[m] = max(horizons.get(m, 0.0), leaf.window)
        self._horizons = horizons
        self._series = {m: h for m, h in self._series.items() if m in horizons}
        self._changed = {m: c for m, c in self._changed.items() if m in horizons}
        self._gen = {m: g for m, g in self._gen.items() if m in horizons}
        self._recorded.clear()
        self._windows.clear()  # rebuilt on the next tick for the windows the new rules read

    def update(self, snapshot: Snapshot, now: float) -> None:
        """Start a tick: record this snapshot's counter values (a metric without data is
        frozen: its history stays as it was)."""
        self._tick += 1
        tick = self._tick
        total = self.series_count
        for metric, horizon in self._horizons.items():
            if not snapshot.has_data_for(metric):
                self._gen[metric] = self._gen.get(metric, 0) + 1
                continue  # frozen: keep the history as it was
            fam = snapshot.family(metric)
            if fam is not None and self._recorded.get(metric) is fam:
                self._changed[metric] = []
                continue
            self._recorded[metric] = fam
            hist = self._series.setdefault(metric, {})
            samples = fam.samples if fam is not None else []
            seen = 0
            added = False
            changed: list[tuple[str, ...]] = []
            for lv, raw in samples:
                c = hist.get(lv)
                if c is None:
                    if total >= self.max_series:
                        self.evictions += 1
                        continue
                    hist[lv] = SeriesChanges(now, raw, tick)
                    total += 1
                    seen += 1
                    added = True
                    continue
                if c.seen != tick:
                    seen += 1
                c.seen = tick
                if raw != c.last_raw:
                    self.evictions += c.update(now, raw, horizon)
                    changed.append(lv)
            self._changed[metric] = changed
            if seen < len(hist):  # vanished series (pod gone): forget them
                kept = {lv: c for lv, c in hist.items() if c.seen == tick}
                total -= len(hist) - len(kept)
                self._series[metric] = kept
                added = True
            if added:  # positions moved: windowed results are rebuilt
                self._gen[metric] = self._gen.get(metric, 0) + 1

    def windowed(self, metric: str, function: str, window: float, now: float) -> Series:
        """rate()/increase() of every series of ``metric`` this tick (see Windowed)."""
        key = (metric, function, window)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = Windowed()
        return w.compute(self._series.get(metric, {}), self._changed.get(metric, ()),
                         gen=self._gen.get(metric, 0), tick=self._tick, now=now,
                         function=function, window=window)
