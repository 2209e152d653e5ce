"""The ``node`` collector against the in-memory API server, through the agent's own kube client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from agent.collectors.base import CannotSee, CollectorContext
from agent.collectors.node import NodeCollector
from agent.kube.client import create_api_client
from agent.settings import settings_for_tests
from agent.structs.metrics import Family
from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
NODE = "datagen-1-35"  # the node in the real minikube capture


def _seed(apiserver: ApiServer) -> None:
    node = yaml.safe_load((FIXTURES / "node_list_minikube_v1.35.yaml").read_text())["items"][0]
    node.update(apiVersion="v1", kind="Node")
    apiserver.create(node)
    lease = yaml.safe_load(
        (FIXTURES / "lease_kube-system_apiserver_identity_k8s_docs.yaml").read_text()
    )
    # Shaped like a kubelet's node Lease (see SOURCES-k8s.md), renewed 12 s ago.
    lease["metadata"] = {"name": NODE, "namespace": "kube-node-lease"}
    renew = time.time() - 12
    lease["spec"] = {
        "holderIdentity": NODE,
        "leaseDurationSeconds": 40,
        "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(renew)),
    }
    apiserver.create(lease)


async def _until(pred: Callable[[], Any], what: str) -> None:
    """Wait for a watch to deliver (bounded so a broken watch fails instead of hanging)."""
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_asyncio.fixture
async def collector(apiserver: ApiServer, tmp_path: Path) -> AsyncIterator[NodeCollector]:
    """A started node collector for NODE, using a kubeconfig written by the test server."""
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    settings = settings_for_tests(node_name=NODE, kubeconfig=kubeconfig)
    api = await create_api_client(settings)
    c = NodeCollector(CollectorContext(settings, api=api))
    c.backoff_initial, c.backoff_max = 0.05, 0.2
    try:
        yield c
    finally:
        await c.close()
        if api is not None:
            await api.close()


def _by_name(fams: list[Family]) -> dict[str, Family]:
    return {f.name: f for f in fams}


async def _collect_ok(c: NodeCollector) -> dict[str, Family] | None:
    try:
        return _by_name(await c.collect())
    except RuntimeError:
        return None


async def test_exports_conditions_taints_cordon_and_lease_age(
    apiserver: ApiServer, collector: NodeCollector
) -> None:
    """Conditions from the real capture, cordon, taints and the Lease age are exported."""
    _seed(apiserver)
    await collector.start()
    await _until(
        lambda: (
            collector.node
            and collector.node.state.synced
            and collector.lease
            and collector.lease.state.synced
        ),
        "sync",
    )
    fams = _by_name(await collector.collect())
    assert fams["nodemedic_api_up"].get() == 1
    cond = fams["nodemedic_node_condition"]
    assert cond.get(condition="Ready", status="true") == 1
    assert cond.get(condition="Ready", status="false") == 0
    assert cond.get(condition="MemoryPressure", status="false") == 1
    assert fams["nodemedic_node_unschedulable"].get() == 0
    assert fams["nodemedic_node_taint"].samples == []
    age = fams["nodemedic_node_lease_age_seconds"].get()
    assert age is not None and 11 <= age < 60


async def test_follows_changes_through_the_watch(
    apiserver: ApiServer, collector: NodeCollector
) -> None:
    """A cordon, a taint and a NotReady condition show up without any polling request."""
    _seed(apiserver)
    await collector.start()
    # both watches listed (the Lease one too), so any later LIST would be polling
    await _until(
        lambda: (
            collector.node
            and collector.node.state.synced
            and collector.lease
            and collector.lease.state.synced
        ),
        "sync",
    )
    gets_before = apiserver.requests.count(verb="list")
    apiserver.patch(
        "Node",
        "",
        NODE,
        {
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}],
            }
        },
    )
    apiserver.patch(
        "Node",
        "",
        NODE,
        {
            "status": {
                "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
            }
        },
        content_type="application/strategic-merge-patch+json",
        subresource="status",
    )

    async def changed() -> bool:
        fams = await _collect_ok(collector)
        if fams is None:
            return False
        return fams["nodemedic_node_condition"].get(condition="Ready", status="false") == 1

    for _ in range(500):
        if await changed():
            break
        await asyncio.sleep(0.02)
    fams = _by_name(await collector.collect())
    assert fams["nodemedic_node_unschedulable"].get() == 1
    assert (
        fams["nodemedic_node_taint"].get(
            key="node.kubernetes.io/unschedulable", effect="NoSchedule"
        )
        == 1
    )
    assert fams["nodemedic_node_condition"].get(condition="Ready", status="false") == 1
    assert apiserver.requests.count(verb="list") == gets_before  # no re-list, no polling


async def test_api_down_fails_then_recovers(apiserver: ApiServer, collector: NodeCollector) -> None:
    """While the API server is down collect() raises; after it returns the watch resyncs."""
    _seed(apiserver)
    await collector.start()
    await _until(lambda: collector.node and collector.node.state.synced, "sync")
    await apiserver.stop()
    await _until(lambda: collector.node and not collector.node.state.synced, "unsync")
    with pytest.raises(RuntimeError, match="not synced"):
        await collector.collect()
    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": True}})  # changed while away
    await apiserver.start()
    await _until(lambda: collector.node and collector.node.state.synced, "resync")
    fams = _by_name(await collector.collect())
    assert fams["nodemedic_node_unschedulable"].get() == 1
    assert fams["nodemedic_node_watch_errors_total"].get(object="node")


async def test_relists_after_410_gone(apiserver: ApiServer, collector: NodeCollector) -> None:
    """When its resourceVersion is compacted away, the collector re-lists instead of failing."""
    _seed(apiserver)
    await collector.start()
    await _until(lambda: collector.node and collector.node.state.synced, "sync")
    assert collector.node is not None
    lists = collector.node.state.lists
    # Deterministic: the open watch ends normally (as timeoutSeconds ends it) while the
    # collector's resourceVersion is older than the compacted history, so the re-watch gets the
    # 410. (Patching, compacting and cutting the watch abruptly raced the watch's own start: an
    # open watch cut abruptly counts as a failure and re-lists without any 410.)
    await _until(lambda: apiserver.store.watchers(), "the watch is open")
    apiserver.patch("Node", "", NODE, {"metadata": {"labels": {"x": "1"}}})
    await _until(lambda: collector.node is not None and collector.node.state.obj is not None
                 and collector.node.state.obj["metadata"]["labels"].get("x") == "1", "patch seen")
    apiserver.compact()
    collector.node.informer.resource_version = "1"  # no await since: no event can move it
    apiserver.store.close_watchers("timeout")
    await _until(
        lambda: (
            collector.node is not None
            and collector.node.state.lists > lists
            and collector.node.state.synced
        ),
        "relist after 410",
    )
    node = collector.node
    assert node.state.gone >= 1
    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": True}})
    await _until(
        lambda: (node.state.obj or {}).get("spec", {}).get("unschedulable"),
        "event after relist",
    )


async def test_missing_node_raises(kube: Backend, collector: NodeCollector) -> None:
    """A --node-name the API does not know makes collect() fail with a clear message."""
    await collector.start()
    await _until(lambda: collector.node and collector.node.state.synced, "sync")
    with pytest.raises(RuntimeError, match="not found in the API"):
        await collector.collect()


async def test_without_api_client_raises() -> None:
    """Without a cluster configured, collect() fails and says how to configure one."""
    c = NodeCollector(CollectorContext(settings_for_tests(node_name="x"), api=None))
    await c.start()
    with pytest.raises(RuntimeError, match="--kubeconfig"):
        await c.collect()


@pytest.mark.parametrize(("code", "reason"), [(401, "unauthorized"), (403, "forbidden")])
async def test_refused_node_watch_is_cannot_see(
    apiserver: ApiServer, collector: NodeCollector, code: int, reason: str
) -> None:
    """The API refuses our credentials (401) or RBAC (403) for the Node: the collector fails
    with that reason (our configuration, not the node), naming --kubeconfig and RBAC."""
    _seed(apiserver)
    apiserver.faults.fail(1000, code, verb="list", resource="nodes")
    await collector.start()
    await _until(lambda: collector.node and collector.node.state.errors, "a refused list")
    with pytest.raises(CannotSee) as exc:
        await collector.collect()
    assert exc.value.reason == reason
    assert f"HTTP {code}" in str(exc.value) and "--kubeconfig" in str(exc.value)
    apiserver.faults.clear()


async def test_refused_lease_watch_makes_the_lease_age_unreadable(
    apiserver: ApiServer, collector: NodeCollector
) -> None:
    """RBAC without leases (403): the node's series are exported, the Lease age is missing
    data (unreadable: forbidden), not silently absent."""
    _seed(apiserver)
    apiserver.faults.fail(1000, 403, verb="list", resource="leases.coordination.k8s.io")
    await collector.start()
    await _until(lambda: collector.node and collector.node.state.synced, "node sync")
    await _until(lambda: collector.lease and collector.lease.state.errors, "a refused list")
    fams = _by_name(await collector.collect())
    assert "nodemedic_node_lease_age_seconds" not in fams
    assert collector.unreadable() == {"nodemedic_node_lease_age_seconds": "forbidden"}
    apiserver.faults.clear()


def test_watch_errors_are_classified() -> None:
    """The informer's error texts: 401/403 and a certificate that does not verify are our
    access; a refused connection or a 500 is not."""
    from agent.collectors.node import cannot_see

    assert cannot_see("HTTP 401: Unauthorized") == "unauthorized"
    assert cannot_see("HTTP 403: nodes is forbidden") == "forbidden"
    assert cannot_see(
        "API unreachable: ClientConnectorCertificateError: Cannot connect to host 10.0.0.1:6443 "
        "ssl:True [SSLCertVerificationError: (1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: unable to get local issuer certificate (_ssl.c:1006)')]") == "tls"
    assert cannot_see("API unreachable: ClientConnectorError: Connection refused") is None
    assert cannot_see("HTTP 500: etcdserver: request timed out") is None


# ---- an admin undoing nodemedic's cordon or taint is noticed at once (issue 12 item 3) -------

CLAIM = "nodemedic.io/cordoned-by"
TAINT_KEY = "nodemedic.io/disk-pressure"


def _node(apiserver: ApiServer) -> dict[str, Any]:
    n = apiserver.get("Node", "", NODE)
    assert n is not None
    return n


def _released_events(apiserver: ApiServer) -> list[str]:
    return [e["message"] for e in apiserver.list("Event")
            if e["reason"] == "NodemedicClaimReleased"]


async def test_an_admin_uncordon_releases_our_claim_at_once(
    apiserver: ApiServer, collector: NodeCollector
) -> None:
    _seed(apiserver)
    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": True}, "metadata": {
        "annotations": {CLAIM: '{"rules":["kubelet-down"],"at":"2026-01-01T00:00:00Z"}'}}},
        manager="nodemedic")
    await collector.start()
    await _until(lambda: collector.node is not None and collector.node.state.synced, "sync")
    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": None}},
                    "application/strategic-merge-patch+json", manager="kubectl-uncordon")
    await _until(lambda: CLAIM not in _node(apiserver)["metadata"]["annotations"], "release")
    ann = _node(apiserver)["metadata"]["annotations"]
    assert "kubelet-down" in ann["nodemedic.io/uncordoned-by-admin"]
    await _until(lambda: _released_events(apiserver), "the Event")
    [message] = _released_events(apiserver)
    assert message.startswith("an admin uncordoned the node after nodemedic cordoned it")


async def test_a_claim_on_a_node_uncordoned_while_we_were_down_is_released_at_start(
    apiserver: ApiServer, collector: NodeCollector
) -> None:
    _seed(apiserver)
    apiserver.patch("Node", "", NODE, {"metadata": {"annotations": {
        CLAIM: '{"rules":["kubelet-down"],"at":"2026-01-01T00:00:00Z"}'}}})
    await collector.start()
    await _until(lambda: CLAIM not in _node(apiserver)["metadata"]["annotations"], "release")


async def test_a_taint_removed_and_readded_by_an_admin_is_no_longer_ours(
    apiserver: ApiServer, collector: NodeCollector
) -> None:
    """Kubernetes records no owner per taint, so only watching tells an admin's identical
    re-added taint from ours: once seen removed, our claim is gone and the undo leaves it."""
    from agent.actions.base import ActionContext
    from agent.actions.untaint import Untaint
    from agent.structs.remediation import ActionRequest, ActionSpec, Decision, Target

    _seed(apiserver)
    ours = {"key": TAINT_KEY, "effect": "NoSchedule"}
    taints = (_node(apiserver)["spec"].get("taints") or [])
    apiserver.patch("Node", "", NODE, {"spec": {"taints": [*taints, ours]}, "metadata": {
        "annotations": {"nodemedic.io/tainted-by": json.dumps(
            {f"{TAINT_KEY}:NoSchedule": {"rules": ["disk"], "value": ""}})}}},
        manager="nodemedic")
    await collector.start()
    await _until(lambda: collector.node is not None and collector.node.state.synced, "sync")
    apiserver.patch("Node", "", NODE, {"spec": {"taints": taints}}, manager="kubectl-taint")
    await _until(lambda: '"rules":[]' in _node(apiserver)["metadata"]["annotations"].get(
        "nodemedic.io/tainted-by", ""), "release")
    apiserver.patch("Node", "", NODE, {"spec": {"taints": [*taints, ours]}},
                    manager="kubectl-taint")
    req = ActionRequest("disk", ActionSpec.of("untaint", {"key": TAINT_KEY}), Target("node", NODE),
                        undo=True)
    ctx = ActionContext(api=collector.ctx.api, node_name=NODE,
                        settings=collector.ctx.settings)
    result = await Untaint().execute(Decision(req, "allowed", "ok"), ctx)
    assert result.kind == "noop"
    assert ours in _node(apiserver)["spec"]["taints"]
