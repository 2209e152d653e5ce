"""aiohttp HTTP server: /metrics, /healthz, /readyz, /status and a landing page.

Started by agent.runtime.daemon. Everything is read-only (GET/HEAD; other methods get 405), so
nothing writable is exposed. /metrics serves the bytes rendered once per tick (gzip when the client
accepts it). Requests beyond ``max_in_flight`` get 503 at once instead of queueing, and request
bodies and header sizes are capped, so a hostile or buggy client cannot exhaust the agent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from agent import __version__
from agent.exporter.render import CONTENT_TYPE, Exposition
from agent.exporter.self_metrics import SelfMetrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        return web.Response(body=exp.text, headers={"Content-Type": CONTENT_TYPE,
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


async def start_server(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Start serving; return the runner (for cleanup) and the bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=2.0, keepalive_timeout=30.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = port
    server = site._server  # aiohttp has no public accessor for the bound port
    sockets = getattr(server, "sockets", None)
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    return runner, bound
