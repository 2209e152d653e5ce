"""A bounded, rate-limited queue of raw log lines between one source and its consumer.

Every source (kmsg, a file, one journalctl) puts raw lines here from the event loop; one
consumer task takes them in batches and parses and matches them in a worker thread. Memory is
bounded whatever the volume: above ``rate`` lines per second (token bucket with a one-second
burst) lines are dropped and counted as ``rate``; when the consumer falls behind and ``maxlen``
lines wait, new lines are dropped and counted as ``queue``. Sources that can wait (a file,
the journalctl pipe) call :meth:`LineQueue.wait_room` first, so they lag instead of dropping:
only the kernel ring buffer, which overwrites what is not read, ever drops as ``queue``.
Nothing is lost below the rate limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class SourceStats:
    """Counters of one source, exported as metrics and shown in /status."""

    read: int = 0
    matched: int = 0
    dropped: dict[str, int] = field(
        default_factory=lambda: {"rate": 0, "queue": 0, "overwritten": 0, "too_long": 0,
                                 "unparsable": 0})
    restarts: int = 0
    up: bool = False
    last_error: str | None = None


class LineQueue:
    """Bounded FIFO of raw lines with a token-bucket rate limit and drop counters."""

    def __init__(self, stats: SourceStats, maxlen: int = 20_000, rate: float = 20_000.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.maxlen = maxlen
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()
        self._items: deque[str | bytes] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def put_many(self, lines: Iterable[str | bytes]) -> None:
        """Queue lines (called on the event loop); drops beyond the limits are counted."""
        self._refill()
        added = False
        for line in lines:
            self.stats.read += 1
            if self._tokens < 1.0:
                self.stats.dropped["rate"] += 1
                continue
            self._tokens -= 1.0
            if len(self._items) >= self.maxlen:
                self.stats.dropped["queue"] += 1
                continue
            self._items.append(line)
            added = True
        if added:
            self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    async def wait_room(self, n: int) -> None:
        """Wait until ``n`` more lines fit (backpressure for sources that can wait)."""
        n = min(n, self.maxlen)
        while self.maxlen - len(self._items) < n:
            self._room.clear()
            await self._room.wait()

    async def get_batch(self, max_items: int = 2000) -> list[str | bytes]:
        """Wait for lines and take up to ``max_items`` of them."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        n = min(max_items, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        self._room.set()
        return batch
