"""Exponential backoff with a cap and optional jitter: the retry delays of the agent's loops.

Used by agent.kube.informer (watch reconnects, jittered), agent.problems.journal (journalctl
restarts) and agent.runtime.tasks (crashed supervised tasks). ``next()`` returns the delay to wait
now and doubles (``factor``) the next one up to ``maximum``; ``reset()`` starts over after a
success. With ``jitter=j`` each returned delay is the nominal one scaled by a uniform factor in
[1 - j, 1 + j), so many agents reconnecting at once spread out. ``delay_for(attempt, ...)`` is
the same schedule for code that counts attempts instead of holding a Backoff.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def delay_for(attempt: int, initial: float, maximum: float, factor: float = 2.0) -> float:
    """The nominal delay before retry ``attempt`` (1 = the first): ``initial * factor **
    (attempt - 1)`` capped at ``maximum`` (never overflows, however many attempts)."""
    steps = max(attempt - 1, 0)
    if factor <= 1.0 or initial >= maximum:
        return min(initial, maximum)
    if steps >= math.log(maximum / initial, factor):
        return maximum
    return min(maximum, initial * factor ** steps)


class Backoff:
    """Delays ``initial``, ``initial * factor``, ... capped at ``maximum`` (seconds)."""

    def __init__(self, initial: float, maximum: float, *, factor: float = 2.0,
                 jitter: float = 0.0, rand: Callable[[], float] = random.random) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError(f"bad backoff: initial={initial} maximum={maximum} "
                             f"factor={factor} jitter={jitter}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rand = rand
        self._delay = initial

    @property
    def current(self) -> float:
        """The nominal (unjittered) delay the next ``next()`` is based on."""
        return self._delay

    def next(self) -> float:
        """The delay to wait now; the following one grows by ``factor`` up to ``maximum``."""
        base = self._delay
        self._delay = min(self.maximum, self._delay * self.factor)
        if self.jitter:
            return base * (1.0 - self.jitter + 2.0 * self.jitter * self._rand())
        return base

    def reset(self) -> None:
        """Start over from ``initial`` (the retried thing worked)."""
        self._delay = self.initial
