"""One LIST+WATCH cache for every watcher in nodemedic (client-go's reflector, without a queue).

Used by agent.kube.reflector (the node collector's own Node and Lease), agent.kube.endpointslices
(lbskew's EndpointSlice names) and agent.peers.cluster (the failover leader's Nodes and Leases).

``run()`` LISTs in pages (``limit``/``continue``), then WATCHes from the list's resourceVersion
with bookmarks and a server-side ``timeoutSeconds``; when the server ends a watch it re-watches
from the last resourceVersion seen, without a LIST. 410 Gone (an ERROR event or the HTTP status)
means our version was compacted away: LIST again at once. Any other failure marks the cache
unsynced at once (so nobody takes stale data for fresh), counts it, and retries with capped
exponential backoff and jitter, starting over from a LIST.

Objects are stored through ``reduce`` (keep the few fields the caller reads: 5,000 Nodes stay
small); ``reduce`` returning None means "not wanted" and an object it cannot read is skipped and
counted. ``on_change(key, old, new)`` sees every change (new None: gone). ``max_items`` bounds
the cache; objects that find it full are counted in ``dropped``. Keys are object names, or
``namespace/name`` when one informer spans all namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

import structlog
from kubernetes_asyncio import client

from agent.backoff import Backoff
from agent.kube.client import default_timeout, raw_watch
from agent.kube.errors import LIST_TIMEOUT_SECONDS, KubeError, call_json

log = structlog.get_logger("nodemedic.informer")

T = TypeVar("T")
Resource = Literal["nodes", "leases", "endpointslices"]
# What reduce may raise on an object of an unexpected shape: that object is skipped, not fatal.
_BAD_OBJECT = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class _Gone(Exception):
    """The watch's resourceVersion is older than the server's history (410 Gone)."""


def _lister(api: Any, resource: Resource, namespace: str) -> tuple[Any, tuple[str, ...]]:
    """The typed list call for ``resource`` (in ``namespace``, or all namespaces when "")."""
    if resource == "nodes":
        return client.CoreV1Api(api).list_node, ()
    if resource == "leases":
        coord = client.CoordinationV1Api(api)
        if namespace:
            return coord.list_namespaced_lease, (namespace,)
        return coord.list_lease_for_all_namespaces, ()
    disc = client.DiscoveryV1Api(api)
    if namespace:
        return disc.list_namespaced_endpoint_slice, (namespace,)
    return disc.list_endpoint_slice_for_all_namespaces, ()


class Informer(Generic[T]):
    """A watched cache ``items: key -> reduce(object)``; lives on one event loop."""

    def __init__(
        self,
        api: Any,
        resource: Resource,
        reduce: Callable[[dict[str, Any]], T | None],
        *,
        namespace: str = "",
        field_selector: str = "",
        label_selector: str = "",
        on_change: Callable[[str, T | None, T | None], None] | None = None,
        max_items: int | None = None,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        page_size: int = 500,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.reduce = reduce
        self.on_change = on_change
        self.max_items = max_items
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.page_size = page_size
        self._sleep = sleep  # the backoff wait (tests record it)
        self._api = api
        self._list: Any = None  # the typed list call, bound in run() (on the event loop)
        self._args: tuple[str, ...] = ()
        self._selectors: dict[str, str] = {}
        if field_selector:
            self._selectors["field_selector"] = field_selector
        if label_selector:
            self._selectors["label_selector"] = label_selector
        self._task: asyncio.Task[None] | None = None
        self.items: dict[str, T] = {}
        self.synced = asyncio.Event()  # set by a LIST, cleared at once by any failure
        self.ever_synced = False  # at least one LIST succeeded (items may be stale, not empty)
        self.resource_version = ""
        self.last_error = ""
        self.relists = 0  # successful LISTs (start, after a failure, after 410 Gone)
        self.watch_restarts = 0  # watches the server ended normally (timeoutSeconds)
        self.events = 0  # ADDED/MODIFIED/DELETED events applied (bookmarks excluded)
        self.errors = 0  # failed LISTs/watches, each followed by a backoff
        self.gone = 0  # 410 Gone: history compacted, LIST again
        self.skipped = 0  # objects that could not be read (garbage): skipped, counted
        self.dropped = 0  # objects not stored because the cache was at max_items

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Run in the background (idempotent); :meth:`close` stops it."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"nodemedic:watch-{self.resource}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """LIST then WATCH until cancelled; never raises on API trouble (see ``last_error``)."""
        self._list, self._args = _lister(self._api, self.resource, self.namespace)
        backoff = Backoff(self.backoff_initial, self.backoff_max, jitter=0.5)
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch()
                self.watch_restarts += 1
                backoff.reset()
                continue
            except asyncio.CancelledError:
                raise
            except _Gone:
                self.gone += 1
                need_list = True
                continue
            except KubeError as exc:
                self._fail(str(exc))
            except client.ApiException as exc:
                self._fail(f"HTTP {exc.status}: {exc.reason}")
            except Exception as exc:  # any transport or stream error means "reconnect"
                self._fail(f"{type(exc).__name__}: {exc}".rstrip(": "))
            need_list = True
            log.warning("watch_failed", resource=self.resource, error=self.last_error,
                        retry_in=round(backoff.current, 2))
            await self._sleep(backoff.next())

    def _fail(self, message: str) -> None:
        self.synced.clear()
        self.errors += 1
        self.last_error = message

    # ---- storing -------------------------------------------------------------------------
    def _key(self, obj: dict[str, Any]) -> str | None:
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            return None
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        return f"{ns}/{name}" if ns and not self.namespace else name

    def _read(self, obj: Any) -> tuple[str, T | None] | None:
        """(key, reduced) for an object; None (counted in ``skipped``) when unreadable."""
        key = self._key(obj) if isinstance(obj, dict) else None
        if key is None:
            self._skip("object without metadata.name", obj)
            return None
        try:
            return key, self.reduce(obj)
        except _BAD_OBJECT as exc:
            self._skip(f"{type(exc).__name__}: {exc}", key)
            return None

    def _skip(self, why: str, what: Any) -> None:
        self.skipped += 1
        if self.skipped == 1 or self.skipped % 1000 == 0:  # a flood of garbage must not flood logs
            log.warning("watch_object_skipped", resource=self.resource, reason=why,
                        object=str(what)[:120], skipped=self.skipped)

    def _store(self, items: dict[str, T], key: str, new: T | None, old: T | None) -> None:
        """Put ``new`` under ``key`` (None removes it), within the bound; tell on_change."""
        if new is None:
            items.pop(key, None)
        elif key in items or self.max_items is None or len(items) < self.max_items:
            items[key] = new
        else:
            self.dropped += 1
            return
        if self.on_change is not None and (old is not None or new is not None):
            self.on_change(key, old, new)

    # ---- LIST and WATCH ------------------------------------------------------------------
    async def _relist(self) -> None:
        # Paged, so that 5,000 full Node objects are never held as parsed JSON at once. The new
        # cache is built aside and swapped in, so readers never see a half-listed one.
        old = self.items
        fresh: dict[str, T] = {}
        cont = ""
        while True:
            paging: dict[str, Any] = {"limit": self.page_size}
            if cont:
                paging["_continue"] = cont
            body = await call_json(
                self._list(
                    *self._args, **self._selectors, **paging,
                    _preload_content=False, _request_timeout=LIST_TIMEOUT_SECONDS,
                ),
                LIST_TIMEOUT_SECONDS,
            )
            for obj in body.get("items") or []:
                got = self._read(obj)
                if got is not None:
                    self._store(fresh, got[0], got[1], old.get(got[0]))
            meta = body.get("metadata") or {}
            self.resource_version = str(meta.get("resourceVersion") or self.resource_version)
            cont = str(meta.get("continue") or "")
            del body
            if not cont:
                break
        self.items = fresh
        for key in [k for k in old if k not in fresh]:
            if self.on_change is not None:
                self.on_change(key, old[key], None)
        self.relists += 1
        self.last_error = ""
        self.ever_synced = True
        self.synced.set()

    async def _watch(self) -> None:
        """Apply events until the server ends the watch; raises on failure, _Gone on 410."""
        w = raw_watch()()
        try:
            async for ev in w.stream(
                self._list,
                *self._args,
                **self._selectors,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                # Explicit: the ApiClient may be a plain one without nodemedic's defaults.
                _request_timeout=default_timeout(
                    [("watch", "true"), ("timeoutSeconds", self.watch_timeout)]
                ),
            ):
                self._apply(ev)
        except client.ApiException as exc:
            if exc.status == 410:
                raise _Gone from exc
            raise
        finally:
            await w.close()

    def _apply(self, ev: Any) -> None:
        obj = ev.get("raw_object") if isinstance(ev, dict) else None
        if not isinstance(obj, dict):  # not JSON, or not an event: the stream is broken
            raise ValueError(f"garbled watch event: {str(ev)[:120]}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        etype = ev.get("type")
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only moves the resourceVersion on
        self.events += 1
        if etype == "DELETED":
            key = self._key(obj)
            if key is not None:
                self._store(self.items, key, None, self.items.get(key))
            return
        got = self._read(obj)
        if got is not None:
            self._store(self.items, got[0], got[1], self.items.get(got[0]))
