"""Fixtures shared by the API server's own tests: API groups on kube_api and a pod factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes_asyncio import client


@pytest.fixture
def core(kube_api: Any) -> Any:
    """CoreV1Api on the test server."""
    return client.CoreV1Api(kube_api)


@pytest.fixture
def coordination(kube_api: Any) -> Any:
    """CoordinationV1Api on the test server."""
    return client.CoordinationV1Api(kube_api)


@pytest.fixture
def policy(kube_api: Any) -> Any:
    """PolicyV1Api on the test server."""
    return client.PolicyV1Api(kube_api)


def _ready_pod(
    name: str,
    node: str = "n1",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    grace: int = 30,
) -> dict[str, Any]:
    """A scheduled, Running pod with a Ready condition, for seeding with ApiServer.create."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": "web"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "c", "image": "nginx"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@pytest.fixture
def make_pod() -> Callable[..., dict[str, Any]]:
    """Factory of scheduled, Running, Ready pods: make_pod(name, node=, labels=, ready=, grace=)."""
    return _ready_pod
