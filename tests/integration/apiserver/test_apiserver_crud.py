"""CRUD semantics of the in-memory API server through the real kubernetes_asyncio client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client

from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends


def body(exc: client.ApiException) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(exc.body or b"")
    return out


async def test_create_sets_managed_metadata(core: Any) -> None:
    """create fills uid, creationTimestamp and a numeric resourceVersion; generation only where
    kube-apiserver keeps one (pods, PDBs, workloads), not on nodes."""
    node = await core.create_node({"metadata": {"name": "n1"}})
    assert node.metadata.uid and len(node.metadata.uid) == 36
    assert node.metadata.creation_timestamp is not None
    assert node.metadata.generation is None
    assert int(node.metadata.resource_version) > 0
    pod = await core.create_namespaced_pod("default", {
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert pod.metadata.generation == 1


async def test_resource_version_is_global_and_increasing(core: Any, coordination: Any) -> None:
    """Every write gets a larger resourceVersion, across resource types."""
    a = await core.create_node({"metadata": {"name": "a"}})
    b = await coordination.create_namespaced_lease("default", {"metadata": {"name": "l"}})
    c = await core.create_node({"metadata": {"name": "c"}})
    rvs = [int(x.metadata.resource_version) for x in (a, b, c)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


async def test_create_existing_is_409_already_exists(core: Any) -> None:
    """A second create of the same name is 409 AlreadyExists with the Kubernetes Status body."""
    await core.create_node({"metadata": {"name": "n1"}})
    with pytest.raises(client.ApiException) as ei:
        await core.create_node({"metadata": {"name": "n1"}})
    assert ei.value.status == 409
    assert body(ei.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'nodes "n1" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "n1", "kind": "nodes"},
        "code": 409,
    }


async def test_get_missing_is_404_with_group_in_details(coordination: Any) -> None:
    """404 bodies name the resource with its group, as kube-apiserver does."""
    with pytest.raises(client.ApiException) as ei:
        await coordination.read_namespaced_lease("nope", "kube-node-lease")
    assert ei.value.status == 404
    assert body(ei.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'leases.coordination.k8s.io "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "coordination.k8s.io", "kind": "leases"},
        "code": 404,
    }


async def test_generate_name(core: Any) -> None:
    """generateName yields a unique name with a random suffix."""
    a = await core.create_namespaced_config_map("default", {"metadata": {"generateName": "cm-"}})
    b = await core.create_namespaced_config_map("default", {"metadata": {"generateName": "cm-"}})
    assert a.metadata.name.startswith("cm-") and len(a.metadata.name) > 3
    assert a.metadata.name != b.metadata.name


async def test_invalid_objects_are_422(core: Any) -> None:
    """Missing name, bad names, bad labels and podless containers are 422 Invalid."""
    makers: list[Callable[[], Awaitable[Any]]] = [
        lambda: core.create_node({"metadata": {}}),
        lambda: core.create_node({"metadata": {"name": "Bad_Name"}}),
        lambda: core.create_node({"metadata": {"name": "n", "labels": {"a": "b c"}}}),
        lambda: core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {}}),
    ]
    for make in makers:
        with pytest.raises(client.ApiException) as ei:
            await make()
        assert ei.value.status == 422
        assert body(ei.value)["reason"] == "Invalid"
        assert body(ei.value)["details"]["causes"]


async def test_create_in_missing_namespace_is_404(core: Any) -> None:
    """Creating in a namespace that does not exist is 404 for the namespace."""
    with pytest.raises(client.ApiException) as ei:
        await core.create_namespaced_config_map("ghost", {"metadata": {"name": "x"}})
    assert ei.value.status == 404
    assert body(ei.value)["message"] == 'namespaces "ghost" not found'


async def test_replace_with_stale_resource_version_is_409(coordination: Any) -> None:
    """PUT with an old resourceVersion is 409 Conflict; with the current one it succeeds."""
    lease = await coordination.create_namespaced_lease(
        "kube-node-lease", {"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}
    )
    stale = lease.metadata.resource_version
    lease.spec.holder_identity = "a"
    fresh = await coordination.replace_namespaced_lease("n1", "kube-node-lease", lease)
    assert fresh.metadata.resource_version != stale
    lease.spec.holder_identity = "b"
    lease.metadata.resource_version = stale
    with pytest.raises(client.ApiException) as ei:
        await coordination.replace_namespaced_lease("n1", "kube-node-lease", lease)
    assert ei.value.status == 409
    assert body(ei.value)["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "n1": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    got = await coordination.read_namespaced_lease("n1", "kube-node-lease")
    assert got.spec.holder_identity == "a"


async def test_replace_without_resource_version_is_unconditional(core: Any) -> None:
    """PUT without resourceVersion overwrites, as for pods, nodes and leases in Kubernetes."""
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c"}, "data": {"a": "1"}}
    )
    out = await core.replace_namespaced_config_map(
        "c", "default", {"metadata": {"name": "c"}, "data": {"a": "2"}}
    )
    assert out.data == {"a": "2"}


async def test_generation_bumps_on_spec_changes_only(policy: Any) -> None:
    """Label changes keep a PDB's generation; a spec change bumps it."""
    await policy.create_namespaced_pod_disruption_budget("default", {
        "metadata": {"name": "b"}, "spec": {"minAvailable": 1, "selector": {}}})
    b = await policy.patch_namespaced_pod_disruption_budget(
        "b", "default", {"metadata": {"labels": {"x": "y"}}})
    assert b.metadata.generation == 1
    b = await policy.patch_namespaced_pod_disruption_budget(
        "b", "default", {"spec": {"minAvailable": 2}})
    assert b.metadata.generation == 2


async def test_noop_update_keeps_resource_version(core: Any) -> None:
    """A patch that changes nothing does not bump resourceVersion (no watch event)."""
    # A ConfigMap: on a real cluster controllers write to a new Node (ttl annotation, taints).
    c = await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c", "labels": {"a": "b"}}})
    again = await core.patch_namespaced_config_map("c", "default",
                                                   {"metadata": {"labels": {"a": "b"}}})
    assert again.metadata.resource_version == c.metadata.resource_version


async def test_status_subresource_is_separate(core: Any, kube: Backend) -> None:
    """Writes to the main resource ignore status; writes to /status change only status."""
    await kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    await core.patch_node(
        "n1",
        {
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        },
    )
    n = await kube.get("Node", "", "n1")
    assert n is not None
    assert n["status"]["conditions"][0]["status"] == "True"
    await core.patch_node_status(
        "n1", {"spec": {"unschedulable": False}, "status": {"phase": "Running"}}
    )
    n = await kube.get("Node", "", "n1")
    assert n is not None
    assert n["spec"]["unschedulable"] is True and n["status"]["phase"] == "Running"


async def test_pod_create_resets_status_to_pending(core: Any) -> None:
    """Pods created through the API start Pending whatever status the client sent."""
    p = await core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"},
        },
    )
    assert p.status.phase == "Pending"


async def test_graceful_pod_delete_then_removal(
    core: Any, apiserver: ApiServer, make_pod: Any
) -> None:
    """Deleting a scheduled pod sets deletionTimestamp; it disappears when the grace ends."""
    apiserver.create(make_pod("p", grace=1))
    out = await core.delete_namespaced_pod("p", "default")
    assert out.metadata.deletion_timestamp is not None
    assert out.metadata.deletion_grace_period_seconds == 1
    assert (await core.read_namespaced_pod("p", "default")).metadata.deletion_timestamp
    apiserver.registry.clock = lambda: 10**10  # the grace period has passed
    apiserver.sweep()
    with pytest.raises(client.ApiException) as ei:
        await core.read_namespaced_pod("p", "default")
    assert ei.value.status == 404


async def test_grace_zero_deletes_at_once(core: Any, kube: Backend, make_pod: Any) -> None:
    """gracePeriodSeconds=0 removes the pod immediately."""
    await kube.seed(make_pod("p"))
    await core.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    assert await kube.get("Pod", "default", "p") is None


async def test_dead_kubelet_keeps_pods_terminating(
    core: Any, apiserver: ApiServer, make_pod: Any
) -> None:
    """With the node's kubelet down, a gracefully deleted pod stays Terminating."""
    apiserver.create(make_pod("p", node="n9", grace=1))
    apiserver.set_kubelet_alive("n9", False)
    await core.delete_namespaced_pod("p", "default")
    apiserver.registry.clock = lambda: 10**10
    apiserver.sweep()
    assert apiserver.get("Pod", "default", "p") is not None
    apiserver.set_kubelet_alive("n9", True)
    apiserver.sweep()
    assert apiserver.get("Pod", "default", "p") is None


async def test_delete_preconditions(core: Any) -> None:
    """A delete whose uid precondition does not match is 409 and deletes nothing."""
    await core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    with pytest.raises(client.ApiException) as ei:
        await core.delete_namespaced_config_map(
            "c",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="x")),
        )
    assert ei.value.status == 409
    assert body(ei.value)["message"].startswith(
        'Operation cannot be fulfilled on ConfigMap "c": the UID in the precondition (x) does '
        "not match the UID in record (")
    assert body(ei.value)["details"] == {"name": "c", "kind": "ConfigMap"}
    await core.read_namespaced_config_map("c", "default")


async def test_finalizers_hold_deletion(core: Any) -> None:
    """An object with finalizers is only marked deleted until the finalizers are removed."""
    await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c", "finalizers": ["x.io/hold"]}}
    )
    await core.delete_namespaced_config_map("c", "default")
    held = await core.read_namespaced_config_map("c", "default")
    assert held.metadata.deletion_timestamp is not None
    await core.patch_namespaced_config_map(
        "c", "default", [{"op": "remove", "path": "/metadata/finalizers"}]
    )
    with pytest.raises(client.ApiException) as ei:
        await core.read_namespaced_config_map("c", "default")
    assert ei.value.status == 404


async def test_list_limit_and_continue(core: Any) -> None:
    """limit/continue pages through a list in name order with remainingItemCount."""
    # Leases: a real cluster puts a ConfigMap (kube-root-ca.crt) in every namespace itself.
    # No selector either: with one, kube-apiserver leaves remainingItemCount out.
    coordination = client.CoordinationV1Api(core.api_client)
    for i in range(5):
        await coordination.create_namespaced_lease("default", {"metadata": {"name": f"c{i}"}})
    page = await coordination.list_namespaced_lease("default", limit=2)
    names = [c.metadata.name for c in page.items]
    assert page.metadata.remaining_item_count == 3
    labelled = await coordination.list_namespaced_lease("default", limit=2, label_selector="!x")
    assert labelled.metadata._continue and labelled.metadata.remaining_item_count is None
    while page.metadata._continue:
        page = await coordination.list_namespaced_lease(
            "default", limit=2, _continue=page.metadata._continue
        )
        names += [c.metadata.name for c in page.items]
    assert names == [f"c{i}" for i in range(5)]


async def test_list_items_have_no_kind(kube_api: Any, apiserver: ApiServer) -> None:
    """List items omit kind/apiVersion and the list carries the current resourceVersion."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    core = client.CoreV1Api(kube_api)
    resp: Any = await core.list_node(_preload_content=False)
    data = json.loads(await resp.read())
    assert data["kind"] == "NodeList" and "kind" not in data["items"][0]
    assert data["metadata"]["resourceVersion"] == str(apiserver.store.resource_version)


async def test_namespace_delete_removes_contents(core: Any) -> None:
    """Deleting a namespace deletes the objects in it (on a real server, asynchronously: the
    namespace controller empties it while it is Terminating)."""
    await core.create_namespace({"metadata": {"name": "team"}})
    await core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
    await core.delete_namespace("team")
    for _ in range(300):
        left = (await core.list_namespaced_config_map("team")).items
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == []


async def test_events_in_both_api_groups(core: Any, kube_api: Any) -> None:
    """core/v1 and events.k8s.io/v1 serve the same events with renamed fields."""
    await core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e1"},
            "message": "cordoned",
            "reason": "Cordon",
            "involvedObject": {"kind": "Node", "name": "n1"},
            "source": {"component": "nodemedic"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            # Required with eventTime (a new-style Event); a 422 without them, as tested below.
            "reportingComponent": "nodemedic",
            "reportingInstance": "n1",
            "action": "Cordon",
        },
    )
    ev = await client.EventsV1Api(kube_api).read_namespaced_event("e1", "default")
    assert ev.note == "cordoned" and ev.regarding.name == "n1"
    assert ev.deprecated_source.component == "nodemedic"
    events_api: Any = client.EventsV1Api(kube_api)  # Any: the stubs want a model, dicts work
    await events_api.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e2"},
            "note": "drained",
            "reason": "Drain",
            "action": "Drain",
            "reportingController": "nodemedic",
            "reportingInstance": "n1",
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "type": "Normal",
            "regarding": {"kind": "Node", "name": "n1"},
        },
    )
    e2 = await core.read_namespaced_event("e2", "default")
    assert e2.message == "drained" and e2.reporting_component == "nodemedic"
    sel = await core.list_namespaced_event("default", field_selector="reason=Drain")
    assert [e.metadata.name for e in sel.items] == ["e2"]
    with pytest.raises(client.ApiException) as ei:
        await core.create_namespaced_event("default", {
            "metadata": {"name": "e3"}, "message": "m", "reason": "R",
            "involvedObject": {"kind": "Node", "name": "n1"},
            "eventTime": "2026-01-01T00:00:00.000000Z"})
    assert ei.value.status == 422
    fields = {c["field"] for c in body(ei.value)["details"]["causes"]}
    assert {"reportingComponent", "reportingInstance", "action"} <= fields


async def test_discovery_and_version(kube_api: Any) -> None:
    """/version and /api/v1 discovery advertise the eviction subresource as kubectl needs."""
    version = await client.VersionApi(kube_api).get_code()
    assert version.major == "1"
    resources = await client.CoreV1Api(kube_api).get_api_resources()
    ev = next(r for r in resources.resources if r.name == "pods/eviction")
    assert (ev.group, ev.version, ev.kind) == ("policy", "v1", "Eviction")
    groups = await client.ApisApi(kube_api).get_api_versions()
    assert "coordination.k8s.io" in {g.name for g in groups.groups}


async def test_big_list_is_complete_and_paged_correctly(core: Any, kube: Backend) -> None:
    """Lists larger than one streamed chunk decode whole, in order, with and without limit."""
    for i in range(4500):
        await kube.seed(
            {
                "kind": "Lease",  # not ConfigMaps: see test_list_limit_and_continue
                "apiVersion": "coordination.k8s.io/v1",
                "metadata": {"name": f"c{i:05d}", "namespace": "default"},
            }
        )
    coordination = client.CoordinationV1Api(core.api_client)
    full = await coordination.list_namespaced_lease("default")
    assert [c.metadata.name for c in full.items] == [f"c{i:05d}" for i in range(4500)]
    page = await coordination.list_namespaced_lease("default", limit=4000)
    assert len(page.items) == 4000 and page.metadata.remaining_item_count == 500


async def test_health_endpoints(apiserver: ApiServer) -> None:
    """/healthz, /livez and /readyz answer ok, as probes of a real API server expect."""
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/livez", "/readyz"):
            async with http.get(apiserver.url + path) as resp:
                assert (resp.status, await resp.text()) == (200, "ok")


async def test_endpointslices_by_service_label(kube_api: Any) -> None:
    """EndpointSlices are served under discovery.k8s.io/v1 and selectable by service name."""
    disc: Any = client.DiscoveryV1Api(kube_api)  # Any: the stubs want models, dicts work
    for svc, ip in (("web", "10.0.0.1"), ("db", "10.0.0.2")):
        await disc.create_namespaced_endpoint_slice(
            "default",
            {
                "metadata": {"name": f"{svc}-abc", "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip]}],
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        )
    out = await disc.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web"
    )
    assert [(s.metadata.name, s.endpoints[0].addresses) for s in out.items] == [
        ("web-abc", ["10.0.0.1"])
    ]


async def test_exact_list_of_an_old_version_is_410(apiserver: ApiServer) -> None:
    """resourceVersionMatch=Exact for a version that is not current is 410 Expired."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            apiserver.url + "/api/v1/nodes",
            params={"resourceVersion": "1", "resourceVersionMatch": "Exact"},
        ) as resp,
    ):
        assert resp.status == 410
        assert (await resp.json())["reason"] == "Expired"


async def test_continue_after_compaction_is_410(core: Any, apiserver: ApiServer) -> None:
    """A continue token from before a compaction is 410 Expired, as etcd compaction makes it."""
    for i in range(3):
        await core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
    page = await core.list_namespaced_config_map("default", limit=1)
    await core.create_namespaced_config_map("default", {"metadata": {"name": "later"}})
    apiserver.compact()
    with pytest.raises(client.ApiException) as ei:
        await core.list_namespaced_config_map("default", limit=1, _continue=page.metadata._continue)
    assert ei.value.status == 410
    assert "continue parameter is too old" in body(ei.value)["message"]
