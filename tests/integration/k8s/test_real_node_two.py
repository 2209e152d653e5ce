"""Two real nodes on one host (tests/real_node.py twice): nodemedic-node-1 as usual (cgroupRoot /)
and nodemedic-node-2 with its own kubelet cgroupRoot (/nodemedic-node-2), containerd, bridge
(nmbr1), pod CIDR (10.244.2.0/24), directories and ports. Each kubelet runs only its own pod, in
its own cgroup tree, and nodemedic's cgroup collector for each node (node 2's reading node-up.sh's
view of its cgroupRoot as --path.cgroupfs) reports that node's pod and not the other's.

Off unless NODEMEDIC_K8S_NODES=1 (see tests/real_node.py).
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.real_cluster import Backend, RealCluster
from tests.real_node import RealNode, collect_cgroups, container_status, real_node, running, until

pytestmark = [pytest.mark.backends, pytest.mark.real_only]

NS = "default"
SECOND = {"NODE_BRIDGE": "nmbr1", "NODE_POD_CIDR": "10.244.2.0/24",
          "NODE_CGROUP_ROOT": "/nodemedic-node-2"}


@pytest.fixture(scope="module")
def nodes(real_cluster: RealCluster) -> Iterator[tuple[RealNode, RealNode]]:
    with contextlib.ExitStack() as stack:
        one = real_node(real_cluster)
        first = next(one)
        stack.callback(one.close)  # close() runs the generator's finally: node-down.sh
        two = real_node(real_cluster, "nodemedic-node-2", env=SECOND)
        second = next(two)
        stack.callback(two.close)
        yield first, second


@pytest_asyncio.fixture
async def placed(kube: Backend, nodes: tuple[RealNode, RealNode]
                 ) -> AsyncIterator[list[dict[str, Any]]]:
    """A sleeping BestEffort pod on each node, running."""
    names = [f"on-{n.name[-1]}-{uuid.uuid4().hex[:6]}" for n in nodes]
    try:
        for name, node in zip(names, nodes, strict=True):
            code, body = await kube.request("POST", f"/api/v1/namespaces/{NS}/pods", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
                "spec": {"nodeName": node.name, "automountServiceAccountToken": False,
                         "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": node.image,
                                         "command": ["sleep", "3600"]}]}})
            assert code == 201, body
        yield [await until(kube, NS, name, running) for name in names]
    finally:
        for name in names:
            await kube.request("DELETE", f"/api/v1/namespaces/{NS}/pods/{name}"
                                         "?gracePeriodSeconds=0")


def kubelet_pods(node: RealNode) -> set[str]:
    with urllib.request.urlopen(f"{node.kubelet_url}/pods", timeout=10) as r:
        doc = json.load(r)
    return {p["metadata"]["name"] for p in doc.get("items") or []}


async def test_each_kubelet_runs_its_pod_in_its_own_cgroup_root_and_nodemedic_tells_them_apart(
        nodes: tuple[RealNode, RealNode], placed: list[dict[str, Any]]) -> None:
    names = [p["metadata"]["name"] for p in placed]
    roots = [Path("/sys/fs/cgroup/memory/kubepods"),
             Path("/sys/fs/cgroup/memory/nodemedic-node-2/kubepods")]
    for i, (node, pod) in enumerate(zip(nodes, placed, strict=True)):
        assert pod["spec"]["nodeName"] == node.name
        assert kubelet_pods(node) & set(names) == {names[i]}, (node.name, kubelet_pods(node))
        uid = pod["metadata"]["uid"]
        cid = container_status(pod)["containerID"].split("://", 1)[1]
        assert (roots[i] / "besteffort" / f"pod{uid}" / cid).is_dir(), (node.name, roots[i])
        assert not (roots[1 - i] / "besteffort" / f"pod{uid}").exists()
    for i, node in enumerate(nodes):
        fams = await collect_cgroups(node.kubelet_url, node.cgroupfs)
        usage = fams["nodemedic_container_memory_usage_bytes"]
        pods = {lbl["pod"] for lbl, _ in usage.series() if lbl["container"] == "c"}
        assert names[i] in pods and names[1 - i] not in pods, (node.name, pods)
        assert fams["nodemedic_cgroup_pod_attribution"].get() == 1
