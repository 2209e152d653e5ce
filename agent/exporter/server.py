"""aiohttp HTTP server: /metrics, /healthz, /readyz, /status and a landing page.

Started by agent.runtime.daemon. Everything is read-only (GET/HEAD; other methods get 405), so
nothing writable is exposed. /metrics serves the bytes rendered once per tick (gzip when the client
accepts it; the text is kept compressed and decompressed in a worker thread for one that does
not). Requests beyond ``max_in_flight`` get 503 at once instead of queueing, and request
bodies and header sizes are capped, so a hostile or buggy client cannot exhaust the agent.
/healthz and /readyz are exempt from the in-flight limit (they cost nothing and must not lie).
Open connections are capped too (``max_connections``): aiohttp never times out a connection that
has not finished sending its headers, so idle or slowloris connections would otherwise pile up
until the process runs out of file descriptors (and then cannot read cgroups or reach the API).
At the cap the oldest connection is closed gracefully to make room (a probe still gets in); at
twice the cap new connections get 503 and are closed. Tracebacks aiohttp logs for malformed
requests are rate-limited to one a minute so a client cannot flood the journal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from aiohttp import web

from agent import __version__
from agent.exporter.render import CONTENT_TYPE, Exposition
from agent.exporter.self_metrics import SelfMetrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (max open connections, called per refused connection), read by start_server.
_CONNECTION_CAP = web.AppKey("connection_cap", tuple[int, Callable[[], None]])


class AgentView(Protocol):
    """What the server needs from the running agent (agent.runtime.daemon.Agent implements it)."""

    def exposition(self) -> Exposition | None: ...
    def healthy(self) -> tuple[bool, str]: ...
    def ready(self) -> tuple[bool, str]: ...
    def status(self) -> dict[str, Any]: ...


_LANDING = """<html><head><title>nodemedic</title></head><body>
<h1>nodemedic {version}</h1>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li><li><a href="/status">/status</a></li></ul>
</body></html>
"""


def build_app(agent: AgentView, metrics: SelfMetrics, max_in_flight: int = 64) -> web.Application:
    """Build the aiohttp application serving ``agent``."""
    in_flight = 0

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        # Health probes cost nothing and must stay truthful under load: a probe refused with
        # 503 would make systemd or a prober declare a busy but healthy agent dead.
        if request.path in ("/healthz", "/readyz"):
            return await handler(request)
        if in_flight >= max_in_flight:
            metrics.http_rejected.inc()
            return web.Response(status=503, text="too many requests in flight\n")
        in_flight += 1
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            metrics.http_requests.labels(_handler_name(request), str(exc.status)).inc()
            raise
        finally:
            in_flight -= 1
        metrics.http_requests.labels(_handler_name(request), str(resp.status)).inc()
        return resp

    async def handle_metrics(request: web.Request) -> web.Response:
        exp = agent.exposition()
        if exp is None:
            return web.Response(status=503, text="no collection finished yet\n")
        accept = request.headers.get("Accept-Encoding", "")
        if "gzip" in accept.lower():
            return web.Response(
                body=exp.gzipped,
                headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip",
                         "Vary": "Accept-Encoding"},
            )
        text = await asyncio.to_thread(lambda: exp.text)  # kept gzipped: decompress off-loop
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE,
                                                "Vary": "Accept-Encoding"})

    async def handle_healthz(_: web.Request) -> web.Response:
        ok, why = agent.healthy()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def handle_readyz(_: web.Request) -> web.Response:
        ok, why = agent.ready()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def handle_status(_: web.Request) -> web.Response:
        body = json.dumps(agent.status(), indent=2, sort_keys=True, default=str)
        return web.Response(text=body + "\n", content_type="application/json")

    async def handle_landing(_: web.Request) -> web.Response:
        return web.Response(text=_LANDING.format(version=__version__), content_type="text/html")

    # No request body is ever needed: 1 KiB is plenty and refuses floods early.
    app = web.Application(middlewares=[guard], client_max_size=1024)
    app[_CONNECTION_CAP] = (max_in_flight, metrics.http_rejected.inc)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/status", handle_status)
    app.router.add_get("/", handle_landing)
    return app


def _handler_name(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "other"
    path = resource.canonical
    return path if path in ("/metrics", "/healthz", "/readyz", "/status", "/") else "other"


class _RateLimit(logging.Filter):
    """Let one record through per ``every`` seconds; say how many were dropped meanwhile."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self.dropped = 0
        self._last = -every

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            self.dropped += 1
            return False
        self._last = now
        if self.dropped:
            record.msg = f"{record.msg} ({self.dropped} similar records dropped)"
            self.dropped = 0
        return True


_PROTOCOL_LOG = logging.getLogger("nodemedic.http.protocol")
_PROTOCOL_LOG.addFilter(_RateLimit())


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: for connections beyond twice the cap."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n")
        t.close()


class _ConnectionCap:
    """Protocol factory in front of aiohttp's web.Server that bounds open connections.

    web.Server.connections lists live connections oldest first. To make room the oldest is
    first asked to close after its current request (RequestHandler.close()); one still open
    when room is needed again is closed at once (force_close(): a connection that never sent a
    full request ignores close())."""

    def __init__(self, server: web.Server, limit: int, on_refuse: Callable[[], None]) -> None:
        self.server = server
        self.limit = max(1, limit)
        self.on_refuse = on_refuse
        self._asked: set[Any] = set()

    def __call__(self) -> asyncio.BaseProtocol:
        conns = self.server.connections
        if len(conns) >= 2 * self.limit:
            self.on_refuse()
            return _Refuse()
        excess = len(conns) - self.limit + 1
        if excess > 0:
            live = set(conns)
            self._asked &= live
            for handler in conns[:excess]:
                if handler in self._asked:
                    handler.force_close()
                    self._asked.discard(handler)
                else:
                    handler.close()
                    self._asked.add(handler)
        elif self._asked:
            self._asked.clear()
        return self.server()

    def __getattr__(self, name: str) -> Any:  # the runner's shutdown calls reach the server
        return getattr(self.server, name)


async def start_server(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Start serving; return the runner (for cleanup) and the bound port (useful with port 0).

    An app from build_app also gets its connection cap (the same --web.max-connections)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=2.0, keepalive_timeout=30.0, logger=_PROTOCOL_LOG)
    await runner.setup()
    cap = app.get(_CONNECTION_CAP)
    if cap is not None and runner.server is not None:
        # TCPSite uses runner.server as its protocol factory; aiohttp has no public hook here.
        runner._server = cast(web.Server, _ConnectionCap(runner.server, *cap))
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = port
    server = site._server  # aiohttp has no public accessor for the bound port
    sockets = getattr(server, "sockets", None)
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    return runner, bound
