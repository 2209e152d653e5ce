"""agent.kube.informer's LIST+WATCH loop against the in-memory API server, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from agent.kube.informer import Informer
from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends

T = TypeVar("T")


def _node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


async def _until(cond: Callable[[], Any], what: str) -> None:
    """Wait for the watch to deliver (bounded: a broken loop fails instead of hanging)."""
    for _ in range(250):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@asynccontextmanager
async def _running(inf: Informer[T]) -> AsyncIterator[Informer[T]]:
    inf.start()
    try:
        yield inf
    finally:
        await inf.close()


async def test_lists_in_pages_then_follows_changes(apiserver: ApiServer, kube_api: Any) -> None:
    """A paged LIST fills the cache; adds, changes and deletes arrive through the watch."""
    for i in range(5):
        apiserver.create(_node(f"n{i}", zone="a"))
    seen: list[tuple[str, str | None, str | None]] = []
    inf: Informer[str] = Informer(
        kube_api, "nodes", lambda o: o["metadata"]["labels"]["zone"], page_size=2,
        on_change=lambda k, old, new: seen.append((k, old, new)),
    )
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert inf.items == {f"n{i}": "a" for i in range(5)}
        assert apiserver.requests.count(verb="list", resource="nodes") == 3  # 2 + 2 + 1
        seen.clear()
        apiserver.create(_node("n5", zone="b"))
        apiserver.patch("Node", "", "n0", {"metadata": {"labels": {"zone": "c"}}})
        apiserver.delete("nodes", "", "n1")
        await _until(lambda: len(seen) == 3, "three changes")
        assert seen == [("n5", None, "b"), ("n0", "a", "c"), ("n1", "a", None)]
        assert inf.events == 3 and inf.relists == 1


async def test_relists_after_410_gone(apiserver: ApiServer, kube_api: Any) -> None:
    """After history is compacted and watches cut, the informer relists and catches up,
    reporting what vanished meanwhile as deleted."""
    apiserver.create(_node("a"))
    apiserver.create(_node("gone"))
    deleted: list[str] = []
    inf: Informer[str] = Informer(
        kube_api, "nodes", _name, backoff_initial=0.05,
        on_change=lambda k, old, new: deleted.append(k) if new is None else None,
    )
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert set(inf.items) == {"a", "gone"}
        apiserver.create(_node("b"))
        apiserver.delete("nodes", "", "gone")
        apiserver.compact()
        apiserver.drop_watches()
        apiserver.create(_node("c"))
        await _until(lambda: set(inf.items) == {"a", "b", "c"}, "relist after 410")
        assert inf.gone >= 1 and inf.relists >= 2
        assert deleted == ["gone"]
        apiserver.delete("nodes", "", "a")
        await _until(lambda: "a" not in inf.items, "delete after relist")
        assert set(inf.items) == {"b", "c"}


async def test_http_410_on_watch_relists_without_counting_an_error(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """A watch request answered 410 Gone is a relist, not a failure: no error, no backoff."""
    apiserver.create(_node("a"))
    apiserver.faults.fail(1, 410, verb="watch", resource="nodes")
    inf: Informer[str] = Informer(kube_api, "nodes", _name)
    async with _running(inf):
        await _until(lambda: inf.relists == 2, "second LIST")
        assert (inf.gone, inf.errors) == (1, 0)
        apiserver.create(_node("b"))
        await _until(lambda: "b" in inf.items, "watch after relist")


async def test_broken_connection_unsyncs_at_once_and_resyncs(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """With the API gone the cache is unsynced before the first backoff wait (but keeps its
    items); when the API returns it relists and shows what changed while away."""
    apiserver.create(_node("a", zone="a"))
    synced_when_backing_off: list[bool] = []

    async def sleep(delay: float) -> None:
        synced_when_backing_off.append(inf.synced.is_set())
        await asyncio.sleep(0.05)

    inf: Informer[str] = Informer(
        kube_api, "nodes", lambda o: o["metadata"]["labels"]["zone"], sleep=sleep
    )
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        await apiserver.stop()
        await _until(lambda: synced_when_backing_off, "a backoff")
        assert synced_when_backing_off[0] is False
        assert inf.errors >= 1 and inf.last_error
        assert inf.ever_synced and inf.items == {"a": "a"}
        apiserver.patch("Node", "", "a", {"metadata": {"labels": {"zone": "b"}}})
        await apiserver.start()
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert inf.items == {"a": "b"} and inf.last_error == ""


async def test_backoff_doubles_with_jitter_up_to_the_cap(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Failing LISTs are retried after waits that double (within +-50% jitter) up to the cap."""
    apiserver.faults.fail(5, 500, verb="list", resource="nodes")
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await asyncio.sleep(0)

    inf: Informer[str] = Informer(
        kube_api, "nodes", _name, backoff_initial=1.0, backoff_max=4.0, sleep=sleep
    )
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
    assert inf.errors == 5 and len(waits) == 5
    for wait, base in zip(waits, (1, 2, 4, 4, 4), strict=True):
        assert base * 0.5 <= wait <= base * 1.5, waits


async def test_bookmarks_carry_the_version_past_compaction(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """Bookmarks move the watch's resourceVersion on while other resources change, so a
    re-watch after compaction needs no new LIST."""
    apiserver.bookmark_interval = 0.05
    apiserver.create(_node("a"))
    inf: Informer[str] = Informer(kube_api, "nodes", _name, watch_timeout=1)
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        listed_at = inf.resource_version
        apiserver.create({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "x", "namespace": "default"}})
        latest = str(apiserver.store.resource_version)
        assert latest != listed_at
        await _until(lambda: inf.resource_version == latest, "bookmark")
        apiserver.compact()
        restarts = inf.watch_restarts
        await _until(lambda: inf.watch_restarts > restarts, "server-side watch timeout")
        apiserver.create(_node("b"))
        await _until(lambda: "b" in inf.items, "event on the new watch")
        assert (inf.relists, inf.gone, inf.events) == (1, 0, 1)


async def test_bounded_cache_counts_what_it_drops(apiserver: ApiServer, kube_api: Any) -> None:
    """Beyond max_items objects are not stored but counted; freed room is used again."""
    for i in range(5):
        apiserver.create(_node(f"n{i}"))
    changes: list[str] = []
    inf: Informer[str] = Informer(
        kube_api, "nodes", _name, max_items=3, on_change=lambda k, o, n: changes.append(k)
    )
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert (len(inf.items), inf.dropped) == (3, 2)
        assert sorted(changes) == sorted(inf.items)  # nobody is told about dropped objects
        apiserver.create(_node("n5"))
        await _until(lambda: inf.dropped == 3, "dropped watch event")
        apiserver.delete("nodes", "", next(iter(inf.items)))
        await _until(lambda: len(inf.items) == 2, "delete")
        apiserver.create(_node("n6"))
        await _until(lambda: "n6" in inf.items, "room again")
        assert (len(inf.items), inf.dropped) == (3, 3)


async def test_skips_garbage_and_unwanted_objects(kube: Backend, kube_api: Any) -> None:
    """An object the reducer cannot read is skipped and counted; one it declines (None) is
    simply not stored."""
    for name in ("ok", "bad", "unwanted"):
        await kube.seed(_node(name))

    def reduce(obj: dict[str, Any]) -> str | None:
        name = _name(obj)
        if name == "bad":
            raise ValueError("unreadable")
        return None if name == "unwanted" else "fine"

    inf: Informer[str] = Informer(kube_api, "nodes", reduce)
    async with _running(inf):
        await asyncio.wait_for(inf.synced.wait(), 5)
        assert inf.items == {"ok": "fine"}
        assert inf.skipped == 1


async def test_keys_are_names_in_one_namespace_and_qualified_across_all(
    kube: Backend, kube_api: Any
) -> None:
    """One namespace's objects are keyed by name; an all-namespaces cache by namespace/name;
    label and field selectors narrow what is cached."""
    for ns in ("ns1", "ns2"):
        for name, hb in (("x", "true"), ("y", "false")):
            await kube.seed({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": ns, "labels": {"hb": hb}}, "spec": {},
            })
    one: Informer[str] = Informer(kube_api, "leases", _name, namespace="ns1",
                                  label_selector="hb=true")
    every: Informer[str] = Informer(kube_api, "leases", _name, field_selector="metadata.name=y")
    async with _running(one), _running(every):
        await asyncio.wait_for(one.synced.wait(), 5)
        await asyncio.wait_for(every.synced.wait(), 5)
        assert set(one.items) == {"x"}
        assert set(every.items) == {"ns1/y", "ns2/y"}
