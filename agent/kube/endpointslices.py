"""A bounded list+watch cache of discovery.k8s.io/v1 EndpointSlices for the lbskew collector.

Started by agent.collectors.lbskew when an API client is shared (``ctx.api``). One
agent.kube.informer watches all namespaces' EndpointSlices (LIST, then WATCH; relist on 410 Gone
or a broken stream, with backoff on errors). Each slice is reduced to what
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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.kube.informer import Informer

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_MAX_SLICES = 20_000
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

    def __init__(self, slices: Mapping[str, _Slice]) -> None:
        self._slices = dict(slices)  # key: namespace/name
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
    """Watched EndpointSlices of all namespaces (agent.kube.informer, bounded to ``max_slices``);
    ``synced`` from the first successful LIST on, so a broken watch keeps serving the last names
    while it reconnects."""

    def __init__(self, api: Any, max_slices: int = DEFAULT_MAX_SLICES) -> None:
        self._view: NameView | None = None
        self.informer: Informer[_Slice] = Informer(
            api, "endpointslices", reduce_slice, on_change=self._changed, max_items=max_slices,
            watch_timeout=WATCH_TIMEOUT_SECONDS,
        )

    @property
    def synced(self) -> bool:
        return self.informer.ever_synced

    @property
    def size(self) -> int:
        return len(self.informer.items)

    @property
    def dropped(self) -> int:
        """Slices not cached because the cache was full."""
        return self.informer.dropped

    @property
    def relists(self) -> int:
        return self.informer.relists

    @property
    def errors(self) -> int:
        return self.informer.errors

    async def start(self) -> None:
        """Start the list+watch loop in the background."""
        self.informer.start()

    async def close(self) -> None:
        await self.informer.close()

    def view(self) -> NameView | None:
        """The current index (rebuilt only after a change); None until the first LIST."""
        if not self.synced:
            return None
        if self._view is None:
            self._view = NameView(self.informer.items)
        return self._view

    def _changed(self, key: str, old: _Slice | None, new: _Slice | None) -> None:
        self._view = None


