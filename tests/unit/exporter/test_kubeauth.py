"""--web.kubernetes-auth against the in-memory API server's TokenReview/SubjectAccessReview:
the scraper's ServiceAccount is served, other tokens are refused, a cold cache with the API down
fails closed, a warm cache keeps serving within its TTL and saves API calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from agent.exporter import kubeauth
from agent.exporter.kubeauth import KubeAuthorizer
from agent.exporter.self_metrics import SelfMetrics
from agent.exporter.webconfig import WebConfigError
from agent.exporter.webfront import WebFront
from agent.settings import settings_for_tests
from nodemedic_sim.apiserver import ApiServer
from tests.unit.exporter.test_webauth import FakeAgent

PROM = "system:serviceaccount:monitoring:prometheus"
NODE = "node-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model(apiserver: ApiServer) -> ApiServer:
    apiserver.reviews.add_token("prom-token", PROM, groups=("system:serviceaccounts",))
    apiserver.reviews.add_token("grafana-token", "system:serviceaccount:monitoring:grafana")
    apiserver.reviews.allow(PROM, "get", "nodes", subresource="metrics")
    apiserver.reviews.allow(PROM, "get", "nodes", group="nodemedic.io", subresource="status",
                            names=(NODE,))
    return apiserver


@pytest.fixture
async def served(model: ApiServer, kube_api: Any) -> AsyncIterator[tuple[WebFront, int, Clock]]:
    clock = Clock()
    front = await WebFront.create(settings_for_tests(web_kubernetes_auth=True, node_name=NODE),
                                  lambda: kube_api)
    assert isinstance(front.protection.kube, KubeAuthorizer)
    front.protection.kube.clock = clock
    runner, port = await front.serve(FakeAgent(), SelfMetrics(CollectorRegistry()),
                                     "127.0.0.1", 0, 16)
    try:
        yield front, port, clock
    finally:
        await runner.cleanup()


async def get(port: int, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        return r.status


async def test_allowed_other_and_missing_tokens(served: tuple[WebFront, int, Clock],
                                                model: ApiServer) -> None:
    """Prometheus' SA: 200 on /metrics and /status; Grafana's SA: 403; no or an unknown token:
    401; local probes need no token."""
    _, port, _ = served
    assert await get(port, "/metrics", "prom-token") == 200
    assert await get(port, "/status", "prom-token") == 200
    assert await get(port, "/metrics", "grafana-token") == 403
    assert await get(port, "/metrics", None) == 401
    assert await get(port, "/metrics", "forged") == 401
    assert await get(port, "/healthz", None) == 200


async def test_sar_carries_kube_rbac_proxy_attributes(served: tuple[WebFront, int, Clock],
                                                      model: ApiServer) -> None:
    """/status is allowed only for this node's name: a rule for another node does not open it."""
    _, port, _ = served
    model.reviews.rules = [r for r in model.reviews.rules if r.group != "nodemedic.io"]
    model.reviews.allow(PROM, "get", "nodes", group="nodemedic.io", subresource="status",
                        names=("node-b",))
    assert await get(port, "/status", "prom-token") == 403
    assert await get(port, "/metrics", "prom-token") == 200


async def test_cache_saves_api_calls_and_fails_closed(served: tuple[WebFront, int, Clock],
                                                      model: ApiServer) -> None:
    """Scrapes every 15 s for 45 s cost one TokenReview + one SubjectAccessReview; with the API
    down a warm entry is served until its TTL ends, then refused; a cold token is refused."""
    _, port, clock = served
    for _ in range(4):
        assert await get(port, "/metrics", "prom-token") == 200
        clock.now += 15
    assert (model.reviews.token_reviews, model.reviews.access_reviews) == (1, 1)
    await model.stop()
    clock.now += 5  # 65 s after the first check: past the 60 s TTL
    assert clock.now - 1000.0 > kubeauth.POSITIVE_TTL_SECONDS
    assert await get(port, "/metrics", "prom-token") == 401
    await model.start()
    assert await get(port, "/metrics", "prom-token") == 200
    await model.stop()
    clock.now += kubeauth.POSITIVE_TTL_SECONDS - 1
    assert await get(port, "/metrics", "prom-token") == 200  # warm, API down: still served
    assert await get(port, "/status", "prom-token") == 401  # cold, API down: denied
    await model.start()


async def test_denials_are_cached_briefly(served: tuple[WebFront, int, Clock],
                                          model: ApiServer) -> None:
    """A 403 is remembered for NEGATIVE_TTL_SECONDS, then asked again (RBAC may have changed)."""
    _, port, clock = served
    assert await get(port, "/metrics", "grafana-token") == 403
    model.reviews.allow("system:serviceaccount:monitoring:grafana", "get", "nodes",
                        subresource="metrics")
    assert await get(port, "/metrics", "grafana-token") == 403
    clock.now += kubeauth.NEGATIVE_TTL_SECONDS + 1
    assert await get(port, "/metrics", "grafana-token") == 200


async def test_kubernetes_auth_without_api_refuses_to_start() -> None:
    front = await WebFront.create(settings_for_tests(web_kubernetes_auth=True), lambda: None)
    with pytest.raises(WebConfigError, match="needs the Kubernetes API"):
        front.check_api(None)
