"""The kubelet collector over HTTPS with a bearer token, as on the kubelet's port 10250."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="cryptography is needed to make a test certificate")

from agent.collectors.base import CannotSee, CollectorContext
from agent.collectors.kubelet import KubeletCollector
from agent.runtime.daemon import Agent
from agent.runtime.pipeline import Collection
from agent.settings import Settings, settings_for_tests
from agent.structs.metrics import Family
from nodemedic_sim.fake_kubelet import (
    FakeKubelet,
    Override,
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


async def test_wrong_token_is_missing_data_not_kubelet_down(tls: Tls, tmp_path: Path) -> None:
    """A rejected token (401) fails the collector with reason unauthorized: kubelet_up is not
    reported at all (a wrong token says nothing about the kubelet), and the error names HTTP 401
    and the token file."""
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    c = KubeletCollector(CollectorContext(settings_for_tests(
        collector_timeout=3.0, kubelet_url=tls.fake.url, kubelet_ca_file=tls.ca,
        kubelet_token_file=bad)))
    try:
        with pytest.raises(CannotSee) as exc:
            await c.collect()
    finally:
        await c.close()
    assert exc.value.reason == "unauthorized"
    err = c.last_errors["healthz"] or ""
    assert "HTTP 401" in err and "token rejected" in err and "--kubelet.token-file" in err
    assert "health is unknown" in str(exc.value)
    assert c.client.requests[("stats_summary", "unauthorized")] == 1


async def test_unknown_ca_is_missing_data_not_kubelet_down(tls: Tls) -> None:
    """Without the CA the self-signed kubelet certificate is refused: reason tls, no
    kubelet_up, and nothing was sent to the unverified server."""
    c = KubeletCollector(CollectorContext(settings_for_tests(
        collector_timeout=3.0, kubelet_url=tls.fake.url, kubelet_token_file=tls.token_file)))
    try:
        with pytest.raises(CannotSee) as exc:
            await c.collect()
    finally:
        await c.close()
    assert exc.value.reason == "tls"
    assert "--kubelet.ca-file" in (c.last_errors["healthz"] or "")
    assert tls.fake.hits["/healthz"] == 0  # nothing was sent to an unverified server


async def test_one_forbidden_endpoint_is_missing_data_for_its_metrics(tls: Tls) -> None:
    """/healthz answers but /stats/summary is 403 (RBAC without nodes/stats): kubelet_up is
    reported, and the summary's metrics are unreadable (missing data), not absent-as-healthy."""
    tls.fake.overrides["/stats/summary"] = Override(status=403, body=b"Forbidden")
    c = KubeletCollector(CollectorContext(settings_for_tests(
        collector_timeout=3.0, kubelet_url=tls.fake.url, kubelet_ca_file=tls.ca,
        kubelet_token_file=tls.token_file)))
    coll = Collection([c])
    try:
        snap = await coll.collect()
    finally:
        await coll.close()
    assert snap.families["nodemedic_kubelet_up"].get() == 1
    st = snap.collectors["kubelet"]
    assert st.ok and st.cannot_see == {"forbidden"}
    assert st.unreadable["nodemedic_kubelet_node_memory_working_set_bytes"] == "forbidden"
    assert not snap.has_data_for("nodemedic_kubelet_node_memory_working_set_bytes")
    assert snap.has_data_for("nodemedic_kubelet_up")
    assert snap.has_data_for("nodemedic_kubelet_pods")


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


async def test_agent_exports_why_it_cannot_see_the_kubelet(tls: Tls, tmp_path: Path) -> None:
    """The running agent with a wrong token: collector_success{kubelet} 0, no kubelet_up
    series, nodemedic_collector_cannot_read{reason="unauthorized"} 1, the failure counted with
    that reason, and /status naming it."""
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    off = {"cgroup": False, "host": False, "lbskew": False, "node": False, "kubelet": True}
    agent = Agent(Settings(  # type: ignore[call-arg]
        web_listen_address="127.0.0.1:0", rules_dir=tmp_path, collectors=off,
        collect_interval=3600, collector_timeout=3.0, kubelet_url=tls.fake.url,
        kubelet_ca_file=tls.ca, kubelet_token_file=bad,
    ))
    await agent.start()
    try:
        await agent.tick_once()
        exp = await agent.exposition()
        status = agent.status()
    finally:
        await agent.stop()
    assert exp is not None
    text = exp.text.decode()
    assert 'nodemedic_collector_success{collector="kubelet"} 0.0' in text
    assert "\nnodemedic_kubelet_up " not in text
    assert 'nodemedic_collector_cannot_read{collector="kubelet",reason="unauthorized"} 1.0' in text
    assert 'nodemedic_collector_cannot_read{collector="kubelet",reason="tls"} 0.0' in text
    assert ('nodemedic_collector_failures_total{collector="kubelet",reason="unauthorized"} 1.0'
            in text)
    kubelet = status["collectors"]["kubelet"]
    assert kubelet["reason"] == "unauthorized" and "HTTP 401" in kubelet["error"]


@pytest.mark.parametrize("broken", ["ca", "token"])
async def test_unloadable_ca_or_token_file_is_missing_data(
    tls: Tls, tmp_path: Path, broken: str
) -> None:
    """A --kubelet.ca-file that cannot be loaded, or a --kubelet.token-file that cannot be read,
    is our configuration: CannotSee (tls / unauthorized) naming the file, never kubelet_up 0."""
    ca = tmp_path / "no-such-ca.crt" if broken == "ca" else tls.ca
    token = tmp_path / "no-such-token" if broken == "token" else tls.token_file
    c = KubeletCollector(CollectorContext(settings_for_tests(
        collector_timeout=3.0, kubelet_url=tls.fake.url, kubelet_ca_file=ca,
        kubelet_token_file=token)))
    try:
        with pytest.raises(CannotSee) as exc:
            await c.collect()
    finally:
        await c.close()
    assert exc.value.reason == ("tls" if broken == "ca" else "unauthorized")
    assert str(ca if broken == "ca" else token) in str(exc.value)
