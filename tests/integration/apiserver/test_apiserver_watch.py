"""Watch semantics: resume from resourceVersion, selectors, bookmarks, timeouts and 410 Gone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch

from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends


async def _collect(stream: Any, n: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    async for ev in stream:
        obj = ev["raw_object"]
        out.append((ev["type"], obj["metadata"].get("name", "")))
        if len(out) >= n:
            break
    return out


async def test_watch_stream_lists_then_follows(core: Any, kube: Backend) -> None:
    """A watch without resourceVersion sends ADDED for existing objects, then the changes."""
    # A ConfigMap: on a real cluster controllers also write to a new Node.
    await kube.seed({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "n1", "labels": {"w": "f"}}})
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default", label_selector="w=f",
                      timeout_seconds=5)
    first = await _collect(stream, 1)
    await core.patch_namespaced_config_map("n1", "default", {"data": {"a": "1"}})
    await core.delete_namespaced_config_map("n1", "default")
    rest = await _collect(stream, 2)
    await w.close()
    assert first + rest == [("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1")]


async def test_watch_resumes_from_resource_version(core: Any, kube: Backend) -> None:
    """A watch from a list's resourceVersion replays exactly the changes made after it."""
    # ConfigMaps: on a real cluster controllers also write to new Nodes.
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n1", "labels": {"w": "r"}}}
    await kube.seed(cm)
    rv = (await core.list_namespaced_config_map("default")).metadata.resource_version
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "n2", "labels": {"w": "r"}}})
    await core.patch_namespaced_config_map("n1", "default", {"metadata": {"labels": {"a": "b"}}})
    w = watch.Watch()
    got = await _collect(w.stream(core.list_namespaced_config_map, "default", label_selector="w=r",
                                  resource_version=rv, timeout_seconds=5), 2)
    await w.close()
    assert got == [("ADDED", "n2"), ("MODIFIED", "n1")]


async def test_watch_from_compacted_version_is_410(core: Any, apiserver: ApiServer) -> None:
    """After compaction, a watch from an older resourceVersion gets an ERROR 410 Expired event."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    rv = (await core.list_node()).metadata.resource_version
    await core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})
    apiserver.compact()
    w = watch.Watch()
    with pytest.raises(client.ApiException) as ei:
        await _collect(w.stream(core.list_node, resource_version=rv, timeout_seconds=2), 1)
    await w.close()
    assert ei.value.status == 410
    assert "Expired: too old resource version" in str(ei.value.reason)


async def test_history_window_expires_old_versions(kube_api: Any) -> None:
    """With a bounded history, versions that fell out of the window are 410 Gone."""
    async with ApiServer(history_size=3) as small:
        small.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        start = small.store.resource_version
        for i in range(5):
            small.patch("Node", "", "n1", {"metadata": {"labels": {"i": str(i)}}})
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{small.url}/api/v1/nodes",
                params={"watch": "1", "resourceVersion": str(start), "timeoutSeconds": "1"},
            ) as resp,
        ):
            line = json.loads(await resp.content.readline())
    assert line["type"] == "ERROR" and line["object"]["code"] == 410
    assert line["object"]["reason"] == "Expired"


async def test_watch_selectors_filter_and_track_membership(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """Selector watches see only matches; leaving the selection is DELETED, re-entering ADDED."""
    await kube.seed(make_pod("b", node="n2", labels={"app": "other"}))
    await kube.seed(make_pod("a", node="n1"))
    w = watch.Watch()
    stream = w.stream(
        core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", timeout_seconds=5
    )
    assert await _collect(stream, 1) == [("ADDED", "a")]
    # A live pod's labels can change (its nodeName cannot), so follow membership by label.
    await w.close()
    w2 = watch.Watch()
    stream2 = w2.stream(
        core.list_namespaced_pod, "default", label_selector="app=web", timeout_seconds=5
    )
    assert await _collect(stream2, 1) == [("ADDED", "a")]
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "db"}}})
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "web"}}})
    got = await _collect(stream2, 2)
    await w2.close()
    assert got == [("DELETED", "a"), ("ADDED", "a")]


async def test_watch_timeout_ends_stream(core: Any) -> None:
    """timeoutSeconds ends the watch cleanly (the client iterator stops)."""
    w = watch.Watch()
    events = [ev async for ev in w.stream(core.list_node, timeout_seconds=1)]
    await w.close()
    assert events == []


async def test_bookmarks(apiserver: ApiServer) -> None:
    """allowWatchBookmarks yields BOOKMARK events carrying the current resourceVersion."""
    apiserver.bookmark_interval = 0.1
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    rv = str(apiserver.store.resource_version)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{apiserver.url}/api/v1/nodes",
            params={
                "watch": "true",
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "2",
            },
        ) as resp,
    ):
        line = json.loads(await resp.content.readline())
    assert line["type"] == "BOOKMARK"
    assert line["object"]["kind"] == "Node"
    assert line["object"]["metadata"]["resourceVersion"] == rv


async def test_send_initial_events_ends_with_marked_bookmark(apiserver: ApiServer) -> None:
    """sendInitialEvents streams the current state, then a bookmark marked initial-events-end."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{apiserver.url}/api/v1/nodes",
            params={
                "watch": "true",
                "sendInitialEvents": "true",
                "allowWatchBookmarks": "true",
                "resourceVersionMatch": "NotOlderThan",
                "timeoutSeconds": "1",
            },
        ) as resp,
    ):
        lines = [json.loads(await resp.content.readline()) for _ in range(2)]
    assert lines[0]["type"] == "ADDED"
    assert lines[1]["type"] == "BOOKMARK"
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_drop_watches_cuts_connections(core: Any, apiserver: ApiServer) -> None:
    """drop_watches() cuts open watch connections; a client sees its stream end."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{apiserver.url}/api/v1/nodes", params={"watch": "true", "timeoutSeconds": "30"}
        ) as resp,
    ):
        await asyncio.sleep(0.05)
        assert apiserver.drop_watches() == 1
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            while await resp.content.readline():
                pass


async def test_node_indexed_pod_watch_sees_binding_and_deletion(
    core: Any, apiserver: ApiServer, make_pod: Any
) -> None:
    """A spec.nodeName watch (served by the node index) sees binds and deletes on its node only."""
    w = watch.Watch()
    stream = w.stream(
        core.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", timeout_seconds=5
    )
    collecting = asyncio.create_task(_collect(stream, 2))
    while not apiserver.store.watchers():  # the client connects lazily, on first iteration
        await asyncio.sleep(0.01)
    apiserver.create(make_pod("elsewhere", node="n2"))
    unbound = make_pod("later")
    del unbound["spec"]["nodeName"]
    apiserver.create(unbound)
    pod = apiserver.get("Pod", "default", "later")
    assert pod is not None
    pod["spec"]["nodeName"] = "n1"  # what the scheduler's binding does
    await core.replace_namespaced_pod("later", "default", pod)
    await core.delete_namespaced_pod("later", "default", grace_period_seconds=0)
    got = await collecting
    await w.close()
    assert got == [("ADDED", "later"), ("DELETED", "later")]
    listed = await core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")
    assert listed.items == []


async def test_name_indexed_watch_sees_only_its_object(core: Any, apiserver: ApiServer) -> None:
    """A metadata.name watch gets events for that object and no other."""
    for n in ("n1", "n2"):
        apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
    rv = str(apiserver.store.resource_version)
    w = watch.Watch()
    stream = w.stream(
        core.list_node, field_selector="metadata.name=n2", resource_version=rv, timeout_seconds=5
    )
    await core.patch_node("n1", {"metadata": {"labels": {"a": "1"}}})
    await core.patch_node("n2", {"metadata": {"labels": {"a": "2"}}})
    got = await _collect(stream, 1)
    await w.close()
    assert got == [("MODIFIED", "n2")]


async def test_watch_initial_state_of_a_big_collection(core: Any, kube: Backend) -> None:
    """A watch without resourceVersion streams every existing object (several chunks) once."""
    for i in range(4100):
        await kube.seed(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"c{i:05d}", "namespace": "default"},
            }
        )
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, "default", timeout_seconds=5)
    got = await _collect(stream, 4100)
    await w.close()
    assert [n for _, n in got] == [f"c{i:05d}" for i in range(4100)]
    assert {t for t, _ in got} == {"ADDED"}


async def test_slow_watcher_is_closed_and_counted() -> None:
    """A watcher whose bounded buffer overflows is closed (the client re-lists) and counted."""
    async with (
        ApiServer(watch_buffer=2) as small,
        aiohttp.ClientSession() as http,
        http.get(
            f"{small.url}/api/v1/nodes",
            params={"watch": "true", "resourceVersion": str(small.store.resource_version)},
        ) as resp,
    ):
        for i in range(5):  # one loop iteration: the handler cannot drain in between
            small.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n{i}"}})
        lines = [line async for line in resp.content]
        assert small.store.dropped_watchers == 1
    assert [json.loads(x)["object"]["metadata"]["name"] for x in lines] == ["n0", "n1"]
