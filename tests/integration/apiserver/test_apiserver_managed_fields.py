"""metadata.managedFields: who set which field, as kube-apiserver records Update operations.

The agent's cordon ownership check reads them (agent.kube.nodes.field_owners), so the in-memory
server must attribute writes as a real one does: the fieldManager parameter, else the User-Agent
up to its first "/"; changed fields move to the writer, removed ones leave every manager, and
fields a write leaves as they were keep their owners.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agent.kube.nodes import field_owners
from nodemedic_sim.apiserver import ApiServer

SMP = "application/strategic-merge-patch+json"


def managers(server: ApiServer, *path: str) -> list[str] | None:
    node = server.get("Node", "", "n1")
    assert node is not None
    owners = field_owners(node, *path)
    return None if owners is None else [m for m, _ in owners]


async def test_writes_are_attributed_to_their_field_manager(
    apiserver: ApiServer, kube_api: Any
) -> None:
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    core = client.CoreV1Api(kube_api)
    await core.patch_node("n1", {"spec": {"unschedulable": True}}, field_manager="kubectl-cordon")
    assert managers(apiserver, "spec", "unschedulable") == ["kubectl-cordon"]
    # No fieldManager: the User-Agent's first word, up to the "/", as kube-apiserver does.
    kube_api.user_agent = "kubectl-label/v1.31.0 (linux/amd64) kubernetes/abc"
    await core.patch_node("n1", {"metadata": {"labels": {"team": "infra"}}})
    assert managers(apiserver, "metadata", "labels", "team") == ["kubectl-label"]
    assert managers(apiserver, "spec", "unschedulable") == ["kubectl-cordon"]  # untouched


async def test_a_removed_field_leaves_every_manager_and_a_readded_one_is_the_writers(
    apiserver: ApiServer,
) -> None:
    """uncordon + cordon by someone else: the field looks the same, its owner does not."""
    apiserver.create({"apiVersion": "v1", "kind": "Node",
                      "metadata": {"name": "n1", "labels": {"zone": "a"}}}, manager="kubelet")
    apiserver.patch("Node", "", "n1", {"spec": {"unschedulable": True}}, SMP, manager="nodemedic")
    apiserver.patch("Node", "", "n1", {"spec": {"unschedulable": None}}, SMP,
                    manager="kubectl-uncordon")
    assert managers(apiserver, "spec", "unschedulable") == []
    apiserver.patch("Node", "", "n1", {"spec": {"unschedulable": True}}, SMP,
                    manager="kubectl-cordon")
    assert managers(apiserver, "spec", "unschedulable") == ["kubectl-cordon"]


async def test_a_put_of_unchanged_fields_takes_no_ownership(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """A read-modify-replace that changes one annotation owns that annotation only."""
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    apiserver.patch("Node", "", "n1", {"spec": {"unschedulable": True}}, SMP,
                    manager="kubectl-cordon")
    core = client.CoreV1Api(kube_api)
    node = await core.read_node("n1")
    node.metadata.annotations = {"nodemedic.io/state": "{}"}
    await core.replace_node("n1", node, field_manager="nodemedic")
    assert managers(apiserver, "spec", "unschedulable") == ["kubectl-cordon"]
    assert managers(apiserver, "metadata", "annotations", "nodemedic.io/state") == ["nodemedic"]
