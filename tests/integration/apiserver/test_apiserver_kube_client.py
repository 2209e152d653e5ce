"""agent.kube.client: the agent's ApiClient factory, exercised against the in-memory API server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kubernetes_asyncio import client

import agent.kube.client as kube_client
from agent.kube.client import (
    REQUEST_TIMEOUT_SECONDS,
    WATCH_READ_SLACK_SECONDS,
    KubeClientError,
    create_api_client,
    default_timeout,
)
from agent.settings import settings_for_tests
from nodemedic_sim.apiserver import ApiServer


async def test_kubeconfig_client_talks_to_server_as_nodemedic(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    """A client built from --kubeconfig reaches the server and identifies as nodemedic/VERSION."""
    kc = apiserver.write_kubeconfig(tmp_path / "kc")
    api = await create_api_client(settings_for_tests(kubeconfig=kc))
    assert api is not None
    async with api:
        await client.CoreV1Api(api).list_node()
    assert apiserver.requests.count(verb="list", resource="nodes", client="nodemedic/0.1.0") == 1


async def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    """A --kubeconfig that does not exist raises KubeClientError naming the flag."""
    with pytest.raises(KubeClientError, match=r"--kubeconfig=.*file not found"):
        await create_api_client(settings_for_tests(kubeconfig=tmp_path / "nope"))


async def test_garbage_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    """A kubeconfig without clusters raises KubeClientError instead of a stack trace."""
    bad = tmp_path / "kc"
    bad.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubeClientError, match="--kubeconfig="):
        await create_api_client(settings_for_tests(kubeconfig=bad))


async def test_no_cluster_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a kubeconfig and outside a pod there is no client (None), not an error."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    assert await create_api_client(settings_for_tests(kubeconfig=None)) is None


def test_default_timeouts() -> None:
    """Plain requests are bounded as a whole; watches read until their server timeout plus slack."""
    assert default_timeout([("limit", 5)]).total == REQUEST_TIMEOUT_SECONDS
    w = default_timeout([("watch", True), ("timeoutSeconds", 60)])
    assert w.total is None and w.sock_read == 60 + WATCH_READ_SLACK_SECONDS
    assert default_timeout([("watch", True)]).sock_read is None


async def test_default_timeout_applies_to_calls(
    apiserver: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call without _request_timeout still gives up on a hung server (the default applies)."""
    monkeypatch.setattr(kube_client, "REQUEST_TIMEOUT_SECONDS", 0.2)
    apiserver.faults.latency = 2.0
    api = await create_api_client(
        settings_for_tests(kubeconfig=apiserver.write_kubeconfig(tmp_path / "kc"))
    )
    assert api is not None
    async with api:
        with pytest.raises(asyncio.TimeoutError):
            await client.CoreV1Api(api).list_node()
