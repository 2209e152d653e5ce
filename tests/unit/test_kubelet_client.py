"""KubeletClient against the fake kubelet on loopback: health, limits, caching, tokens, parsing."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.collectors.base import CollectorContext
from agent.kubelet_client import (
    KubeletBadBody,
    KubeletClient,
    KubeletError,
    KubeletResponseTooLarge,
    KubeletUnauthorized,
    get_or_create,
    parse_pod_list,
)
from agent.settings import settings_for_tests
from nodemedic_sim.fake_kubelet import FakeKubelet, Override

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubelet"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubelet]:
    fk = FakeKubelet(FIXTURES)
    await fk.start()
    try:
        yield fk
    finally:
        await fk.stop()


@pytest.fixture
async def client(fake: FakeKubelet) -> AsyncIterator[KubeletClient]:
    c = KubeletClient(fake.url, timeout=2.0)
    try:
        yield c
    finally:
        await c.close()


async def test_healthz_ok(client: KubeletClient) -> None:
    """A healthy kubelet's /healthz gives (True, latency, "ok")."""
    ok, seconds, detail = await client.healthz()
    assert ok is True
    assert detail == "ok"
    assert seconds > 0


async def test_healthz_failure_reports_status_and_body(
    fake: FakeKubelet, client: KubeletClient
) -> None:
    """A 500 from /healthz is unhealthy, and the detail carries the kubelet's failing check."""
    fake.healthz_mode = "fail"
    ok, _, detail = await client.healthz()
    assert ok is False
    assert "HTTP 500" in detail and "syncloop failed" in detail


async def test_healthz_timeout(fake: FakeKubelet) -> None:
    """A hanging /healthz is unhealthy after the client timeout, with a message saying so."""
    fake.healthz_mode = "hang"
    c = KubeletClient(fake.url, timeout=0.3)
    try:
        ok, _, detail = await c.healthz()
    finally:
        await c.close()
    assert ok is False
    assert "no answer within 300ms" in detail
    assert c.requests[("healthz", "timeout")] == 1


async def test_healthz_garbage_200_is_not_healthy(
    fake: FakeKubelet, client: KubeletClient
) -> None:
    """A 200 whose body is not the kubelet's answer does not count as healthy."""
    fake.healthz_mode = "garbage"
    ok, _, detail = await client.healthz()
    assert ok is False
    assert "unexpected body" in detail
    assert client.requests[("healthz", "bad_body")] == 1


async def test_unreachable_kubelet_is_a_clear_error() -> None:
    """Connection refused gives unhealthy with 'cannot reach' and the URL, not an exception."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = KubeletClient(f"http://127.0.0.1:{port}", timeout=1.0)
    try:
        ok, _, detail = await c.healthz()
        with pytest.raises(KubeletError, match="cannot reach"):
            await c.get_json("/stats/summary")
    finally:
        await c.close()
    assert ok is False
    assert f"127.0.0.1:{port}" in detail


async def test_garbage_json_raises_bad_body(fake: FakeKubelet, client: KubeletClient) -> None:
    """Invalid JSON from /stats/summary raises KubeletBadBody naming the path."""
    fake.overrides["/stats/summary"] = Override(200, b'{"node": {"cpu": ', "application/json")
    with pytest.raises(KubeletBadBody, match="/stats/summary: invalid JSON"):
        await client.get_json("/stats/summary")
    assert client.requests[("stats_summary", "bad_body")] == 1
    assert client.requests[("stats_summary", "ok")] == 0


async def test_huge_body_with_length_refused(fake: FakeKubelet) -> None:
    """A body whose Content-Length is over the limit is refused before it is read."""
    fake.overrides["/stats/summary"] = Override(200, b" " * (2 << 20), "application/json")
    c = KubeletClient(fake.url, max_body_bytes=1 << 20)
    try:
        with pytest.raises(KubeletResponseTooLarge, match="refused"):
            await c.get_json("/stats/summary")
    finally:
        await c.close()
    assert c.requests[("stats_summary", "too_large")] == 1


async def test_huge_streamed_body_refused(fake: FakeKubelet) -> None:
    """A chunked body with no length is cut off once it passes the limit."""
    fake.stream_bytes["/stats/summary"] = 3 << 20
    c = KubeletClient(fake.url, max_body_bytes=1 << 20)
    try:
        with pytest.raises(KubeletResponseTooLarge, match="over 1048576 bytes"):
            await c.get_json("/stats/summary")
        # The client stays usable after refusing a body.
        ok, _, _ = await c.healthz()
    finally:
        await c.close()
    assert ok is True
    assert c.families()[0].get(endpoint="stats_summary", outcome="too_large") == 1


async def test_pods_fetched_once_for_concurrent_callers(
    fake: FakeKubelet, client: KubeletClient
) -> None:
    """Two collectors asking for pods in the same tick cause one /pods request."""
    fake.delays["/pods"] = 0.2  # both calls are in flight together
    a, b = await asyncio.gather(client.pods(), client.pods())
    assert fake.hits["/pods"] == 1
    assert a == b and len(a) == 24
    assert client.pods_cache_hits == 1


async def test_pods_refetched_after_max_age(fake: FakeKubelet) -> None:
    """The pod cache expires: the next tick sees a fresh /pods."""
    c = KubeletClient(fake.url, pods_max_age=0.0)
    try:
        await c.pods()
        await c.pods()
    finally:
        await c.close()
    assert fake.hits["/pods"] == 2


async def test_pods_failure_cached_for_concurrent_callers(
    fake: FakeKubelet, client: KubeletClient
) -> None:
    """A failing /pods is asked once per tick, and every caller gets the error."""
    fake.overrides["/pods"] = Override(503, b"unavailable")
    results = await asyncio.gather(client.pods(), client.pods(), return_exceptions=True)
    assert fake.hits["/pods"] == 1
    assert all(isinstance(r, KubeletError) and "HTTP 503" in str(r) for r in results)


def test_pod_refs_from_capture() -> None:
    """/pods of the captured minikube node maps UIDs to namespace/name/QoS and container IDs."""
    doc = json.loads((FIXTURES / "pods_minikube_v1.35.json").read_text())
    pods = parse_pod_list(doc)
    assert pods.skipped == 0
    by_uid = {p.ref.uid: p for p in pods.pods}
    hpa = by_uid["3ea3ef66-5f89-43b7-b88b-6ee26f5b18a4"]
    assert (hpa.ref.namespace, hpa.ref.name) == ("scraper", "e2e-hpa-6cd8d99884-tggnr")
    assert hpa.ref.qos_class == "Burstable"
    assert hpa.ref.phase == "Running"
    cid = "77bb57d9a0006a5ac95a6fa541b2f2a646943143fe1d906aaf70a392d9a62b83"
    assert hpa.ref.containers == {cid: "php-apache"}
    assert hpa.restarts == {"php-apache": 0}


def test_malformed_pod_items_are_skipped_and_counted() -> None:
    """Pods without metadata, with odd types or an infinite restart count are skipped; the good
    ones still come through."""
    doc = {
        "items": [
            {"metadata": {"uid": "u1", "namespace": "ns", "name": "ok"}, "status": {}},
            {"status": {"phase": "Running"}},
            "not-an-object",
            {"metadata": {"uid": "u3", "namespace": "ns", "name": "bad"},
             "status": {"containerStatuses": [{"name": "c", "restartCount": "many"}]}},
            {"metadata": {"uid": "u4", "namespace": "ns", "name": "inf"},
             "status": {"containerStatuses": [{"name": "c", "restartCount": float("inf")}]}},
        ]
    }
    pods = parse_pod_list(doc)
    assert [p.ref.name for p in pods.pods] == ["ok"]
    assert pods.skipped == 4


def test_pod_list_that_is_not_a_list_is_bad_body() -> None:
    """A /pods answer without items is refused as a bad body."""
    with pytest.raises(KubeletBadBody):
        parse_pod_list({"kind": "Status"})


async def test_missing_token_gets_401_with_hint(tmp_path: Path) -> None:
    """Without a token an authenticated kubelet's 401 says no token is configured."""
    fk = FakeKubelet(FIXTURES, token="s3cret")
    await fk.start()
    c = KubeletClient(fk.url)
    try:
        with pytest.raises(KubeletUnauthorized, match=r"HTTP 401.*no token configured"):
            await c.get_text("/metrics")
    finally:
        await c.close()
        await fk.stop()


async def test_rotated_token_is_reread(tmp_path: Path) -> None:
    """When the token file is replaced (projected token rotation) the new token is used."""
    token = tmp_path / "token"
    token.write_text("old-token\n")
    fk = FakeKubelet(FIXTURES, token="old-token")
    await fk.start()
    c = KubeletClient(fk.url, token_file=token)
    try:
        assert (await c.healthz())[0] is True
        fk.token = "new-token-longer"
        new = tmp_path / "token.new"
        new.write_text("new-token-longer\n")
        new.replace(token)  # atomic swap, like the kubelet's ..data symlink flip
        assert (await c.healthz())[0] is True
        assert c.requests[("healthz", "ok")] == 2
    finally:
        await c.close()
        await fk.stop()


async def test_unreadable_token_file_is_reported(tmp_path: Path) -> None:
    """A missing token file fails the request with the file name, not a crash."""
    c = KubeletClient("http://127.0.0.1:1", token_file=tmp_path / "absent")
    try:
        ok, _, detail = await c.healthz()
    finally:
        await c.close()
    assert ok is False
    assert "cannot read kubelet token file" in detail and "absent" in detail


async def test_get_or_create_shares_one_client() -> None:
    """Collectors built alone share the client they create through ctx.kubelet."""
    ctx = CollectorContext(settings_for_tests(collect_interval=10.0, collector_timeout=5.0))
    a = get_or_create(ctx)
    b = get_or_create(ctx)
    assert a is b is ctx.kubelet
    assert a.timeout == pytest.approx(4.0)
    assert a.pods_max_age == pytest.approx(5.0)
    await a.close()


async def test_missing_ca_file_is_reported(tmp_path: Path) -> None:
    """A --kubelet.ca-file that does not exist is a clear, counted error, not a crash."""
    c = KubeletClient("https://127.0.0.1:1", ca_file=tmp_path / "missing-ca.pem")
    try:
        ok, _, detail = await c.healthz()
    finally:
        await c.close()
    assert ok is False
    assert "cannot load kubelet CA file" in detail and "missing-ca.pem" in detail
    assert c.requests[("healthz", "config_error")] == 1


def test_a_kubelet_without_pods_sends_items_null() -> None:
    """A real kubelet (v1.35.4, tests/integration/k8s/test_real_node.py's node) with no pods
    answers /pods with ``"items":null``: that is an empty node, not a bad body (before, the
    cgroup series lost their pod names on such a node); a body without items is still refused."""
    empty = parse_pod_list({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                            "items": None})
    assert empty.pods == () and empty.skipped == 0
    with pytest.raises(KubeletBadBody):
        parse_pod_list({"kind": "PodList", "apiVersion": "v1", "metadata": {}})


async def test_an_unchanged_pods_body_is_not_decoded_again_and_a_changed_one_is(
    fake: FakeKubelet,
) -> None:
    """The same /pods bytes give the same pods without decoding; any change is seen at once."""
    c = KubeletClient(fake.url, pods_max_age=0.0)
    try:
        first = await c.pod_list()
        again = await c.pod_list()
        assert again is first  # the parsed list of the identical body, not a new decode
        fake.overrides["/pods"] = Override(200, json.dumps({"items": []}).encode(),
                                           "application/json")
        changed = await c.pod_list()
    finally:
        await c.close()
    assert fake.hits["/pods"] == 3
    assert len(first.pods) == 24 and changed.pods == ()
