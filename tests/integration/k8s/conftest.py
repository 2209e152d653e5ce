"""Fixtures of the real-control-plane tests: deploy/rbac.yaml applied and a token for its
ServiceAccount (TokenRequest, as `kubectl create token nodemedic -n kube-system` gives)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest_asyncio

from tests.real_cluster import Backend, RealCluster

RBAC = Path(__file__).resolve().parents[3] / "deploy" / "rbac.yaml"
SA = "/api/v1/namespaces/kube-system/serviceaccounts/nodemedic"


def kubectl(cluster: RealCluster, kube: Backend, *args: str, stdin: str | None = None) -> str:
    """Run the pinned kubectl as cluster-admin; fails the test with its stderr."""
    assert kube.creds is not None
    out = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(kube.creds.kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


@pytest_asyncio.fixture
async def sa_token(kube: Backend, real_cluster: RealCluster) -> str:
    """deploy/rbac.yaml applied; a one-hour token of its nodemedic ServiceAccount."""
    await asyncio.to_thread(kubectl, real_cluster, kube, "apply", "-f", str(RBAC))
    code, tr = await kube.request("POST", f"{SA}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}})
    assert code == 201, tr
    return str(tr["status"]["token"])
