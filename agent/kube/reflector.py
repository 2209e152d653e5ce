"""Keep one named Node or Lease current with LIST + WATCH (a one-object client-go reflector).

Used by agent.collectors.node (its own Node and its kube-node-lease Lease). ``run()`` lists the
object, then watches from the list's resourceVersion with bookmarks; on 410 Gone it re-lists; on
any connection failure it marks itself unsynced at once (so nobody reads stale data as fresh) and
reconnects with capped exponential backoff and jitter. State is plain dicts for the caller.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubernetes_asyncio import client, watch

Kind = Literal["node", "lease"]


@dataclass
class ReflectorState:
    """What the reflector knows; ``obj`` is meaningful only while ``synced``."""

    obj: dict[str, Any] | None = None
    synced: bool = False
    exists: bool = False
    last_error: str = ""
    resource_version: str = ""
    lists: int = 0
    watch_restarts: int = 0
    errors: int = 0
    gone: int = 0


class ObjectReflector:
    """LIST+WATCH one object by name; read ``state`` from the same event loop."""

    def __init__(
        self,
        api: Any,
        kind: Kind,
        name: str,
        namespace: str = "",
        *,
        watch_timeout: int = 60,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.state = ReflectorState()
        self._selector = f"metadata.name={name}"
        # Typed as Any: with _preload_content=False these return the raw aiohttp response.
        self._list: Any
        if kind == "node":
            self._list = client.CoreV1Api(api).list_node
            self._args: tuple[str, ...] = ()
        else:
            self._list = client.CoordinationV1Api(api).list_namespaced_lease
            self._args = (namespace,)
        self.changed = asyncio.Event()

    def _apply(self, obj: dict[str, Any] | None) -> None:
        self.state.obj = obj
        self.state.exists = obj is not None
        self.changed.set()

    async def _relist(self) -> None:
        resp = await self._list(*self._args, field_selector=self._selector, _preload_content=False)
        body = json.loads(await resp.read())
        items = body.get("items") or []
        self.state.lists += 1
        self.state.resource_version = str(body.get("metadata", {}).get("resourceVersion", ""))
        self.state.synced = True
        self.state.last_error = ""
        self._apply(items[0] if items else None)

    async def _watch_once(self) -> None:
        """Follow changes until the server ends the watch (timeout) or it fails."""
        w = watch.Watch()
        try:
            async for ev in w.stream(
                self._list,
                *self._args,
                field_selector=self._selector,
                resource_version=self.state.resource_version,
                timeout_seconds=self.watch_timeout,
                allow_watch_bookmarks=True,
            ):
                raw = ev.get("raw_object") or {}
                rv = (raw.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.state.resource_version = str(rv)
                if ev["type"] in ("ADDED", "MODIFIED"):
                    self._apply(raw)
                elif ev["type"] == "DELETED":
                    self._apply(None)
        finally:
            await w.close()

    async def run(self) -> None:
        """Run until cancelled; never raises (errors are recorded in ``state``)."""
        delay = self.backoff_initial
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()
                self.state.watch_restarts += 1
                delay = self.backoff_initial
            except asyncio.CancelledError:
                raise
            except client.ApiException as exc:
                if exc.status == 410:
                    self.state.gone += 1
                    need_list = True  # our version was compacted: list again, then watch
                    continue
                self._fail(f"HTTP {exc.status}: {exc.reason}")
            except Exception as exc:  # any transport error means "reconnect"
                self._fail(f"{type(exc).__name__}: {exc}".rstrip(": "))
            else:
                continue
            need_list = True
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
            delay = min(self.backoff_max, delay * 2)

    def _fail(self, message: str) -> None:
        self.state.synced = False
        self.state.errors += 1
        self.state.last_error = message
        self.changed.set()


def renew_age_seconds(lease: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the Lease's ``spec.renewTime`` (None when it has never been renewed)."""
    renew = (lease.get("spec") or {}).get("renewTime")
    if not renew:
        return None
    try:
        ts = datetime.fromisoformat(str(renew).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, (time.time() if now is None else now) - ts)
