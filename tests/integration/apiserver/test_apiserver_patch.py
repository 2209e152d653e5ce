"""PATCH semantics: strategic merge keys, JSON merge patch, JSON patch, preconditions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends

FIXTURE_NODE = (
    Path(__file__).resolve().parents[2]
    / "fixtures"
    / "k8s"
    / "node_gke_v1.11_with_npd_and_networkunavailable.yaml"
)


def _seed_gke_node(apiserver: ApiServer) -> dict[str, Any]:
    """The real GKE node capture (13 conditions, including node-problem-detector ones)."""
    node = yaml.safe_load(FIXTURE_NODE.read_text())
    node["metadata"].pop("resourceVersion", None)
    return apiserver.create(node)


async def test_strategic_merge_node_condition_by_type(core: Any, apiserver: ApiServer) -> None:
    """A status patch of one condition replaces that condition by type and keeps all others."""
    node = _seed_gke_node(apiserver)
    name = node["metadata"]["name"]
    before = {c["type"]: c for c in node["status"]["conditions"]}
    await core.patch_node_status(
        name,
        {
            "status": {
                "conditions": [{"type": "KernelDeadlock", "status": "True", "reason": "DockerHung"}]
            }
        },
    )
    after = {c["type"]: c for c in apiserver.get("Node", "", name)["status"]["conditions"]}  # type: ignore[index]
    assert set(after) == set(before)
    assert after["KernelDeadlock"]["status"] == "True"
    assert after["KernelDeadlock"]["reason"] == "DockerHung"
    # fields not in the patch are kept (strategic merge merges the matched element)
    assert (
        after["KernelDeadlock"]["lastTransitionTime"]
        == before["KernelDeadlock"]["lastTransitionTime"]
    )
    assert after["Ready"] == before["Ready"]


async def test_strategic_merge_replaces_taints_list(core: Any, kube: Backend) -> None:
    """spec.taints has no merge key: a patch replaces the whole list."""
    await kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
        }
    )
    out = await core.patch_node(
        "n1", {"spec": {"taints": [{"key": "nodemedic.io/unhealthy", "effect": "NoExecute"}]}}
    )
    assert [(t.key, t.effect) for t in out.spec.taints] == [("nodemedic.io/unhealthy", "NoExecute")]


async def test_invalid_taint_effect_is_422(core: Any, kube: Backend) -> None:
    """A taint with an unknown effect is rejected with 422 naming the field."""
    await kube.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    with pytest.raises(client.ApiException) as ei:
        await core.patch_node("n1", {"spec": {"taints": [{"key": "a", "effect": "Bogus"}]}})
    assert ei.value.status == 422
    assert (
        # metadata., not spec.: kube-apiserver's ValidateNode reports taints under that path.
        json.loads(ei.value.body or b"")["details"]["causes"][0]["field"]
        == "metadata.taints[0].effect"
    )


async def test_annotations_merge_and_null_deletes(core: Any, kube: Backend) -> None:
    """Annotations merge key by key; null deletes a key (strategic and JSON merge alike)."""
    await kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1", "annotations": {"keep": "1", "drop": "2"}},
        }
    )
    await core.patch_node(
        "n1", {"metadata": {"annotations": {"nodemedic.io/state": "x", "drop": None}}}
    )
    # Only ours: a real cluster's TTL controller adds node.alpha.kubernetes.io/ttl meanwhile.
    got = (await kube.get("Node", "", "n1"))["metadata"]["annotations"]  # type: ignore[index]
    assert {k: v for k, v in got.items() if "kubernetes.io" not in k} == {
        "keep": "1",
        "nodemedic.io/state": "x",
    }
    await core.patch_node(
        "n1", {"metadata": {"labels": {"l": "v"}}}, _content_type="application/merge-patch+json"
    )
    n = await kube.get("Node", "", "n1")
    assert n is not None and n["metadata"]["labels"] == {"l": "v"}
    assert n["metadata"]["annotations"]["keep"] == "1"


async def test_pod_condition_merge_and_container_merge(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """Pod conditions merge by type; containers merge by name."""
    await kube.seed(make_pod("p"))
    await core.patch_namespaced_pod_status(
        "p", "default", {"status": {"conditions": [{"type": "DisruptionTarget", "status": "True"}]}}
    )
    await core.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}
    )
    p = await kube.get("Pod", "default", "p")
    assert p is not None
    assert {c["type"] for c in p["status"]["conditions"]} == {"Ready", "DisruptionTarget"}
    # name and image only: a real server also fills defaults (imagePullPolicy, ...) and the
    # ServiceAccount admission plugin's token volume mount, which the in-memory one does not.
    assert [(c["name"], c["image"]) for c in p["spec"]["containers"]] == [("c", "nginx:2")]


async def test_strategic_delete_directive(core: Any, kube: Backend) -> None:
    """$patch: delete removes one merge-keyed element."""
    await kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {
                "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]
            },
        }
    )
    await core.patch_node_status(
        "n1", {"status": {"conditions": [{"type": "A", "$patch": "delete"}]}}
    )
    n = await kube.get("Node", "", "n1")
    assert n is not None and [c["type"] for c in n["status"]["conditions"]] == ["B"]


async def test_json_merge_patch_replaces_lists(core: Any, kube: Backend) -> None:
    """JSON merge patch replaces lists wholesale (no merge keys)."""
    await kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {
                "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]
            },
        }
    )
    await core.patch_node_status(
        "n1",
        {"status": {"conditions": [{"type": "C", "status": "False"}]}},
        _content_type="application/merge-patch+json",
    )
    n = await kube.get("Node", "", "n1")
    assert n is not None and [c["type"] for c in n["status"]["conditions"]] == ["C"]


async def test_json_patch_with_test_op(core: Any, kube: Backend) -> None:
    """RFC 6902 patches apply; a failing test op is 422 and changes nothing."""
    await kube.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    await core.patch_node("n1", [{"op": "add", "path": "/spec", "value": {"unschedulable": True}}])
    with pytest.raises(client.ApiException) as ei:
        await core.patch_node(
            "n1",
            [
                {"op": "test", "path": "/spec/unschedulable", "value": False},
                {"op": "replace", "path": "/spec/unschedulable", "value": False},
            ],
        )
    assert ei.value.status == 422
    n = await kube.get("Node", "", "n1")
    assert n is not None and n["spec"]["unschedulable"] is True


async def test_patch_with_stale_resource_version_is_409(core: Any, kube: Backend) -> None:
    """A resourceVersion inside a patch is a precondition: stale means 409 Conflict."""
    n = await kube.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    old_rv = n["metadata"]["resourceVersion"]
    await core.patch_node("n1", {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(client.ApiException) as ei:
        await core.patch_node(
            "n1", {"metadata": {"resourceVersion": old_rv, "annotations": {"x": "y"}}}
        )
    assert ei.value.status == 409
    assert json.loads(ei.value.body or b"")["reason"] == "Conflict"


async def test_server_side_apply_is_415(kube_api: Any, apiserver: ApiServer) -> None:
    """Patch types the in-memory server does not implement are refused with 415, not silently
    misapplied (memory only: a real server implements server-side apply)."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    core: Any = client.CoreV1Api(kube_api)  # Any: the stubs omit _content_type
    with pytest.raises(client.ApiException) as ei:
        await core.patch_node(
            "n1", {"spec": {}}, _content_type="application/apply-patch+yaml", field_manager="t"
        )
    assert ei.value.status == 415


async def test_patch_missing_object_is_404(core: Any) -> None:
    """Patching an object that does not exist is 404."""
    with pytest.raises(client.ApiException) as ei:
        await core.patch_node("ghost", {"spec": {"unschedulable": True}})
    assert ei.value.status == 404


async def test_merge_patch_does_not_alter_history(core: Any, apiserver: ApiServer) -> None:
    """Objects already handed out (watch history) keep their resourceVersion after a patch."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    before = apiserver.store.get("nodes", "", "n1")
    assert before is not None
    rv = before["metadata"]["resourceVersion"]
    await core.patch_node(
        "n1", {"spec": {"unschedulable": True}}, _content_type="application/merge-patch+json"
    )
    assert before["metadata"]["resourceVersion"] == rv
    assert "unschedulable" not in before.get("spec", {})
