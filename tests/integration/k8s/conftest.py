"""Fixtures of the real-control-plane tests: deploy/rbac.yaml applied and a token for its
ServiceAccount (tests.real_cluster.nodemedic_token)."""

from __future__ import annotations

import pytest_asyncio

from tests.real_cluster import Backend, RealCluster, nodemedic_token


@pytest_asyncio.fixture
async def sa_token(kube: Backend, real_cluster: RealCluster) -> str:
    """deploy/rbac.yaml applied; a one-hour token of its nodemedic ServiceAccount."""
    return await nodemedic_token(real_cluster, kube)
