"""kubectl (a real client nobody here wrote) against the in-memory API server.

Runs /usr/bin/kubectl as a subprocess against the ``apiserver`` fixture: get, get -o wide, cordon,
uncordon, taint, annotate, drain blocked by a PodDisruptionBudget until a replacement is Ready,
delete and get -w.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.testing.apiserver import ApiServer

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
pytestmark = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl is not installed")


class Kubectl:
    """Runs kubectl against one server with a private kubeconfig and cache."""

    def __init__(self, server: ApiServer, home: Path) -> None:
        self.kubeconfig = server.write_kubeconfig(home / "kubeconfig")
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(self.kubeconfig)}

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            KUBECTL,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def __call__(self, *args: str, ok: bool = True) -> str:
        proc = await self.start(*args)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        text = out.decode() + err.decode()
        if ok:
            assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {text}"
        return text


@pytest.fixture
def kubectl(apiserver: ApiServer, tmp_path: Path) -> Kubectl:
    """kubectl bound to the test server."""
    return Kubectl(apiserver, tmp_path)


def _node(name: str, ready: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0"},
        },
    }


def _pod(
    name: str,
    node: str,
    owner_kind: str = "ReplicaSet",
    owner: str = "web-rs",
    labels: dict[str, str] | None = None,
    ready: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": labels or {"app": "web"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner_kind,
                    "name": owner,
                    "uid": f"uid-{owner}",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "nginx"}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.1.0.5",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "c", "ready": ready, "restartCount": 0}],
        },
    }


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


async def test_get_nodes_and_pods(apiserver: ApiServer, kubectl: Kubectl) -> None:
    """kubectl get nodes and get pods -A -o wide print the server's objects as tables."""
    apiserver.create(_node("n1"))
    apiserver.create(_node("n2", ready="False"))
    apiserver.create(_pod("web-a", "n1"))
    nodes = _rows(await kubectl("get", "nodes"))
    assert nodes[0][:2] == ["NAME", "STATUS"]
    assert [r[:2] for r in nodes[1:]] == [["n1", "Ready"], ["n2", "NotReady"]]
    pods = _rows(await kubectl("get", "pods", "-A", "-o", "wide"))
    assert pods[0][0] == "NAMESPACE" and "NODE" in pods[0]
    assert pods[1][:4] == ["default", "web-a", "1/1", "Running"]
    assert "n1" in pods[1] and "10.1.0.5" in pods[1]


async def test_cordon_uncordon_taint_annotate(apiserver: ApiServer, kubectl: Kubectl) -> None:
    """cordon/uncordon, taint (add and remove) and annotate change the stored Node."""
    apiserver.create(_node("n1"))
    await kubectl("cordon", "n1")
    assert apiserver.get("Node", "", "n1")["spec"]["unschedulable"] is True  # type: ignore[index]
    assert "Ready,SchedulingDisabled" in await kubectl("get", "nodes")
    await kubectl("uncordon", "n1")
    assert not apiserver.get("Node", "", "n1")["spec"].get("unschedulable")  # type: ignore[index]
    await kubectl("taint", "nodes", "n1", "nodemedic.io/unhealthy=true:NoExecute")
    taints = apiserver.get("Node", "", "n1")["spec"]["taints"]  # type: ignore[index]
    assert taints == [{"key": "nodemedic.io/unhealthy", "value": "true", "effect": "NoExecute"}]
    await kubectl("taint", "nodes", "n1", "nodemedic.io/unhealthy:NoExecute-")
    assert not apiserver.get("Node", "", "n1")["spec"].get("taints")  # type: ignore[index]
    await kubectl("annotate", "node", "n1", "nodemedic.io/reason=disk full")
    meta = apiserver.get("Node", "", "n1")["metadata"]  # type: ignore[index]
    assert meta["annotations"] == {"nodemedic.io/reason": "disk full"}
    out = await kubectl("annotate", "node", "n1", "nodemedic.io/reason=again", ok=False)
    assert "already has a value" in out  # kubectl's own conflict check needs --overwrite


async def test_drain_waits_for_pdb_until_replacement_ready(
    apiserver: ApiServer, kubectl: Kubectl
) -> None:
    """drain --ignore-daemonsets retries the PDB 429 and succeeds once a replacement is Ready."""
    apiserver.create(_node("n1"))
    apiserver.create(_node("n2"))
    apiserver.create(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}},
        }
    )
    apiserver.create(
        _pod("agent-x", "n1", owner_kind="DaemonSet", owner="agent", labels={"app": "agent"})
    )
    apiserver.create(_pod("web-a", "n1"))
    apiserver.create(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }
    )
    drain = await kubectl.start("drain", "n1", "--ignore-daemonsets", "--timeout=60s")
    for _ in range(1000):  # until kubectl has been refused at least once
        if apiserver.requests.count(verb="create", resource="pods/eviction") >= 1:
            break
        await asyncio.sleep(0.02)
    assert apiserver.get("Pod", "default", "web-a") is not None  # the PDB held it
    apiserver.create(_pod("web-b", "n2"))  # the replacement, Ready on another node
    out, err = await asyncio.wait_for(drain.communicate(), timeout=90)
    text = out.decode() + err.decode()
    assert drain.returncode == 0, text
    assert "Cannot evict pod as it would violate the pod's disruption budget." in text
    assert "node/n1 drained" in text
    assert apiserver.get("Node", "", "n1")["spec"]["unschedulable"] is True  # type: ignore[index]
    assert apiserver.get("Pod", "default", "web-a") is None
    assert apiserver.get("Pod", "default", "agent-x") is not None  # DaemonSet pods stay


async def test_delete_pod(apiserver: ApiServer, kubectl: Kubectl) -> None:
    """kubectl delete waits for the graceful deletion to finish and the pod is gone."""
    apiserver.create(_pod("web-a", "n1"))
    out = await kubectl("delete", "pod", "web-a")
    assert 'pod "web-a" deleted' in out
    assert apiserver.get("Pod", "default", "web-a") is None


async def test_get_nodes_watch(apiserver: ApiServer, kubectl: Kubectl) -> None:
    """kubectl get nodes -w prints the table, then a new row when the node is cordoned."""
    apiserver.create(_node("n1"))
    proc = await kubectl.start("get", "nodes", "-w")
    try:
        assert proc.stdout is not None
        header = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        first = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert header.split()[:2] == [b"NAME", b"STATUS"]
        assert first.split()[:2] == [b"n1", b"Ready"]
        apiserver.patch("Node", "", "n1", {"spec": {"unschedulable": True}})
        update = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert update.split()[:2] == [b"n1", b"Ready,SchedulingDisabled"]
    finally:
        proc.terminate()
        await proc.wait()
