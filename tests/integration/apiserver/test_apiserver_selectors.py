"""Label (equality and set-based) and field selectors on list, as kube-apiserver evaluates them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio import client

from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends


@pytest.fixture
def pods(apiserver: ApiServer, make_pod: Any) -> None:
    """Three pods: web on n1 (Running), db on n1 (Pending), web/canary on n2."""
    apiserver.create(make_pod("a", node="n1", labels={"app": "web", "tier": "fe"}))
    p = make_pod("b", node="n1", labels={"app": "db"})
    p["status"]["phase"] = "Pending"
    apiserver.create(p)
    apiserver.create(make_pod("c", node="n2", labels={"app": "web", "track": "canary"}))


async def _names(core: Any, **kw: Any) -> list[str]:
    out = await core.list_pod_for_all_namespaces(**kw)
    return [p.metadata.name for p in out.items]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["a", "c"]),
        ("app==web", ["a", "c"]),
        ("app!=web", ["b"]),
        ("app in (db, web)", ["a", "b", "c"]),
        ("app notin (web)", ["b"]),
        ("track", ["c"]),
        ("!track", ["a", "b"]),
        ("app=web,tier=fe", ["a"]),
        ("app=web,!track", ["a"]),
    ],
)
async def test_label_selectors(core: Any, pods: None, selector: str, expected: list[str]) -> None:
    """Equality and set-based label selector forms select the same pods Kubernetes would."""
    assert await _names(core, label_selector=selector) == expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("spec.nodeName=n1", ["a", "b"]),
        ("spec.nodeName!=n1", ["c"]),
        ("status.phase=Running", ["a", "c"]),
        ("spec.nodeName=n1,status.phase!=Pending", ["a"]),
        ("metadata.name=b", ["b"]),
        ("metadata.namespace=default", ["a", "b", "c"]),
    ],
)
async def test_pod_field_selectors(
    core: Any, pods: None, selector: str, expected: list[str]
) -> None:
    """The pod field selectors kubectl drain and the kubelet use filter correctly."""
    assert await _names(core, field_selector=selector) == expected


async def test_node_unschedulable_field_selector(core: Any, kube: Backend) -> None:
    """spec.unschedulable=false matches nodes that never set the field."""
    await kube.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    await kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n2"},
            "spec": {"unschedulable": True},
        }
    )
    on = await core.list_node(field_selector="spec.unschedulable=true")
    off = await core.list_node(field_selector="spec.unschedulable=false")
    assert [n.metadata.name for n in on.items] == ["n2"]
    assert [n.metadata.name for n in off.items] == ["n1"]


async def test_unsupported_field_selector_is_400(core: Any) -> None:
    """A field Kubernetes does not index for the resource is a 400 naming the field."""
    with pytest.raises(client.ApiException) as ei:
        await core.list_node(field_selector="spec.podCIDR=10.0.0.0/24")
    assert ei.value.status == 400
    assert json.loads(ei.value.body or b"")["message"] == "field label not supported: spec.podCIDR"


async def test_bad_label_selector_is_400(core: Any) -> None:
    """An unparsable label selector is a 400 BadRequest."""
    with pytest.raises(client.ApiException) as ei:
        await core.list_node(label_selector="app in web")
    assert ei.value.status == 400
