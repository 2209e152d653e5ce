"""The protected HTTP server as clients meet it: basic auth, TLS with client certificates,
certificate rotation, security headers, rate limit, the probe listener and reloads."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from agent.exporter.render import Exposition, Renderer
from agent.exporter.self_metrics import SelfMetrics
from agent.exporter.server import HEADER_TIMEOUT
from agent.exporter.tlsctx import CHECK_EVERY_SECONDS
from agent.exporter.webconfig import WebConfigError
from agent.exporter.webfront import WebFront, read_config
from agent.settings import Settings, settings_for_tests
from tests.pki import Pki, bcrypt_hash


class FakeAgent:
    def __init__(self) -> None:
        self.renderer = Renderer(CollectorRegistry(auto_describe=False), list)
        self.renderer.render()

    async def exposition(self) -> Exposition | None:
        return self.renderer.latest

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {"node": "n1"}


class Served:
    def __init__(self, front: WebFront, runner: aiohttp.web.AppRunner, port: int) -> None:
        self.front, self.runner, self.port = front, runner, port

    def url(self, path: str) -> str:
        return f"{self.front.scheme}://127.0.0.1:{self.port}{path}"


async def serve(settings: Settings) -> Served:
    front = await WebFront.create(settings, lambda: None)
    runner, port = await front.serve(FakeAgent(), SelfMetrics(CollectorRegistry()),
                                     "127.0.0.1", 0, 16)
    return Served(front, runner, port)


@pytest.fixture
async def stack() -> AsyncIterator[list[Served]]:
    served: list[Served] = []
    yield served
    for s in served:
        await s.runner.cleanup()
        await s.front.stop()


def client_ctx(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def get(url: str, ssl_ctx: ssl.SSLContext | None = None,
              auth: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession() as s, \
            s.get(url, ssl=ssl_ctx or False, headers=headers) as r:
        await r.read()
        return r.status, dict(r.headers)


def write(tmp: Path, text: str) -> Path:
    p = tmp / "web.yml"
    p.write_text(text)
    return p


async def test_basic_auth_headers_and_local_probes(tmp_path: Path, stack: list[Served]) -> None:
    """Right password 200 with the configured headers; wrong password or unknown user 401 with
    WWW-Authenticate: Basic; /healthz from loopback needs no password, /status does."""
    cfg = write(tmp_path, f"basic_auth_users:\n  prom: {bcrypt_hash('s3cret')}\n"
                "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    srv = await serve(settings_for_tests(web_config_file=cfg))
    stack.append(srv)
    status, headers = await get(srv.url("/metrics"), auth=basic("prom", "s3cret"))
    assert status == 200 and headers["X-Frame-Options"] == "deny"
    for auth in (basic("prom", "wrong"), basic("eve", "s3cret"), None):
        status, headers = await get(srv.url("/status"), auth=auth)
        assert status == 401 and headers["WWW-Authenticate"] == "Basic"
        assert headers["X-Frame-Options"] == "deny"
    assert (await get(srv.url("/healthz")))[0] == 200
    assert (await get(srv.url("/readyz")))[0] == 200


async def test_rate_limit_answers_429(tmp_path: Path, stack: list[Served]) -> None:
    """rate_limit interval 1h, burst 2: the third request in a row is refused."""
    cfg = write(tmp_path, "rate_limit:\n  interval: 1h\n  burst: 2\n")
    srv = await serve(settings_for_tests(web_config_file=cfg))
    stack.append(srv)
    codes = [(await get(srv.url("/metrics")))[0] for _ in range(3)]
    assert codes == [200, 200, 429]


def tls_config(pki: Pki, extra: str = "") -> str:
    return (f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
            + extra)


async def test_client_certificate_required_and_verified(tmp_path: Path,
                                                        stack: list[Served]) -> None:
    """RequireAndVerifyClientCert: the CA's client gets in; no certificate or one from another
    CA fails the handshake (no HTTP status at all)."""
    pki = Pki(tmp_path / "pki")
    srv = await serve(settings_for_tests(web_config_file=write(tmp_path, tls_config(pki))))
    stack.append(srv)
    assert srv.url("/").startswith("https://")
    ok = client_ctx(pki, pki.client.cert, pki.client.key)
    assert (await get(srv.url("/metrics"), ok))[0] == 200
    for ctx in (client_ctx(pki), client_ctx(pki, pki.stranger.cert, pki.stranger.key)):
        with pytest.raises(aiohttp.ClientError):
            await get(srv.url("/metrics"), ctx)


async def test_a_tls_handshake_never_finished_is_closed(tmp_path: Path,
                                                       stack: list[Served]) -> None:
    """A client that connects to the TLS listener and never sends its ClientHello is cut off
    after the header timeout, not asyncio's 60 s default (a handshake in progress is invisible
    to the connection limits)."""
    pki = Pki(tmp_path / "pki")
    srv = await serve(settings_for_tests(web_config_file=write(tmp_path, tls_config(pki))))
    stack.append(srv)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        start = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(1), HEADER_TIMEOUT + 10) == b""
        assert asyncio.get_running_loop().time() - start < HEADER_TIMEOUT + 10
    finally:
        writer.close()


async def test_client_allowed_sans(tmp_path: Path, stack: list[Served]) -> None:
    """client_allowed_sans: a verified certificate without an allowed SAN is refused."""
    pki = Pki(tmp_path / "pki")
    other = pki.issue_client("other", [x509.DNSName("grafana")])
    cfg = write(tmp_path, tls_config(pki, "  client_allowed_sans: [spiffe://test/prometheus]\n"))
    srv = await serve(settings_for_tests(web_config_file=cfg))
    stack.append(srv)
    assert (await get(srv.url("/metrics"), client_ctx(pki, pki.client.cert, pki.client.key)))[0] \
        == 200
    assert (await get(srv.url("/metrics"), client_ctx(pki, other.cert, other.key)))[0] == 403


async def test_certificate_rotation_on_disk(tmp_path: Path, stack: list[Served]) -> None:
    """A new cert/key written over the files is served to the next connection; a broken one
    keeps the last good certificate in service."""
    pki = Pki(tmp_path / "pki")
    cfg = write(tmp_path, f"tls_server_config:\n  cert_file: {pki.server.cert}\n"
                f"  key_file: {pki.server.key}\n")
    srv = await serve(settings_for_tests(web_config_file=cfg))
    stack.append(srv)
    ctx = client_ctx(pki)

    async def serial() -> int:
        _, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return int(x509.load_der_x509_certificate(der).serial_number)

    assert await serial() == pki.server.serial
    new = pki.issue_server("server2")
    shutil.copy(new.key, pki.server.key)
    shutil.copy(new.cert, pki.server.cert)
    await asyncio.sleep(CHECK_EVERY_SECONDS + 0.1)
    assert await serial() == new.serial
    pki.server.key.write_text("-----BEGIN PRIVATE KEY-----\nhalf written\n")
    await asyncio.sleep(CHECK_EVERY_SECONDS + 0.1)
    assert await serial() == new.serial


async def test_reload_is_all_or_nothing(tmp_path: Path, stack: list[Served]) -> None:
    """A bad file on reload raises and changes nothing; a good one replaces the users."""
    cfg = write(tmp_path, f"basic_auth_users:\n  a: {bcrypt_hash('one')}\n")
    settings = settings_for_tests(web_config_file=cfg)
    srv = await serve(settings)
    stack.append(srv)
    cfg.write_text("basic_auth_users:\n  a: one\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.a: not a bcrypt hash"):
        await srv.front.prepare(settings)
    assert (await get(srv.url("/metrics"), auth=basic("a", "one")))[0] == 200
    cfg.write_text(f"basic_auth_users:\n  a: {bcrypt_hash('two')}\n")
    srv.front.commit(settings, await srv.front.prepare(settings))
    assert (await get(srv.url("/metrics"), auth=basic("a", "one")))[0] == 401
    assert (await get(srv.url("/metrics"), auth=basic("a", "two")))[0] == 200


async def test_reload_refuses_to_turn_tls_on_or_off(tmp_path: Path, stack: list[Served]) -> None:
    """A reload cannot change the listener's transport: adding TLS to a plain listener is refused
    (the whole reload fails, the running users stay) instead of applying the rest of the file
    while the socket stays plain HTTP."""
    pki = Pki(tmp_path / "pki")
    cfg = write(tmp_path, f"basic_auth_users:\n  a: {bcrypt_hash('one')}\n")
    settings = settings_for_tests(web_config_file=cfg)
    srv = await serve(settings)
    stack.append(srv)
    cfg.write_text(tls_config(pki) + f"basic_auth_users:\n  a: {bcrypt_hash('two')}\n")
    with pytest.raises(WebConfigError, match="turning TLS on needs a restart"):
        await srv.front.prepare(settings)
    assert (await get(srv.url("/metrics"), auth=basic("a", "one")))[0] == 200


async def test_probe_address_serves_only_probes(tmp_path: Path, stack: list[Served]) -> None:
    """--web.probe-address: plain HTTP, /healthz and /readyz without auth, nothing else."""
    pki = Pki(tmp_path / "pki")
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = settings_for_tests(web_config_file=write(tmp_path, tls_config(pki)),
                                  web_probe_address=f"127.0.0.1:{port}")
    srv = await serve(settings)
    stack.append(srv)
    assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
    assert (await get(f"http://127.0.0.1:{port}/readyz"))[0] == 200
    assert (await get(f"http://127.0.0.1:{port}/metrics"))[0] == 404


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """RequireAnyClientCert, basic auth together with Kubernetes auth, and TLS with failover but
    no plain probe address are refused with one line, before anything listens."""
    pki = Pki(tmp_path / "pki")
    any_cert = write(tmp_path, tls_config(pki).replace("RequireAndVerifyClientCert",
                                                       "RequireAnyClientCert"))
    with pytest.raises(WebConfigError, match=r"RequireAnyClientCert .* not supported"):
        read_config(settings_for_tests(web_config_file=any_cert))
    both = write(tmp_path, f"basic_auth_users:\n  a: {bcrypt_hash('x')}\n")
    with pytest.raises(WebConfigError, match="choose one"):
        read_config(settings_for_tests(web_config_file=both, web_kubernetes_auth=True))
    tls = write(tmp_path, tls_config(pki))
    with pytest.raises(WebConfigError, match=r"needs --web\.probe-address"):
        read_config(settings_for_tests(web_config_file=tls, failover_enabled=True))
    missing = write(tmp_path, tls_config(pki).replace(str(pki.server.key), "/nonexistent.key"))
    with pytest.raises(WebConfigError, match="cannot load the certificate and key"):
        read_config(settings_for_tests(web_config_file=missing))


async def test_reload_swaps_the_client_ca(tmp_path: Path, stack: list[Served]) -> None:
    """SIGHUP with a new client_ca_file: the next connection is verified against the new CA."""
    pki = Pki(tmp_path / "pki")
    cfg = write(tmp_path, tls_config(pki))
    settings = settings_for_tests(web_config_file=cfg)
    srv = await serve(settings)
    stack.append(srv)
    mine = client_ctx(pki, pki.client.cert, pki.client.key)
    theirs = client_ctx(pki, pki.stranger.cert, pki.stranger.key)
    assert (await get(srv.url("/metrics"), mine))[0] == 200
    cfg.write_text(tls_config(pki).replace(f"client_ca_file: {pki.ca}",
                                           f"client_ca_file: {pki.other_ca}"))
    srv.front.commit(settings, await srv.front.prepare(settings))
    assert (await get(srv.url("/metrics"), theirs))[0] == 200
    with pytest.raises(aiohttp.ClientError):
        await get(srv.url("/metrics"), mine)


async def test_inline_certificate_key_and_client_ca(tmp_path: Path, stack: list[Served]) -> None:
    """The toolkit's inline variants (cert, key, client_ca as PEM strings) serve like files."""

    def block(p: Path) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in p.read_text().splitlines())

    pki = Pki(tmp_path / "pki")
    cfg = write(tmp_path, f"tls_server_config:\n  cert: {block(pki.server.cert)}"
                f"  key: {block(pki.server.key)}"
                f"  client_auth_type: RequireAndVerifyClientCert\n"
                f"  client_ca: {block(pki.ca)}")
    srv = await serve(settings_for_tests(web_config_file=cfg))
    stack.append(srv)
    assert (await get(srv.url("/metrics"), client_ctx(pki, pki.client.cert, pki.client.key)))[0] \
        == 200
    with pytest.raises(aiohttp.ClientError):
        await get(srv.url("/metrics"), client_ctx(pki, pki.stranger.cert, pki.stranger.key))


async def test_min_version_and_cipher_suites_are_enforced(tmp_path: Path,
                                                          stack: list[Served]) -> None:
    """min_version TLS13 refuses a TLS 1.2 client; with max TLS12 and one cipher suite, a client
    offering only another suite is refused and one offering it gets in."""
    pki = Pki(tmp_path / "pki")
    base = f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
    srv = await serve(settings_for_tests(web_config_file=write(tmp_path, base
                                                               + "  min_version: TLS13\n")))
    stack.append(srv)
    old = client_ctx(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(aiohttp.ClientError):
        await get(srv.url("/metrics"), old)
    assert (await get(srv.url("/metrics"), client_ctx(pki)))[0] == 200
    (tmp_path / "b").mkdir()
    srv2 = await serve(settings_for_tests(web_config_file=write(
        tmp_path / "b", base + "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n")))
    stack.append(srv2)
    for suite, ok in (("ECDHE-ECDSA-AES128-GCM-SHA256", False),
                      ("ECDHE-ECDSA-AES256-GCM-SHA384", True)):
        ctx = client_ctx(pki)
        ctx.set_ciphers(suite)
        if ok:
            assert (await get(srv2.url("/metrics"), ctx))[0] == 200
        else:
            with pytest.raises(aiohttp.ClientError):
                await get(srv2.url("/metrics"), ctx)
