"""Named, supervised background tasks: restart a crashed task with backoff, count restarts.

Used by agent.runtime.daemon for the tick loop, and by components that run watches. A task that
returns normally is done; one that raises is logged and restarted (1 s, 2 s, ... capped at 30 s);
cancellation stops it. Task names show up in logs and in nodemedic_task_restarts_total.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from agent.backoff import Backoff

log = structlog.get_logger("nodemedic.tasks")

Factory = Callable[[], Awaitable[None]]


class Supervisor:
    """Owns a set of named tasks and stops them together."""

    def __init__(self, on_restart: Callable[[str], None] | None = None) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._on_restart = on_restart

    def spawn(self, name: str, factory: Factory, *, restart: bool = True) -> asyncio.Task[None]:
        # Forget finished tasks (one per SIGHUP reload) so the map stays bounded.
        for done in [n for n, t in self._tasks.items() if t.done()]:
            del self._tasks[done]
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"task {name!r} already running")
        task = asyncio.create_task(self._run(name, factory, restart), name=f"nodemedic:{name}")
        self._tasks[name] = task
        return task

    async def _run(self, name: str, factory: Factory, restart: bool) -> None:
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task_crashed", task=name,
                              restart_in=backoff.current if restart else None)
                if not restart:
                    raise
                if self._on_restart is not None:
                    self._on_restart(name)
                await asyncio.sleep(backoff.next())

    def names(self) -> list[str]:
        return sorted(n for n, t in self._tasks.items() if not t.done())

    async def stop(self, grace: float = 3.0) -> None:
        """Cancel every task and wait up to ``grace`` seconds for them to finish."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=grace)
        self._tasks.clear()
