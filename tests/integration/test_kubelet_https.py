"""The kubelet collector over HTTPS with a bearer token, as on the kubelet's port 10250."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="cryptography is needed to make a test certificate")

from agent.collectors.base import CollectorContext
from agent.collectors.kubelet import KubeletCollector
from agent.settings import settings_for_tests
from agent.structs.metrics import Family
from agent.testing.fake_kubelet import (
    FakeKubelet,
    make_self_signed_cert,
    server_ssl_context,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubelet"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.fake-service-account-token"


@dataclass
class Tls:
    fake: FakeKubelet
    ca: Path
    token_file: Path


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[Tls]:
    cert, key = make_self_signed_cert(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    fk = FakeKubelet(FIXTURES, token=TOKEN, ssl_context=server_ssl_context(cert, key))
    await fk.start()
    try:
        yield Tls(fk, cert, token_file)
    finally:
        await fk.stop()


async def _collect(**settings: object) -> tuple[KubeletCollector, dict[str, Family]]:
    c = KubeletCollector(CollectorContext(settings_for_tests(collector_timeout=3.0, **settings)))
    try:
        fams = await c.collect()
    finally:
        await c.close()
    return c, {f.name: f for f in fams}


async def test_https_with_ca_and_token(tls: Tls) -> None:
    """With the right CA and token the collector reads every endpoint over HTTPS."""
    assert tls.fake.url.startswith("https://")
    _, fams = await _collect(
        kubelet_url=tls.fake.url, kubelet_ca_file=tls.ca, kubelet_token_file=tls.token_file
    )
    assert fams["nodemedic_kubelet_up"].get() == 1
    assert all(v == 1 for _, v in fams["nodemedic_kubelet_scrape_success"].series())
    assert fams["nodemedic_kubelet_node_memory_working_set_bytes"].get() == 917110784


async def test_wrong_token_is_reported_as_401(tls: Tls, tmp_path: Path) -> None:
    """A rejected token gives kubelet_up 0 and an error that names HTTP 401 and the token."""
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    c, fams = await _collect(
        kubelet_url=tls.fake.url, kubelet_ca_file=tls.ca, kubelet_token_file=bad
    )
    assert fams["nodemedic_kubelet_up"].get() == 0
    err = c.last_errors["healthz"] or ""
    assert "HTTP 401" in err and "token rejected" in err and "--kubelet.token-file" in err
    reqs = fams["nodemedic_kubelet_client_requests_total"]
    assert reqs.get(endpoint="stats_summary", outcome="unauthorized") == 1


async def test_unknown_ca_is_a_tls_error(tls: Tls) -> None:
    """Without the CA the self-signed kubelet certificate is refused with a TLS error."""
    c, fams = await _collect(kubelet_url=tls.fake.url, kubelet_token_file=tls.token_file)
    assert fams["nodemedic_kubelet_up"].get() == 0
    assert "TLS error" in (c.last_errors["healthz"] or "")
    assert tls.fake.hits["/healthz"] == 0  # nothing was sent to an unverified server


async def test_insecure_skip_verify(tls: Tls) -> None:
    """--kubelet.insecure-skip-verify accepts the unverified certificate."""
    _, fams = await _collect(
        kubelet_url=tls.fake.url,
        kubelet_token_file=tls.token_file,
        kubelet_insecure_skip_verify=True,
    )
    assert fams["nodemedic_kubelet_up"].get() == 1


async def test_plain_http_url(tmp_path: Path) -> None:
    """A plain http:// kubelet URL (read-only port style) works without TLS or token."""
    fk = FakeKubelet(FIXTURES)
    await fk.start()
    try:
        _, fams = await _collect(kubelet_url=fk.url)
    finally:
        await fk.stop()
    assert fams["nodemedic_kubelet_up"].get() == 1
    assert fams["nodemedic_kubelet_pods"].get(phase="Running") == 18
