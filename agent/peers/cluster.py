"""The leader's view of the cluster: watched Nodes, node Leases and agent heartbeats -> NodeViews.

Called by agent.peers.stage while this agent leads: ``start()`` launches three informers
(agent.kube.informer: watches only, no per-node polling), ``views()`` turns their caches plus the
probe table into the pure detector's input. All times handed to the detector are on the leader's
monotonic clock, taken when a change *reached* the leader (a node's renewTime is converted once, on
first sight only), so clock skew between nodes never makes a healthy node look stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from agent.kube.informer import Informer
from agent.peers.detector import NodeView, Probe
from agent.peers.heartbeat import HEARTBEAT_LABEL, LEASE_PREFIX, PROBES_ANNOTATION, URL_ANNOTATION
from agent.peers.heartbeat import decode_probes as decode

ZONE_LABEL = "topology.kubernetes.io/zone"
NODE_LEASE_NAMESPACE = "kube-node-lease"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The few fields of a Node the leader reads."""

    zone: str
    ready: bool | None
    ready_since: str
    unschedulable: bool
    taints: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    addresses: tuple[str, ...]

    def annotation(self, key: str) -> str | None:
        for k, v in self.annotations:
            if k == key:
                return v
        return None


def reduce_node(obj: dict[str, Any]) -> NodeInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready: bool | None = None
    since = ""
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = {"True": True, "False": False}.get(str(cond.get("status")))
            since = str(cond.get("lastTransitionTime") or "")
    addresses = tuple(
        str(a.get("address")) for a in status.get("addresses") or []
        if isinstance(a, dict) and a.get("address")
    )
    ann = meta.get("annotations") or {}
    return NodeInfo(
        zone=str((meta.get("labels") or {}).get(ZONE_LABEL, "")),
        ready=ready,
        ready_since=since,
        unschedulable=bool(spec.get("unschedulable")),
        taints=tuple(
            (str(t.get("key")), str(t.get("effect")))
            for t in spec.get("taints") or [] if isinstance(t, dict)
        ),
        # Only our own annotations: they are all the leader reads, and they keep the cache small.
        annotations=tuple(sorted(
            (str(k), str(v)) for k, v in ann.items() if str(k).startswith("nodemedic.io/")
        )),
        addresses=addresses,
    )


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def reduce_node_lease(obj: dict[str, Any]) -> str:
    return str((obj.get("spec") or {}).get("renewTime") or "")


def reduce_heartbeat(obj: dict[str, Any]) -> tuple[str, str, dict[str, tuple[bool, int]]]:
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    holder = (obj.get("spec") or {}).get("holderIdentity") or str(meta["name"])[len(LEASE_PREFIX):]
    return str(holder), str(ann.get(URL_ANNOTATION) or ""), decode(ann.get(PROBES_ANNOTATION))


class ClusterView:
    """Informers plus the probe table; not thread-safe, lives on the event loop."""

    def __init__(
        self, api: Any, lease_namespace: str, *, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self._notify = on_change or (lambda: None)
        self.renewed: dict[str, float] = {}  # node -> leader-clock time of last lease change
        self.probes: dict[str, dict[str, Probe]] = {}  # target -> prober -> latest
        self._seqs: dict[tuple[str, str], int] = {}
        self.urls: dict[str, str] = {}  # node -> its agent URL
        self.nodes: Informer[NodeInfo] = Informer(
            api, "nodes", reduce_node, on_change=self._node_changed
        )
        self.leases: Informer[str] = Informer(
            api, "leases", reduce_node_lease, namespace=NODE_LEASE_NAMESPACE,
            on_change=self._lease_changed,
        )
        self.heartbeats: Informer[tuple[str, str, dict[str, tuple[bool, int]]]] = Informer(
            api, "leases", reduce_heartbeat, namespace=lease_namespace,
            label_selector=f"{HEARTBEAT_LABEL}=true", on_change=self._heartbeat_changed,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for inf in (self.nodes, self.leases, self.heartbeats):
            self._tasks.append(asyncio.create_task(inf.run(), name="nodemedic:informer"))

    @property
    def synced(self) -> bool:
        """Every informer has listed once; the leader keeps judging from its caches while a
        watch reconnects (their ``synced`` events drop at once, this does not)."""
        return all(i.ever_synced for i in (self.nodes, self.leases, self.heartbeats))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    # ---- change handlers -----------------------------------------------------------------
    def _node_changed(self, name: str, old: NodeInfo | None, new: NodeInfo | None) -> None:
        if new is None:
            self.renewed.pop(name, None)
            self.probes.pop(name, None)
        self._notify()

    def _lease_changed(self, name: str, old: str | None, new: str | None) -> None:
        if new is None:
            self.renewed.pop(name, None)
        elif old is None:
            # First sight (e.g. a new leader's initial LIST): trust the renewTime's age once.
            renewed = parse_time(new)
            age = max(0.0, self.wall() - renewed) if renewed is not None else 0.0
            self.renewed[name] = self.clock() - age
        elif new != old:
            self.renewed[name] = self.clock()
        self._notify()

    def _heartbeat_changed(
        self, name: str, old: tuple[str, str, dict[str, tuple[bool, int]]] | None,
        new: tuple[str, str, dict[str, tuple[bool, int]]] | None,
    ) -> None:
        if new is None:
            if old is not None:  # the agent's heartbeat is gone: forget what it told us
                self.urls.pop(old[0], None)
                for key in [k for k in self._seqs if k[0] == old[0]]:
                    del self._seqs[key]
            return
        prober, url, results = new
        if url:
            self.urls[prober] = url
        for target, (ok, seq) in results.items():
            if self._seqs.get((prober, target)) == seq:
                continue
            self._seqs[(prober, target)] = seq
            self.record(prober, target, ok)
        self._notify()

    def record(self, prober: str, target: str, ok: bool) -> None:
        """A probe result reached the leader now (its own probes are recorded directly)."""
        now = self.clock()
        prev = self.probes.get(target, {}).get(prober)
        last_ok = now if ok else (prev.last_ok if prev else None)
        self.probes.setdefault(target, {})[prober] = Probe(prober, ok, now, last_ok)

    def forget_probes(self, target: str) -> None:
        self.probes.pop(target, None)

    def agent_url(self, node: str) -> str:
        """The node's agent URL, only if it points at one of the Node's own addresses: a
        heartbeat Lease cannot make the leader probe (and judge by) some other machine."""
        url = self.urls.get(node, "")
        info = self.nodes.items.get(node)
        if not url or info is None:
            return ""
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in info.addresses:
            return ""
        return f"{parsed.scheme}://{parsed.netloc}"

    # ---- the detector's input ------------------------------------------------------------
    def views(self) -> list[NodeView]:
        out = []
        for name, info in self.nodes.items.items():
            out.append(NodeView(
                name=name, zone=info.zone, lease_renewed=self.renewed.get(name), ready=info.ready,
                probes=tuple(self.probes.get(name, {}).values()),
            ))
        return out

    def mono_from_wall(self, ts: float) -> float:
        """Convert a wall-clock timestamp read from an object into the leader's clock."""
        return self.clock() - max(0.0, self.wall() - ts)
