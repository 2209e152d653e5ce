"""TLS for the HTTP server from a web config's ``tls_server_config``, with certificate rotation.

Used by agent.exporter.webfront (the listener's ``ssl_context``). The exporter toolkit re-reads the
certificate and key on every handshake (Go's ``GetConfigForClient``); here the server gets one
:class:`RotatingContext` whose ``wrap_bio`` (what asyncio calls for each accepted connection)
hands the connection to an inner ``ssl.SSLContext`` rebuilt whenever the cert, key or client CA
file changed on disk (checked at most once a second) or the web config was reloaded. A rotation
that fails to load (half-written key, mismatched pair) keeps serving the last good certificate and
says so in the log.

``client_auth_type`` with Python's ssl module: NoClientCert and RequestClientCert request no
certificate (nothing in nodemedic reads an unverified one, so the two behave alike);
VerifyClientCertIfGiven = CERT_OPTIONAL; RequireAndVerifyClientCert = CERT_REQUIRED (client CA
from client_ca_file / client_ca, else the system roots, as Go does). RequireAnyClientCert (any
certificate, never verified) cannot be expressed without a verify callback, which Python's ssl
lacks: it is refused with a clear error rather than silently weakened or tightened.
``curve_preferences``: Python's ssl sets one curve, so the first listed is the only one offered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
import tempfile
import time
from typing import Any

import structlog

from agent.exporter.webconfig import CIPHER_SUITES, CURVES, TLSServerConfig, WebConfigError

log = structlog.get_logger("nodemedic.tls")

_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_NONE,
           "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
           "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
CHECK_EVERY_SECONDS = 1.0


def _load_chain(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    """Load the certificate and key (files, or inline PEM through a private temporary file)."""
    with contextlib.ExitStack() as stack:
        paths: list[str] = []
        for path, inline in ((tls.cert_file, tls.cert), (tls.key_file, tls.key)):
            if path:
                paths.append(path)
                continue
            tmp = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".pem"))
            tmp.write(inline)  # NamedTemporaryFile is created mode 0600
            tmp.flush()
            paths.append(tmp.name)
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        except OSError as exc:
            raise WebConfigError(
                f"tls_server_config: cannot load the certificate and key "
                f"({tls.cert_file or 'cert'}, {tls.key_file or 'key'}): {exc.strerror or exc}"
            ) from exc


def build_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A server SSLContext for ``tls`` (reads the files now); raise WebConfigError."""
    auth = tls.client_auth_type or "NoClientCert"
    if auth == "RequireAnyClientCert":
        raise WebConfigError(
            "tls_server_config.client_auth_type: RequireAnyClientCert (accept any certificate "
            "without verifying it) is not supported by nodemedic; use RequireAndVerifyClientCert "
            "with client_ca_file"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    names = [n for n in (CIPHER_SUITES[c] for c in tls.cipher_suites) if n]
    try:
        if names:
            ctx.set_ciphers(":".join(names))
        if tls.curve_preferences:
            ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
    except (ssl.SSLError, ValueError) as exc:
        raise WebConfigError(f"tls_server_config: OpenSSL refuses the ciphers/curves: {exc}") \
            from exc
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])  # aiohttp serves HTTP/1.1 only (see docs/security.md)
    _load_chain(ctx, tls)
    ctx.verify_mode = _VERIFY[auth]
    if ctx.verify_mode != ssl.CERT_NONE:
        try:
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            elif tls.client_ca:
                ctx.load_verify_locations(cadata=tls.client_ca)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"tls_server_config: cannot load the client CA "
                f"{tls.client_ca_file or '(client_ca)'}: {getattr(exc, 'strerror', None) or exc}"
            ) from exc
    return ctx


def _fingerprint(tls: TLSServerConfig) -> tuple[Any, ...]:
    out: list[Any] = []
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        if not path:
            out.append(None)
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            out.append(("missing", exc.errno))
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class RotatingContext(ssl.SSLContext):
    """The SSLContext given to the listener; every connection gets the current inner context."""

    _tls: TLSServerConfig
    _inner: ssl.SSLContext
    _seen: tuple[Any, ...]
    _checked: float
    rotations: int

    def __new__(cls, tls: TLSServerConfig) -> RotatingContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)

    def __init__(self, tls: TLSServerConfig) -> None:
        self.rotations = 0
        self.install(tls, build_context(tls))

    def install(self, tls: TLSServerConfig, inner: ssl.SSLContext) -> None:
        """Serve new connections with ``inner`` (built from ``tls`` by build_context)."""
        self._tls, self._inner = tls, inner
        self._seen = _fingerprint(tls)
        self._checked = time.monotonic()

    def current(self) -> ssl.SSLContext:
        """The inner context, rebuilt first if a file changed since the last check."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_SECONDS:
            return self._inner
        self._checked = now
        seen = _fingerprint(self._tls)
        if seen != self._seen:
            self._seen = seen
            try:
                self._inner = build_context(self._tls)
            except WebConfigError as exc:
                log.error("tls_rotation_failed_keeping_last_good_certificate", error=str(exc))
            else:
                self.rotations += 1
                log.info("tls_certificate_reloaded", cert_file=self._tls.cert_file)
        return self._inner

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,  # type: ignore[override]
                 server_side: bool = False, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self.current().wrap_bio(incoming, outgoing, server_side=server_side,
                                       server_hostname=server_hostname, session=session)


def peer_sans(peercert: dict[str, Any] | None) -> list[str]:
    """The client certificate's SANs as the toolkit compares them: DNS names, e-mail addresses,
    IP addresses (Go's net.IP.String form) and URIs."""
    out: list[str] = []
    for kind, value in (peercert or {}).get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                out.append(str(ipaddress.ip_address(value.strip())))
            except ValueError:
                out.append(value)
        elif kind in ("DNS", "email", "URI"):
            out.append(value)
    return out
