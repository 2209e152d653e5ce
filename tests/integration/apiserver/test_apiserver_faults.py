"""Fault injection (failures, latency, restart on the same port) and request accounting."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client

from nodemedic_sim.apiserver import ApiServer


async def test_next_n_requests_fail_with_code(core: Any, apiserver: ApiServer) -> None:
    """fail(2, 503, verb="get") fails exactly the next two gets, with a Status body."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    apiserver.faults.fail(2, 503, verb="get", resource="nodes")
    for _ in range(2):
        with pytest.raises(client.ApiException) as ei:
            await core.read_node("n1")
        assert ei.value.status == 503
        assert json.loads(ei.value.body or b"")["reason"] == "ServiceUnavailable"
    await core.list_node()  # other verbs unaffected
    assert (await core.read_node("n1")).metadata.name == "n1"


async def test_latency_delays_requests(core: Any, apiserver: ApiServer) -> None:
    """With latency armed, a client with a shorter timeout times out."""
    apiserver.faults.latency = 0.5
    with pytest.raises(asyncio.TimeoutError):
        await core.list_node(_request_timeout=0.1)
    apiserver.faults.clear()
    await core.list_node(_request_timeout=2)


async def test_restart_on_same_port_keeps_state(core: Any, apiserver: ApiServer) -> None:
    """stop() refuses connections; start() comes back on the same port with the same objects."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    port = apiserver.port
    await apiserver.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await core.read_node("n1", _request_timeout=1)
    await apiserver.start()
    assert apiserver.port == port
    assert (await core.read_node("n1")).metadata.name == "n1"


async def test_requests_counted_by_verb_resource_and_client(
    kube_api: Any, apiserver: ApiServer
) -> None:
    """Request accounting splits by Kubernetes verb, resource (with subresource) and user agent."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    core = client.CoreV1Api(kube_api)
    await core.read_node("n1")
    await core.list_node()
    await core.patch_node_status("n1", {"status": {"phase": "Running"}})
    coord = client.CoordinationV1Api(kube_api)
    await coord.list_namespaced_lease("kube-node-lease")
    log = apiserver.requests
    assert log.count("get", "nodes") == 1
    assert log.count("list", "nodes") == 1
    assert log.count("patch", "nodes/status") == 1
    assert log.count("list", "leases.coordination.k8s.io") == 1
    assert log.count(client="nodemedic-tests") == 4
    assert log.by_verb_resource()["get nodes"] == 1


async def test_helpers_seed_and_read(apiserver: ApiServer) -> None:
    """The helper API creates (status kept), reads, patches and deletes objects directly."""
    apiserver.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"},
        }
    )
    pod = apiserver.get("Pod", "team", "p")
    assert pod is not None and pod["status"]["phase"] == "Running"
    assert apiserver.get("Namespace", "", "team") is not None
    apiserver.patch("Pod", "team", "p", {"metadata": {"labels": {"a": "b"}}})
    assert [p["metadata"]["labels"] for p in apiserver.list("pods", "team")] == [{"a": "b"}]
    apiserver.delete("Pod", "team", "p")
    assert apiserver.get("Pod", "team", "p") is None  # unscheduled: deleted at once



async def test_a_lease_fault_is_armed_with_the_grouped_resource_name(
    coordination: Any, apiserver: ApiServer
) -> None:
    """fail(resource="leases.coordination.k8s.io"), the spelling the docstring gives, makes the
    next Lease create fail; the one after goes through."""
    apiserver.faults.fail(1, 500, verb="create", resource="leases.coordination.k8s.io")
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l1"}, "spec": {"holderIdentity": "a"}}
    with pytest.raises(client.ApiException) as ei:
        await coordination.create_namespaced_lease("default", body)
    assert ei.value.status == 500
    created = await coordination.create_namespaced_lease("default", body)
    assert created.metadata.name == "l1"
