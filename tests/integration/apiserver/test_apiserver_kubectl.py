"""kubectl (a real client nobody here wrote) against the in-memory API server.

Runs the kubectl of the pinned Kubernetes release (hack/k8s/versions.env, built by
hack/k8s/build.sh; these tests fail, never skip, without it) as a subprocess against the
``apiserver`` fixture: get, get -o wide, cordon, uncordon, taint, annotate, drain blocked by a
PodDisruptionBudget until a replacement is Ready, delete and get -w; and, through the real
server's OpenAPI documents the in-memory server serves, create and apply with kubectl's default
(strict) validation, unknown fields rejected with kube-apiserver's messages, and explain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from nodemedic_sim.apiserver import ApiServer

HACK = Path(__file__).resolve().parents[3] / "hack" / "k8s"


def _pinned_kubectl() -> str:
    """The kubectl of the pinned release, from hack/k8s/build.sh (fails the test without it)."""
    proc = subprocess.run(
        ["bash", str(HACK / "build.sh")], capture_output=True, text=True, check=False
    )
    kubectl = Path(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "") / "kubectl"
    if proc.returncode != 0 or not os.access(kubectl, os.X_OK):
        pytest.fail(
            f"kubectl of the pinned Kubernetes release is missing: `bash hack/k8s/build.sh` "
            f"exited {proc.returncode} and {kubectl} is not executable (needs Go, see "
            f"docs/real-k8s.md):\n{proc.stderr[-2000:]}",
            pytrace=False,
        )
    return str(kubectl)


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    """Path of the pinned kubectl (built once per machine by hack/k8s/build.sh)."""
    return _pinned_kubectl()


class Kubectl:
    """Runs kubectl against one server with a private kubeconfig and cache."""

    def __init__(self, server: ApiServer, home: Path, binary: str) -> None:
        self.binary = binary
        self.home = home
        self.kubeconfig = server.write_kubeconfig(home / "kubeconfig")
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(self.kubeconfig)}

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            self.binary,
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
def kubectl(apiserver: ApiServer, tmp_path: Path, kubectl_bin: str) -> Kubectl:
    """kubectl bound to the test server."""
    return Kubectl(apiserver, tmp_path, kubectl_bin)


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


# ---- OpenAPI: validation, apply and explain (expected texts: kubectl v1.35.4 against a real
# kube-apiserver v1.35.4, hack/k8s/up.sh, same manifests) ------------------------------------

_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
}
_BAD_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bad", "namespace": "default"},
    "spec": {"bogus": 1, "containers": [{"name": "c", "image": "nginx", "colour": "red"}]},
}
_REAL_STRICT_POD = (
    'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
    'unknown field "spec.bogus", unknown field "spec.containers[0].colour"'
)
_NODE_NAME_DOC = "NodeName indicates in which node this pod is scheduled."


def _manifest(kubectl: Kubectl, name: str, obj: dict[str, Any]) -> str:
    path = kubectl.home / name
    path.write_text(yaml.safe_dump(obj))
    return str(path)


async def test_create_validates_without_validate_false(
    apiserver: ApiServer, kubectl: Kubectl
) -> None:
    """kubectl create -f (default --validate=strict) reads the OpenAPI v3 documents and creates."""
    out = await kubectl("create", "-f", _manifest(kubectl, "pod.yaml", _POD))
    assert "pod/web created" in out
    assert apiserver.get("Pod", "default", "web") is not None
    assert apiserver.requests.count(verb="get", resource="/openapi/v3/api/v1") == 1


async def test_unknown_fields_rejected_as_by_the_real_server(
    apiserver: ApiServer, kubectl: Kubectl
) -> None:
    """Strict names every unknown field (kube-apiserver's 400); warn creates without them."""
    path = _manifest(kubectl, "bad.yaml", _BAD_POD)
    out = await kubectl("create", "--validate=strict", "-f", path, ok=False)
    refused = f'Error from server (BadRequest): error when creating "{path}": {_REAL_STRICT_POD}'
    assert refused in out
    assert apiserver.get("Pod", "default", "bad") is None
    out = await kubectl("create", "--validate=warn", "-f", path)
    assert 'Warning: unknown field "spec.bogus"' in out
    assert 'Warning: unknown field "spec.containers[0].colour"' in out
    stored = apiserver.get("Pod", "default", "bad")
    assert stored is not None and "bogus" not in stored["spec"]  # dropped, as the real server does
    assert "colour" not in stored["spec"]["containers"][0]


async def test_apply_creates_then_patches(apiserver: ApiServer, kubectl: Kubectl) -> None:
    """apply creates, then patches (strategic merge from the v3 schema); a strict unknown field
    in the patch is refused with the real server's 422."""
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm1", "namespace": "default"},
        "data": {"a": "b"},
    }
    path = _manifest(kubectl, "cm.yaml", cm)
    assert "configmap/cm1 created" in await kubectl("apply", "-f", path)
    cm["data"] = {"a": "c"}
    _manifest(kubectl, "cm.yaml", cm)
    assert "configmap/cm1 configured" in await kubectl("apply", "-f", path)
    assert apiserver.get("ConfigMap", "default", "cm1")["data"] == {"a": "c"}  # type: ignore[index]
    out = await kubectl("apply", "-f", _manifest(kubectl, "bad.yaml", {**cm, "bogus": 1}), ok=False)
    last = json.dumps({**cm, "bogus": 1, "metadata": {**cm["metadata"], "annotations": {}}},
                      separators=(",", ":"), sort_keys=True)
    shown = (f"map[bogus:1 metadata:map[annotations:map["  # the patch, as Go prints a map
             f"kubectl.kubernetes.io/last-applied-configuration:{last}\n]]]")
    expected = (f"The request is invalid: patch: Invalid value: {json.dumps(shown)}: "
                f'strict decoding error: unknown field "bogus"')
    assert expected in out
    assert "bogus" not in apiserver.get("ConfigMap", "default", "cm1")  # type: ignore[operator]


async def test_explain_prints_the_real_descriptions(
    apiserver: ApiServer, kubectl: Kubectl
) -> None:
    """explain reads v3 (cached by kubectl after the first run) and v2 (protobuf)."""
    for _ in range(2):
        out = await kubectl("explain", "pods.spec.nodeName")
        assert "FIELD: nodeName <string>" in out and _NODE_NAME_DOC in out
    # The document URL carries its hash and is immutable: the second run used kubectl's cache.
    assert apiserver.requests.count(verb="get", resource="/openapi/v3/api/v1") == 1
    out = await kubectl("explain", "leases.spec.holderIdentity")
    assert "holderIdentity contains the identity of the holder of a current lease." in " ".join(
        out.split()
    )
    out = await kubectl("explain", "pods.spec.nodeName", "--output=plaintext-openapiv2")
    assert _NODE_NAME_DOC in out
    assert apiserver.requests.count(verb="get", resource="/openapi/v2") >= 1


async def test_openapi_v3_index_hashes_and_redirects(apiserver: ApiServer) -> None:
    """The index's hash is the document's SHA-512; a stale hash is redirected to the current."""
    async with aiohttp.ClientSession(apiserver.url) as http:
        async with http.get("/openapi/v3") as resp:
            index = json.loads(await resp.read())["paths"]
        assert {"api/v1", "apis/coordination.k8s.io/v1", "apis/policy/v1"} <= set(index)
        url = index["api/v1"]["serverRelativeURL"]
        async with http.get(url) as resp:
            body = await resp.read()
            assert resp.headers["Cache-Control"] == "public, immutable"
        assert url.endswith("?hash=" + hashlib.sha512(body).hexdigest().upper())
        doc = json.loads(body)
        assert "/api/v1/namespaces/{namespace}/pods" in doc["paths"]
        assert "/api/v1/namespaces/{namespace}/pods/{name}/log" not in doc["paths"]  # not served
        async with http.get("/openapi/v3/api/v1?hash=0", allow_redirects=False) as resp:
            assert resp.status == 301 and resp.headers["Location"] == url
        pb = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        async with http.get("/openapi/v2", headers={"Accept": pb}) as resp:
            assert resp.content_type.endswith("+protobuf") and (await resp.read())[:1] != b"{"
        async with http.get("/openapi/v2", headers={"Accept": "application/json"}) as resp:
            assert (await resp.json())["swagger"] == "2.0"


async def test_field_validation_ignore_and_unsupported(apiserver: ApiServer) -> None:
    """Ignore drops unknown fields silently; an unknown directive is the real server's 422."""
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1},
          "data": {"a": "b"}, "extra": {"z": 1}}
    url = "/api/v1/namespaces/default/configmaps"
    async with aiohttp.ClientSession(apiserver.url) as http:
        async with http.post(url, params={"fieldValidation": "Bogus"}, json=cm) as resp:
            status = await resp.json()
        assert resp.status == 422 and status["message"] == (
            'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: '
            '"Bogus": supported values: "", "Ignore", "Strict", "Warn"'
        )
        async with http.post(url, params={"fieldValidation": "Ignore"}, json=cm) as resp:
            assert resp.status == 201 and "Warning" not in resp.headers
        async with http.post(url, json={**cm, "metadata": {"name": "y", "bogus": 1}}) as resp:
            assert resp.headers.getall("Warning") == [  # Warn, the default
                '299 - "unknown field \\"metadata.bogus\\""', '299 - "unknown field \\"extra\\""'
            ]
    stored = apiserver.get("ConfigMap", "default", "x")
    assert stored is not None and "extra" not in stored and "bogus" not in stored["metadata"]


async def test_every_served_resource_is_in_the_captured_documents(apiserver: ApiServer) -> None:
    """Each resource in resources.py has its collection path and its kind's schema in the v3
    document of its group-version (else: rerun hack/k8s/capture-openapi.sh)."""
    from nodemedic_sim.apiserver.resources import RESOURCES

    async with aiohttp.ClientSession(apiserver.url) as http:
        for rt in RESOURCES:
            name = f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"
            async with http.get(f"/openapi/v3/{name}") as resp:
                assert resp.status == 200, name
                doc = await resp.json()
            ns = "namespaces/{namespace}/" if rt.namespaced else ""
            assert f"/{name}/{ns}{rt.plural}" in doc["paths"], rt
            gvks = [
                gvk
                for schema in doc["components"]["schemas"].values()
                for gvk in schema.get("x-kubernetes-group-version-kind", ())
            ]
            assert {"group": rt.group, "version": rt.version, "kind": rt.kind} in gvks, rt
