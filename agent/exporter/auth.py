"""Who may read the HTTP endpoints: the web config's basic auth, headers, rate limit and client
certificate SANs, plus the optional Kubernetes token check (agent.exporter.kubeauth).

Installed by agent.runtime.daemon as one aiohttp middleware (:meth:`Protection.middleware`) after
the server's own in-flight guard, so every check is bounded by ``--web.max-connections``. The
order follows the exporter toolkit's handler: rate limit (429), security headers on every
response, then basic auth (401 with ``WWW-Authenticate: Basic``). ``client_allowed_sans`` is
checked on the connection's verified certificate (403 and the connection closed). With
``--web.kubernetes-auth`` a bearer token is then required (401 without or with an unknown one,
403 when RBAC does not allow the request).

/healthz and /readyz stay open to local probes: from a loopback address they skip
authentication and the rate limit (TLS, being per connection, still applies on the main
listener); ``--web.probe-address`` serves just those two over plain HTTP (:meth:`probes_only`).

Passwords: bcrypt (the ``bcrypt`` package) in a worker thread, one at a time (bcrypt is CPU-bound
by design), unknown users checked against a fixed hash so timing does not reveal which users
exist, results cached by a SHA-256 of user, hash and password (the toolkit's cache, without
keeping the password).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import bcrypt
from aiohttp import web

from agent.exporter.tlsctx import peer_sans
from agent.exporter.webconfig import WebConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBES = ("/healthz", "/readyz")
# The exporter toolkit's stand-in hash (of "fakepassword") for users that do not exist.
_FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
_CACHE_SIZE = 100


class Authorizer(Protocol):
    """The Kubernetes token check (agent.exporter.kubeauth.KubeAuthorizer implements it)."""

    async def check(self, authorization: str | None, path: str) -> tuple[int, str]: ...


def is_loopback(remote: str | None) -> bool:
    """Whether the peer address is loopback (127.0.0.0/8, ::1, ::ffff:127.x)."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class TokenBucket:
    """golang.org/x/time/rate's Limiter(Every(interval), burst).Allow()."""

    def __init__(self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.interval, self.burst, self.clock = interval, burst, clock
        self.tokens = float(burst)
        self.last = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) / self.interval)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class BasicAuthChecker:
    """basic_auth_users with bcrypt, as the toolkit checks them (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._cache: OrderedDict[str, bool] = OrderedDict()

    async def check(self, users: dict[str, str], header: str | None) -> bool:
        if not header:
            return False
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:  # as Go's Request.BasicAuth: standard base64, split at the first colon
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
        except (ValueError, binascii.Error):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        hashed = users.get(user)
        known = hashed is not None
        want = hashed.encode() if hashed is not None else _FAKE_HASH
        key = hashlib.sha256(b"\0".join(
            (user.encode("latin-1", "replace"), want, password.encode("latin-1", "replace"))
        )).hexdigest()
        ok = self._cache.get(key)
        if ok is None:
            async with self._lock:
                ok = await asyncio.to_thread(
                    bcrypt.checkpw, password.encode("latin-1", "replace"), want
                )
            self._cache[key] = ok
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return ok and known


class Protection:
    """The current protection settings; ``update`` swaps them on reload (all or nothing)."""

    def __init__(self, config: WebConfig, kube: Authorizer | None = None) -> None:
        self.kube = kube
        self._basic = BasicAuthChecker()
        self.config = config
        self._limiter: TokenBucket | None = None
        self.update(config)

    def update(self, config: WebConfig) -> None:
        rl = config.rate_limit
        limiter = TokenBucket(rl.interval, rl.burst) if rl.interval > 0 else None
        self.config, self._limiter = config, limiter

    def _headers(self, headers: Any) -> None:
        for name, value in self.config.http_server_config.headers.items():
            if value:
                headers[name] = value

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """The response refusing ``request``, or None when it may proceed."""
        cfg = self.config
        if self._limiter is not None and not self._limiter.allow():
            return web.Response(status=429, text="Too Many Requests\n")
        allowed = cfg.tls_server_config.client_allowed_sans
        if allowed is not None and request.transport is not None:
            sans = peer_sans(request.transport.get_extra_info("peercert"))
            if not set(sans) & set(allowed):
                return web.Response(status=403, text="client certificate SAN not allowed\n",
                                    headers={"Connection": "close"})
        if cfg.basic_auth_users and not await self._basic.check(
            cfg.basic_auth_users, request.headers.get("Authorization")
        ):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={"WWW-Authenticate": "Basic"})
        if self.kube is not None:
            status, why = await self.kube.check(request.headers.get("Authorization"),
                                                request.path)
            if status != 200:
                extra = {"WWW-Authenticate": 'Bearer realm="nodemedic"'} if status == 401 else {}
                return web.Response(status=status, text=why + "\n", headers=extra)
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        local_probe = request.path in PROBES and is_loopback(request.remote)
        refusal = None if local_probe else await self._refusal(request)
        if refusal is not None:
            self._headers(refusal.headers)
            return refusal
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            self._headers(exc.headers)
            raise
        self._headers(resp.headers)
        return resp


@web.middleware
async def probes_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For the ``--web.probe-address`` listener: /healthz and /readyz, nothing else."""
    if request.path not in PROBES:
        return web.Response(status=404, text="only /healthz and /readyz are served here\n")
    return await handler(request)
