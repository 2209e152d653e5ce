"""A fake kubelet on loopback serving captured fixture files, for tests, the demo and benchmarks.

Serves /healthz, /pods, /stats/summary, /metrics, /metrics/cadvisor and /metrics/resource from a
fixture directory (the files under tests/fixtures/kubelet/ by default names), over HTTP or HTTPS,
optionally requiring a bearer token like the kubelet's authenticated port. Switches make /healthz
fail, hang or answer garbage, and any path can be overridden, slowed down or made to stream a huge
body, so the ``kubelet`` collector and ``KubeletClient`` can be tested against every failure a
real kubelet shows. Request counts per path are kept in ``hits``. ``python -m
nodemedic_sim.fake_kubelet`` serves the fixtures from the command line (demo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

HealthzMode = Literal["ok", "fail", "hang", "garbage"]

# Path -> fixture file name in the fixture directory.
DEFAULT_FILES: dict[str, tuple[str, str]] = {
    "/pods": ("pods_minikube_v1.35.json", "application/json"),
    "/stats/summary": ("stats_summary_minikube_v1.35.json", "application/json"),
    "/metrics": ("metrics_kubelet_eks_v1.21_subset.txt", "text/plain; version=0.0.4"),
    "/metrics/cadvisor": (
        "metrics_cadvisor_minikube_v1.35_trimmed.txt",
        "text/plain; version=0.0.4",
    ),
    "/metrics/resource": ("metrics_resource_kind_v1.21.txt", "text/plain; version=0.0.4"),
}


@dataclass
class Override:
    """A canned answer for one path (replaces the fixture file)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


class FakeKubelet:
    """Start with ``await fk.start()`` (returns the base URL), stop with ``await fk.stop()``."""

    def __init__(
        self,
        fixture_dir: Path,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        files: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.fixture_dir = fixture_dir
        self.token = token
        self.ssl_context = ssl_context
        self.files = dict(DEFAULT_FILES if files is None else files)
        self.healthz_mode: HealthzMode = "ok"
        self.overrides: dict[str, Override] = {}
        self.delays: dict[str, float] = {}  # path -> seconds to wait before answering
        self.stream_bytes: dict[str, int] = {}  # path -> stream this many bytes, no length
        self.hits: Counter[str] = Counter()
        self._cache: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()  # set on stop() to end hanging handlers
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        auth = request.headers.get("Authorization")
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized")
        if path in self.delays:
            await self._wait(self.delays[path])
        if path in self.stream_bytes:
            return await self._stream(request, self.stream_bytes[path])
        if path in self.overrides:
            o = self.overrides[path]
            return web.Response(status=o.status, body=o.body, content_type=o.content_type)
        if path == "/healthz":
            return await self._healthz()
        if path not in self.files:
            return web.Response(status=404, text="404 page not found")
        name, ctype = self.files[path]
        if name not in self._cache:
            self._cache[name] = await asyncio.to_thread((self.fixture_dir / name).read_bytes)
        return web.Response(body=self._cache[name], headers={"Content-Type": ctype})

    async def _healthz(self) -> web.Response:
        if self.healthz_mode == "fail":
            # The kubelet's failure format (healthz.go): failed checks listed, reason withheld.
            return web.Response(
                status=500, text="[-]syncloop failed: reason withheld\nhealthz check failed"
            )
        if self.healthz_mode == "hang":
            await self._wait(3600)
        if self.healthz_mode == "garbage":
            return web.Response(status=200, body=b"\x00\xffnot-a-health-answer\x1b[0m")
        return web.Response(text="ok")

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), timeout=seconds)

    async def _stream(self, request: web.Request, total: int) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length for the client to check first
        resp.content_type = "application/json"
        await resp.prepare(request)
        chunk = b" " * 65536
        sent = 0
        try:
            while sent < total:
                n = min(len(chunk), total - sent)
                await resp.write(chunk[:n])
                sent += n
        except (ConnectionResetError, ConnectionError):
            return resp  # the client gave up, as it should past its size limit
        await resp.write_eof()
        return resp

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port) and return the base URL."""
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._release.clear()
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        bound = self._runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def make_self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a self-signed serving certificate for ``host`` (an IP SAN) and its key.

    Returns (cert.pem, key.pem); the certificate is also its own CA for the client's
    ``--kubelet.ca-file``. Needs the ``cryptography`` package (a test dependency only).
    """
    # Imported here: cryptography is a test dependency, not a runtime one.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fake-kubelet@{host}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for :class:`FakeKubelet` from PEM files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _serve(args: argparse.Namespace) -> None:
    ctx = None
    if args.tls_dir is not None:
        args.tls_dir.mkdir(parents=True, exist_ok=True)
        cert, key = make_self_signed_cert(args.tls_dir, args.host)
        ctx = server_ssl_context(cert, key)
    fk = FakeKubelet(args.fixtures, token=args.token, ssl_context=ctx)
    fk.healthz_mode = args.healthz
    print(await fk.start(args.host, args.port), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fk.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m nodemedic_sim.fake_kubelet``: serve fixtures until interrupted (demo use)."""
    parser = argparse.ArgumentParser(description="Serve captured kubelet fixtures on loopback.")
    parser.add_argument("--fixtures", type=Path, default=Path("tests/fixtures/kubelet"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="serve HTTPS with a self-signed cert written here (kubelet.crt)",
    )
    parser.add_argument("--healthz", choices=["ok", "fail", "hang", "garbage"], default="ok")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
