"""Waiting in tests: poll a condition (a function or a coroutine function) until it holds.

``eventually`` fails with what was awaited and the last value seen; ``poll`` returns the last
value instead, for callers that assert with their own message (a cluster's log, say);
``seconds_until`` measures how long the wait took (None: not within the limit), for benches.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def _value(check: Callable[[], Any]) -> Any:
    value = check()
    return await value if inspect.isawaitable(value) else value


async def poll(check: Callable[[], Any], timeout: float, *, every: float = 0.05) -> Any:
    """The first truthy value of ``check()`` within ``timeout`` seconds, else its last value."""
    end = time.monotonic() + timeout
    while True:
        value = await _value(check)
        if value or time.monotonic() > end:
            return value
        await asyncio.sleep(every)


async def eventually(check: Callable[[], Any], timeout: float = 10.0,
                     what: str = "condition", *, every: float = 0.05) -> Any:
    """The first truthy value of ``check()``; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    value = await poll(check, timeout, every=every)
    if not value:
        raise AssertionError(f"{what}: not within {timeout:g}s (last: {value!r}, "
                             f"{time.monotonic() - start:.1f}s)")
    return value


async def seconds_until(check: Callable[[], Any], limit: float, *,
                        every: float = 0.25) -> float | None:
    """Seconds until ``check()`` is truthy, or None when it is not within ``limit`` seconds."""
    start = time.monotonic()
    return time.monotonic() - start if await poll(check, limit, every=every) else None
