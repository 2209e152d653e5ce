"""A bounded list+watch cache of discovery.k8s.io/v1 EndpointSlices for the lbskew collector.

Started by agent.collectors.lbskew when an API client is shared (``ctx.shared["api"]``). One LIST
of all namespaces' EndpointSlices, then one WATCH from its resourceVersion; on 410 Gone (an ERROR
event) or a broken stream it relists, with backoff on errors. Each slice is reduced to what
lbskew needs: its Service (label ``kubernetes.io/service-name``), its ports, and per endpoint the
address, readiness and pod (``targetRef``). At most ``max_slices`` slices are held; the rest are
counted in ``dropped``.

Services themselves are not read: the in-memory API server used for tests does not serve them,
and lbskew does not need them. A ClusterIP:port is tied to its Service by kube-proxy's rule
comment (``ns/svc:port cluster IP``) and to its endpoints by the slices with that service-name
label and port name; IPVS virtual services (which carry no names) are tied to a Service through
their real servers' addresses.

The collector reads :meth:`EndpointSliceCache.view`: a snapshot copied on the event loop after
a change and indexed lazily in the collector's worker thread, which therefore never iterates a
dict the watch is mutating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client

from agent.kube.errors import KubeError, KubeUnavailable, call_json

log = structlog.get_logger("nodemedic.endpointslices")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_MAX_SLICES = 20_000
MAX_WATCH_LINE = 4 * 1024 * 1024
WATCH_TIMEOUT_SECONDS = 300


@dataclass(frozen=True, slots=True)
class EndpointName:
    """What the slices say about one endpoint address."""

    namespace: str
    service: str
    port: str  # the Service port's name ("" for an unnamed single port)
    pod: str


@dataclass(frozen=True, slots=True)
class _Slice:
    namespace: str
    service: str
    ports: tuple[tuple[str, int], ...]  # (name, port)
    endpoints: tuple[tuple[str, bool, str], ...]  # (ip, ready, pod name)


class NameView:
    """Immutable lookups over a snapshot of the cache: endpoint address -> name, Service port
    -> endpoint addresses.

    Built on the event loop as a shallow copy of the slice dict (cheap, C-level); the indexes
    are computed on first use, i.e. in the collector's worker thread, so a cluster with tens of
    thousands of endpoints never stalls the loop.
    """

    def __init__(self, slices: Mapping[tuple[str, str], _Slice]) -> None:
        self._slices = dict(slices)
        self._by_addr: dict[str, EndpointName] | None = None
        self._by_port: dict[tuple[str, str, str], set[str]] = {}

    def _index(self) -> dict[str, EndpointName]:
        if self._by_addr is None:
            by_addr: dict[str, EndpointName] = {}
            for sl in self._slices.values():
                for pname, port in sl.ports:
                    addrs = self._by_port.setdefault((sl.namespace, sl.service, pname), set())
                    for ip, _ready, pod in sl.endpoints:
                        addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                        addrs.add(addr)
                        by_addr.setdefault(addr, EndpointName(sl.namespace, sl.service, pname, pod))
            self._by_addr = by_addr
        return self._by_addr

    def endpoint(self, address: str) -> EndpointName | None:
        """Who serves ``ip:port``, if a slice lists it."""
        return self._index().get(address)

    def service_endpoints(self, namespace: str, service: str, port: str) -> set[str] | None:
        """All addresses the slices list for a Service port (any readiness); None if no slice
        names that Service port."""
        self._index()
        return self._by_port.get((namespace, service, port))


def reduce_slice(obj: Mapping[str, Any]) -> _Slice | None:
    """Keep what lbskew reads from an EndpointSlice; None when it belongs to no Service."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    ns = meta.get("namespace")
    if not isinstance(service, str) or not isinstance(ns, str):
        return None
    ports: list[tuple[str, int]] = []
    for p in obj.get("ports") or []:
        if isinstance(p, dict) and isinstance(p.get("port"), int):
            ports.append((str(p.get("name") or ""), int(p["port"])))
    eps: list[tuple[str, bool, str]] = []
    for ep in obj.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        cond = ep.get("conditions") or {}
        ready = cond.get("ready") is not False  # unset means ready (API convention)
        ref = ep.get("targetRef") or {}
        pod = str(ref.get("name") or "") if ref.get("kind", "Pod") == "Pod" else ""
        for addr in ep.get("addresses") or []:
            if isinstance(addr, str):
                eps.append((addr, ready, pod))
    return _Slice(ns, service, tuple(ports), tuple(eps))


class EndpointSliceCache:
    """Watched EndpointSlices of all namespaces; ``synced`` after the first successful LIST."""

    def __init__(self, api: Any, max_slices: int = DEFAULT_MAX_SLICES) -> None:
        self._api = api
        self._max = max_slices
        self._slices: dict[tuple[str, str], _Slice] = {}
        self._view: NameView | None = None
        self._task: asyncio.Task[None] | None = None
        self.synced = False
        self.dropped = 0  # slices not cached because the cache was full
        self.relists = 0
        self.errors = 0

    @property
    def size(self) -> int:
        return len(self._slices)

    async def start(self) -> None:
        """Start the list+watch loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="endpointslice-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def view(self) -> NameView | None:
        """The current index (rebuilt only after a change); None until the first LIST."""
        if not self.synced:
            return None
        if self._view is None:
            self._view = NameView(self._slices)
        return self._view

    def _put(self, key: tuple[str, str], obj: Mapping[str, Any] | None) -> None:
        self._view = None
        reduced = reduce_slice(obj) if obj is not None else None
        if reduced is None:
            self._slices.pop(key, None)
        elif key in self._slices or len(self._slices) < self._max:
            self._slices[key] = reduced
        else:
            self.dropped += 1

    async def _relist(self) -> str:
        api = client.DiscoveryV1Api(self._api)
        body = await call_json(
            api.list_endpoint_slice_for_all_namespaces(
                _preload_content=False, _request_timeout=30
            )
        )
        self.relists += 1
        self._slices.clear()
        self._view = None
        for obj in body.get("items") or []:
            if isinstance(obj, dict):
                self._put(_key(obj), obj)
        self.synced = True
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def run(self) -> None:
        """List, then watch; relist on 410 Gone or a broken stream. Never raises on API trouble
        (names fall back to the rule comments while ``synced`` is False)."""
        delay = 0.2
        rv = ""
        while True:
            try:
                if not rv:
                    rv = await self._relist()
                async for event in self._watch(rv):
                    etype = event.get("type")
                    obj = event.get("object") or {}
                    if etype == "ERROR":
                        rv = ""  # 410 Gone (history compacted): start over from a LIST
                        break
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = str(new_rv)
                    if etype == "BOOKMARK":
                        continue
                    self._put(_key(obj), None if etype == "DELETED" else obj)
                delay = 0.2
            except KubeError as exc:
                self.errors += 1
                rv = ""
                log.warning("endpointslice_watch_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def _watch(self, rv: str) -> AsyncIterator[dict[str, Any]]:
        api = client.DiscoveryV1Api(self._api)
        try:
            # With _preload_content=False the call returns the raw aiohttp response.
            resp: Any = await api.list_endpoint_slice_for_all_namespaces(
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
                _preload_content=False,
                _request_timeout=WATCH_TIMEOUT_SECONDS + 30,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeUnavailable(f"watch endpointslices: {type(exc).__name__}: {exc}") from exc
        try:
            if resp.status != 200:
                raw = await resp.read()
                raise KubeError(int(resp.status), raw[:200].decode("utf-8", "replace"))
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                if len(buf) > MAX_WATCH_LINE and b"\n" not in buf:
                    raise KubeUnavailable("watch endpointslices: event too large")
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        raise KubeUnavailable(f"watch endpointslices: garbled: {exc}") from exc
                    if isinstance(event, dict):
                        yield event
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeUnavailable(f"watch endpointslices: {type(exc).__name__}: {exc}") from exc
        finally:
            resp.release()


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")
