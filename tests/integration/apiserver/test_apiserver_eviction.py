"""The Eviction API: PodDisruptionBudget arithmetic, the real 429 body, 404 and graceful delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from nodemedic_sim.apiserver import ApiServer
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "k8s"


def _pdb(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec},
    }


async def _evict_with(core: Any, name: str, delete_options: dict[str, Any]) -> Any:
    return await core.create_namespaced_pod_eviction(
        name, "default", {"metadata": {"name": name}, "deleteOptions": delete_options}
    )


async def _evict(core: Any, name: str) -> Any:
    return await core.create_namespaced_pod_eviction(
        name,
        "default",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": "default"},
        },
    )


async def test_429_body_is_byte_identical_to_a_real_capture(
    kube_api: Any, kube: Backend, make_pod: Any
) -> None:
    """An eviction that would violate a PDB returns exactly the Status body EKS returned."""
    await kube.seed(make_pod("devops-tools-mongodb-secondary-0", labels={"app": "web"}))
    await kube.seed(_pdb("devops-tools-mongodb-secondary", minAvailable=1))
    core = client.CoreV1Api(kube_api)
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "devops-tools-mongodb-secondary-0")
    assert ei.value.status == 429
    # The capture was cut from a CRLF log line (it ends in a stray CR); on the wire Go's
    # encoder ends the body with a newline.
    capture = (FIXTURES / "eviction_429_pdb_violation.json").read_bytes().rstrip(b"\r\n")
    body = ei.value.body  # str at run time, though the client's stubs say bytes
    assert (body.encode() if isinstance(body, str) else body) == capture + b"\n"


async def test_eviction_allowed_then_budget_exhausted(
    core: Any, policy: Any, apiserver: ApiServer, make_pod: Any
) -> None:
    """With maxUnavailable=1 and 3 ready pods, one eviction succeeds and the next is 429.
    Memory only: with maxUnavailable or a percentage, kube-controller-manager's disruption
    controller needs each pod's controller (its scale) and gives bare pods no disruptions;
    the real-server behaviour is test_bare_pods_block_percentage_budgets.
    """
    for n in ("a", "b", "c"):
        apiserver.create(make_pod(n))
    apiserver.create(_pdb("web", maxUnavailable=1))
    await _evict(core, "a")
    evicted = apiserver.get("Pod", "default", "a")
    assert evicted is not None and evicted["metadata"]["deletionTimestamp"]
    target = [c for c in evicted["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert target and target[0]["reason"] == "EvictionByEvictionAPI"
    pdb = await policy.read_namespaced_pod_disruption_budget("web", "default")
    assert pdb.status.disruptions_allowed == 0
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "b")
    assert ei.value.status == 429
    cause = json.loads(ei.value.body or b"")["details"]["causes"][0]["message"]
    assert cause == "The disruption budget web needs 2 healthy pods and has 2 currently"


async def test_percentage_min_available_rounds_up(
    core: Any, apiserver: ApiServer, make_pod: Any
) -> None:
    """minAvailable=50% of 3 pods needs 2 healthy (rounded up): one eviction, then 429.
    Memory only: with maxUnavailable or a percentage, kube-controller-manager's disruption
    controller needs each pod's controller (its scale) and gives bare pods no disruptions;
    the real-server behaviour is test_bare_pods_block_percentage_budgets.
    """
    for n in ("a", "b", "c"):
        apiserver.create(make_pod(n))
    apiserver.create(_pdb("web", minAvailable="50%"))
    await _evict(core, "a")
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "b")
    assert ei.value.status == 429


async def test_unready_pods_do_not_count_as_healthy(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """Pods without Ready=True are not healthy, so they cannot cover a disruption."""
    await kube.seed(make_pod("a"))
    await kube.seed(make_pod("b", ready=False))
    await kube.seed(_pdb("web", minAvailable=1))
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "a")
    assert ei.value.status == 429


async def test_replacement_becoming_ready_unblocks(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """Once a replacement pod turns Ready, the blocked eviction is allowed."""
    await kube.seed(make_pod("a"))
    await kube.seed(make_pod("b", node="n2", ready=False))
    await kube.seed(_pdb("web", minAvailable=1))
    with pytest.raises(client.ApiException):
        await _evict(core, "a")
    await core.patch_namespaced_pod_status(
        "b", "default", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    await _evict(core, "a")


async def test_evicting_missing_pod_is_404(core: Any) -> None:
    """Evicting a pod that does not exist is 404 for the pod."""
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "ghost")
    assert ei.value.status == 404
    assert json.loads(ei.value.body or b"")["message"] == 'pods "ghost" not found'


async def test_no_pdb_evicts_gracefully(core: Any, kube: Backend, make_pod: Any) -> None:
    """Without a PDB the eviction is a graceful delete (201 Success Status)."""
    await kube.seed(make_pod("a", grace=5))
    resp = await core.create_namespaced_pod_eviction(
        "a", "default", {"metadata": {"name": "a"}}, _preload_content=False
    )
    assert resp.status == 201
    assert json.loads(await resp.read())["status"] == "Success"
    pod = await kube.get("Pod", "default", "a")
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == 5


async def test_two_pdbs_is_500(core: Any, kube: Backend, make_pod: Any) -> None:
    """A pod covered by two PDBs cannot be evicted (500, as kube-apiserver refuses)."""
    await kube.seed(make_pod("a"))
    await kube.seed(make_pod("b"))
    await kube.seed(_pdb("one", maxUnavailable=1))
    await kube.seed(_pdb("two", maxUnavailable=1))
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "a")
    assert ei.value.status == 500


async def test_pdb_status_follows_pods(policy: Any, apiserver: ApiServer, make_pod: Any) -> None:
    """The PDB status (currentHealthy, disruptionsAllowed) is kept up to date as pods change."""
    apiserver.create(make_pod("a"))
    apiserver.create(_pdb("web", minAvailable=1))
    apiserver.sweep()
    pdb = await policy.read_namespaced_pod_disruption_budget("web", "default")
    assert (pdb.status.current_healthy, pdb.status.disruptions_allowed) == (1, 0)
    apiserver.create(make_pod("b"))
    apiserver.sweep()
    pdb = await policy.read_namespaced_pod_disruption_budget("web", "default")
    assert (pdb.status.current_healthy, pdb.status.disruptions_allowed) == (2, 1)
    assert pdb.status.expected_pods == 2


async def test_max_unavailable_percentage(core: Any, apiserver: ApiServer, make_pod: Any) -> None:
    """maxUnavailable=34% of 3 pods rounds up to 2 disruptions allowed (1 needed healthy).
    Memory only: with maxUnavailable or a percentage, kube-controller-manager's disruption
    controller needs each pod's controller (its scale) and gives bare pods no disruptions;
    the real-server behaviour is test_bare_pods_block_percentage_budgets.
    """
    for n in ("a", "b", "c"):
        apiserver.create(make_pod(n))
    apiserver.create(_pdb("web", maxUnavailable="34%"))
    await _evict(core, "a")
    await _evict(core, "b")
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "c")
    assert ei.value.status == 429


async def test_unready_pod_eviction_policies(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """An unready pod under a short budget: 429 by default, evicted with AlwaysAllow."""
    await kube.seed(make_pod("a", ready=False))
    await kube.seed(make_pod("b", ready=False, labels={"app": "db"}))
    await kube.seed(_pdb("web", minAvailable=1, unhealthyPodEvictionPolicy="AlwaysAllow"))
    db = _pdb("db", minAvailable=1)
    db["spec"]["selector"] = {"matchLabels": {"app": "db"}}
    await kube.seed(db)
    await _evict(core, "a")
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "b")
    assert ei.value.status == 429
    pod = await kube.get("Pod", "default", "a")
    assert pod is not None and pod["metadata"].get("deletionTimestamp")


async def test_eviction_uid_precondition_is_409(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """An eviction whose deleteOptions uid precondition does not match is 409 and keeps the pod."""
    await kube.seed(make_pod("a"))
    with pytest.raises(client.ApiException) as ei:
        await core.create_namespaced_pod_eviction(
            "a",
            "default",
            {"metadata": {"name": "a"}, "deleteOptions": {"preconditions": {"uid": "not-the-uid"}}},
        )
    assert ei.value.status == 409
    pod = await kube.get("Pod", "default", "a")
    assert pod is not None and not pod["metadata"].get("deletionTimestamp")
    assert "DisruptionTarget" not in {c["type"] for c in pod["status"]["conditions"]}


async def test_dry_run_eviction_changes_nothing(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """dryRun=All answers as a real eviction would but deletes nothing."""
    await kube.seed(make_pod("a"))
    await core.create_namespaced_pod_eviction(
        "a", "default", {"metadata": {"name": "a"}}, dry_run="All"
    )
    pod = await kube.get("Pod", "default", "a")
    assert pod is not None and not pod["metadata"].get("deletionTimestamp")


async def test_eviction_with_current_resource_version_precondition(
    core: Any, kube: Backend, make_pod: Any
) -> None:
    """A resourceVersion precondition that matches the pod lets the eviction through."""
    pod = await kube.seed(make_pod("a"))
    await _evict_with(
        core,
        "a",
        {
            "preconditions": {
                "uid": pod["metadata"]["uid"],
                "resourceVersion": pod["metadata"]["resourceVersion"],
            }
        },
    )
    after = await kube.get("Pod", "default", "a")
    assert after is not None and after["metadata"].get("deletionTimestamp")


@pytest.mark.real_only
async def test_bare_pods_block_percentage_budgets(
    core: Any, policy: Any, kube: Backend, make_pod: Any
) -> None:
    """On a real cluster a maxUnavailable budget over pods without a controller allows no
    disruption at all: every eviction is 429 and the PDB says why. A drain of such pods can only
    time out, which is why nodemedic's drain reports the budget's message and gives up at its
    timeout instead of retrying forever. (The in-memory server counts bare pods instead.)"""
    for n in ("a", "b", "c"):
        await kube.seed(make_pod(n))
    await kube.seed(_pdb("web", maxUnavailable=1))
    pdb = await policy.read_namespaced_pod_disruption_budget("web", "default")
    assert pdb.status.disruptions_allowed == 0 and pdb.status.expected_pods == 0, pdb.status
    with pytest.raises(client.ApiException) as ei:
        await _evict(core, "a")
    assert ei.value.status == 429
