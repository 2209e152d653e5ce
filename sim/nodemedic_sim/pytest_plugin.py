"""pytest fixtures for the in-memory API server: ``apiserver`` and ``kube_api``.

Any project can load it with ``pytest_plugins = ["nodemedic_sim.pytest_plugin"]`` (nodemedic's
own tests use tests/conftest.py instead, which runs the same tests on a real control plane too).
``apiserver`` is a started :class:`ApiServer` on a free loopback port; ``kube_api`` is a
kubernetes_asyncio ``ApiClient`` configured for it, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest_asyncio

if TYPE_CHECKING:
    from nodemedic_sim.apiserver import ApiServer


@pytest_asyncio.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    """A running in-memory API server on 127.0.0.1 and a free port, stopped after the test."""
    # Imported here so that loading the plugin never breaks a test session that does not use it.
    from nodemedic_sim.apiserver import ApiServer

    server = ApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def kube_api(apiserver: ApiServer) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ApiClient talking to ``apiserver`` over HTTP."""
    from kubernetes_asyncio import client

    cfg = client.Configuration(host=apiserver.url)
    cfg.api_key = {"BearerToken": "nodemedic-test"}  # the key kubernetes_asyncio reads
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    api = client.ApiClient(cfg)
    api.user_agent = "nodemedic-tests"
    try:
        yield api
    finally:
        await api.close()
