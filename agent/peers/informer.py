"""List+watch caches of the objects the leader needs, reduced to the few fields it reads.

Called by agent.peers.stage while this agent leads (Nodes, kube-node-lease Leases, the agents'
heartbeat Leases). One LIST then one long WATCH from its resourceVersion; on 410 Gone or a broken
stream it relists (with backoff on errors). No per-object polling: the API load is one watch per
resource whatever the cluster size. Objects are stored through ``reduce`` (a few fields each) so
5,000 nodes stay small; ``on_change(name, old, new)`` sees every change (new None = deleted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import structlog

from agent.kube.errors import KubeError
from agent.peers import rest

log = structlog.get_logger("nodemedic.informer")

T = TypeVar("T")


class Informer(Generic[T]):
    """A watched cache ``items: name -> reduce(object)``; ``synced`` after the first LIST."""

    def __init__(
        self, api: Any, path: str, reduce: Callable[[dict[str, Any]], T], *,
        query: Mapping[str, str] | None = None,
        on_change: Callable[[str, T | None, T | None], None] | None = None,
        watch_timeout: int = 300, backoff_max: float = 10.0, page_size: int = 500,
    ) -> None:
        self.api = api
        self.path = path
        self.reduce = reduce
        self.query = dict(query or {})
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self.page_size = page_size
        self.items: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.relists = 0
        self.events = 0
        self.errors = 0
        self.skipped = 0  # objects that could not be reduced (garbage): skipped, counted

    def _set(self, name: str, new: T | None) -> None:
        old = self.items.get(name)
        if new is None:
            self.items.pop(name, None)
        else:
            self.items[name] = new
        if self.on_change is not None and (old is not None or new is not None):
            self.on_change(name, old, new)

    def _reduce(self, obj: dict[str, Any]) -> tuple[str, T] | None:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            self.skipped += 1
            return None
        try:
            return name, self.reduce(obj)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.skipped += 1
            return None

    async def _relist(self) -> str:
        # Paged, so that 5,000 full Node objects are never held as parsed JSON at once.
        seen: set[str] = set()
        cont = ""
        rv = ""
        while True:
            query = {**self.query, "limit": str(self.page_size)}
            if cont:
                query["continue"] = cont
            body = await rest.list_objects(self.api, self.path, query)
            for obj in body.get("items") or []:
                if not isinstance(obj, dict):
                    continue
                got = self._reduce(obj)
                if got is not None:
                    seen.add(got[0])
                    self._set(*got)
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            cont = str(meta.get("continue") or "")
            del body
            if not cont:
                break
        self.relists += 1
        for gone in [n for n in self.items if n not in seen]:
            self._set(gone, None)
        self.synced.set()
        return rv

    async def run(self) -> None:
        """Run until cancelled; never raises on API trouble."""
        delay = 0.2
        rv = ""
        while True:
            try:
                if not rv:
                    rv = await self._relist()
                async for event in rest.watch_objects(
                    self.api, self.path, rv, self.query, self.watch_timeout
                ):
                    etype = event.get("type")
                    obj = event.get("object") or {}
                    if etype == "ERROR":
                        rv = ""  # 410 Gone (compacted) or similar: start over from a LIST
                        break
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = str(new_rv)
                    if etype == "BOOKMARK":
                        continue
                    self.events += 1
                    if etype == "DELETED":
                        name = (obj.get("metadata") or {}).get("name")
                        if isinstance(name, str):
                            self._set(name, None)
                        continue
                    got = self._reduce(obj)
                    if got is not None:
                        self._set(*got)
                delay = 0.2
            except KubeError as exc:
                self.errors += 1
                rv = ""
                log.warning("watch_failed", path=self.path, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)
