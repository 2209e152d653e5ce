"""Object storage, the global resourceVersion counter, watch history and watch fan-out.

Used by nodemedic_sim.apiserver.registry (which applies Kubernetes semantics on top) and by the
watch handler in nodemedic_sim.apiserver.server. Stored objects are plain dicts that are never
mutated after they are stored: every write stores a new dict, so lists, history and watch events
can share references without deep copies. Like etcd + the watch cache, the history is a bounded
window; asking for a resourceVersion older than the window raises 410 Expired.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Any

from nodemedic_sim.apiserver.status import gone

Obj = dict[str, Any]


class WatchEvent:
    """One change: ``type`` is ADDED / MODIFIED / DELETED; ``prev`` is the object before it."""

    __slots__ = ("key", "obj", "prev", "rv", "type")

    def __init__(self, rv: int, type_: str, key: str, obj: Obj, prev: Obj | None) -> None:
        self.rv = rv
        self.type = type_
        self.key = key
        self.obj = obj
        self.prev = prev


class Watcher:
    """One open watch: a bounded buffer of events that match its namespace and selectors."""

    def __init__(
        self,
        key: str,
        namespace: str | None,
        matcher: Callable[[Mapping[str, Any]], bool] | None,
        max_buffer: int,
        index: tuple[str, str] | None = None,
    ) -> None:
        self.key = key
        self.index = index  # (field, value) this watcher is filed under, if any
        self.namespace = namespace
        self.matcher = matcher
        self.max_buffer = max_buffer
        self.buffer: deque[tuple[str, Obj, int]] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False
        self.close_reason = ""

    def _passes(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.matcher is None or self.matcher(obj)

    def offer(self, ev: WatchEvent) -> bool:
        """Queue ``ev`` translated for this watcher's filter; False when the watcher overflowed.

        An object that stops matching the selector is sent as DELETED and one that starts
        matching as ADDED, as the API server's watch cache does.
        """
        if self.closed:
            return True
        now_ok = ev.type != "DELETED" and self._passes(ev.obj)
        was_ok = self._passes(ev.prev) if ev.type != "ADDED" else False
        if ev.type == "DELETED":
            was_ok = self._passes(ev.obj)
        if now_ok and was_ok:
            item = ("MODIFIED", ev.obj, ev.rv)
        elif now_ok:
            item = ("ADDED", ev.obj, ev.rv)
        elif was_ok and ev.type == "DELETED":
            item = ("DELETED", ev.obj, ev.rv)
        elif was_ok and ev.prev is not None:
            # Left the selection: DELETED with the old object stamped with the new version.
            old = {**ev.prev, "metadata": {**ev.prev["metadata"], "resourceVersion": str(ev.rv)}}
            item = ("DELETED", old, ev.rv)
        else:
            return True
        if len(self.buffer) >= self.max_buffer:
            self.close("watcher too slow: buffer full")
            return False
        self.buffer.append(item)
        self.wakeup.set()
        return True

    def close(self, reason: str) -> None:
        """End this watch; the server handler finishes the HTTP stream."""
        self.closed = True
        self.close_reason = reason
        self.wakeup.set()


# Fields indexed for lists and watches, as kube-apiserver's watch cache indexes them: pods by
# spec.nodeName (the kubelet, kubectl drain) and every resource by metadata.name (single-object
# watches such as a node agent's watch on its own Node and Lease).
NODE_FIELD = "spec.nodeName"
NAME_FIELD = "metadata.name"
_NODE_INDEXED = frozenset({"pods"})


def _ident(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _node_of(obj: Obj | None) -> str | None:
    if obj is None:
        return None
    node = (obj.get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) else None


class Store:
    """All objects by storage key and (namespace, name), plus history and watchers."""

    def __init__(self, history_size: int = 50_000, watch_buffer: int = 100_000) -> None:
        self._objects: dict[str, dict[tuple[str, str], Obj]] = defaultdict(dict)
        self._sorted: dict[str, list[tuple[str, str]]] = {}  # cache, dropped on create/delete
        self._by_node: dict[str, dict[str, set[tuple[str, str]]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self._rv = 0
        self._history: deque[WatchEvent] = deque(maxlen=max(1, history_size))
        self._floor = 0  # events with rv <= floor are no longer in history
        self._watchers: dict[str, set[Watcher]] = defaultdict(set)  # not indexed
        self._indexed: dict[str, dict[tuple[str, str], set[Watcher]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self.watch_buffer = watch_buffer
        self.dropped_watchers = 0

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out."""
        return self._rv

    @property
    def oldest_available(self) -> int:
        """resourceVersions strictly below this are compacted (410 Gone for watches)."""
        return self._floor

    def next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def get(self, key: str, namespace: str, name: str) -> Obj | None:
        return self._objects[key].get((namespace, name))

    def _sorted_keys(self, key: str) -> list[tuple[str, str]]:
        keys = self._sorted.get(key)
        if keys is None:
            keys = self._sorted[key] = sorted(self._objects[key])
        return keys

    def items(self, key: str, namespace: str | None = None, node: str | None = None) -> list[Obj]:
        """Objects of ``key`` sorted as etcd keys sort, optionally of one namespace.

        ``node`` (pods only) narrows to pods bound to that node through the spec.nodeName index.
        """
        objs = self._objects[key]
        if node is not None and key in _NODE_INDEXED:
            idents = sorted(
                i for i in self._by_node[key].get(node, ()) if namespace in (None, i[0])
            )
            return [objs[i] for i in idents]
        keys = self._sorted_keys(key)
        if namespace is not None:
            lo = bisect.bisect_left(keys, (namespace, ""))
            hi = bisect.bisect_left(keys, (namespace + "\x00", ""))
            keys = keys[lo:hi]
        return [objs[k] for k in keys]

    def count(self, key: str) -> int:
        return len(self._objects[key])

    def write(self, key: str, type_: str, obj: Obj, prev: Obj | None, rv: int) -> None:
        """Store (or for DELETED remove) ``obj`` at ``rv``, record it, and notify watchers."""
        ident = _ident(obj)
        table = self._objects[key]
        if type_ == "DELETED":
            if table.pop(ident, None) is not None:
                self._sorted.pop(key, None)
        else:
            if ident not in table:
                self._sorted.pop(key, None)
            table[ident] = obj
        if key in _NODE_INDEXED:
            old_node = _node_of(prev)
            new_node = None if type_ == "DELETED" else _node_of(obj)
            if old_node is not None and old_node != new_node:
                self._by_node[key][old_node].discard(ident)
            if new_node is not None:
                self._by_node[key][new_node].add(ident)
        ev = WatchEvent(rv, type_, key, obj, prev)
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].rv
        self._history.append(ev)
        self._fan_out(key, ev)

    def _fan_out(self, key: str, ev: WatchEvent) -> None:
        targets = set(self._watchers[key])
        indexed = self._indexed.get(key)
        if indexed:
            targets |= indexed.get((NAME_FIELD, ev.obj["metadata"]["name"]), set())
            for node in {_node_of(ev.obj), _node_of(ev.prev)}:
                if node is not None:
                    targets |= indexed.get((NODE_FIELD, node), set())
        for w in targets:
            if not w.offer(ev):
                self.remove_watcher(w)
                self.dropped_watchers += 1

    def events_after(self, key: str, rv: int) -> list[WatchEvent]:
        """History events of ``key`` newer than ``rv``; 410 Expired when ``rv`` was compacted."""
        if rv < self._floor:
            raise gone(f"too old resource version: {rv} ({self._floor + 1})")
        return [e for e in self._history if e.rv > rv and e.key == key]

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older versions now give 410 Gone."""
        self._history.clear()
        self._floor = self._rv

    def add_watcher(self, w: Watcher) -> None:
        """Register ``w``; watchers with an indexable selector only see their objects' events."""
        if w.index is not None:
            self._indexed[w.key][w.index].add(w)
        else:
            self._watchers[w.key].add(w)

    def remove_watcher(self, w: Watcher) -> None:
        if w.index is not None:
            group = self._indexed[w.key].get(w.index)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._indexed[w.key][w.index]
        else:
            self._watchers[w.key].discard(w)

    def watchers(self) -> list[Watcher]:
        out = [w for ws in self._watchers.values() for w in ws]
        out += [w for idx in self._indexed.values() for ws in idx.values() for w in ws]
        return out

    def close_watchers(self, reason: str) -> int:
        """End every open watch (fault injection, shutdown); returns how many were closed."""
        ws = self.watchers()
        for w in ws:
            w.close(reason)
        self._watchers.clear()
        self._indexed.clear()
        return len(ws)
