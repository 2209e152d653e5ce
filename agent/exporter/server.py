"""aiohttp HTTP server: /metrics, /healthz, /readyz, /status and a landing page.

Started by agent.exporter.webfront. Everything is read-only (GET/HEAD; other methods get 405), so
nothing writable is exposed. /metrics serves the last tick's bytes, rendered by the first scrape
after that tick and cached until the next one (gzip when the client accepts it; the text is kept
compressed and decompressed in a worker thread for one that does not). A 503 always means what
the endpoint says (/healthz: no tick lately; /readyz and /metrics: no collection yet); overload
is a 429 whose body starts with "overloaded:".
Requests beyond ``max_in_flight`` get that 429 at once instead of queueing; request bodies and
header sizes are capped (aiohttp's 8 KiB lines, 128 headers), so a hostile or buggy client cannot
exhaust the agent. /healthz and /readyz are exempt from the in-flight limit.
Connections are bounded as well (slowloris, idle floods; :class:`_Connections`): a request's
headers must be complete within HEADER_TIMEOUT of connecting or of the previous response; a new
connection gets GRACE to send them (a probe cannot be told from an attacker before); beyond
``max_connections`` in all or a quarter of it from one client (source IP), slow connections are
closed, the biggest holder's first, and at 4 x ``max_connections`` even fresh ones, so a probe
still gets in; only when every connection is busy handling a request is the new one refused
with the 429.
Tracebacks aiohttp logs for malformed requests are rate-limited to one a minute so a client cannot
flood the journal.
/healthz also carries the NTP-style receive and transmit times of the answer (wall clock, Unix
nanoseconds) in the RECEIVE_HEADER and TRANSMIT_HEADER headers, from which agent.peers.clockskew
estimates this node's clock offset against its peers; the body and status are unchanged."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent import __version__
from agent.exporter.render import CONTENT_TYPE, Exposition
from agent.exporter.self_metrics import SelfMetrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (max open connections, called per refused connection), read by start_server.
# A request's headers must be complete this long after connecting or after the previous
# response, or the connection is closed (_Admit's deadline, then aiohttp's keep-alive timer).
HEADER_TIMEOUT = 5.0
# A new connection's time to send its request headers before it may be closed to make room.
GRACE = 0.25
# t2 and t3 of the four-timestamp clock exchange (agent.peers.clockskew reads them).
RECEIVE_HEADER = "Nodemedic-Receive-Time-Ns"
TRANSMIT_HEADER = "Nodemedic-Transmit-Time-Ns"


class AgentView(Protocol):
    """What the server needs from the running agent (agent.runtime.daemon.Agent implements it)."""

    async def exposition(self) -> Exposition | None: ...
    def healthy(self) -> tuple[bool, str]: ...
    def ready(self) -> tuple[bool, str]: ...
    def status(self) -> dict[str, Any]: ...


_LANDING = """<html><head><title>nodemedic</title></head><body>
<h1>nodemedic {version}</h1>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li><li><a href="/status">/status</a></li></ul>
</body></html>
"""



async def _pieces(exp: Exposition) -> AsyncIterator[bytes]:
    """The exposition's text for a client without gzip, as aiohttp writes the body."""
    for piece in exp.text_chunks():
        yield piece

def build_app(agent: AgentView, metrics: SelfMetrics, max_in_flight: int = 64,
              guards: Sequence[Middleware] = (),
              wall_ns: Callable[[], int] = time.time_ns) -> web.Application:
    """Build the aiohttp application serving ``agent``; ``guards`` (agent.exporter.auth) run
    after the in-flight limit; ``wall_ns`` is the clock /healthz reports (tests shift it)."""
    in_flight = 0
    conns = _Connections(max_in_flight, metrics.http_rejected.inc)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        conns.busy.add(request.protocol)  # not idle: never closed to make room
        conns.served.add(request.protocol)  # its first request's headers came in time
        try:
            return await limit(request, handler)
        finally:
            conns.busy.discard(request.protocol)

    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        # Health probes cost nothing and must stay truthful under load: a probe refused
        # would make systemd or a prober declare a busy but healthy agent dead.
        if request.path in ("/healthz", "/readyz"):
            return await handler(request)
        if in_flight >= max_in_flight:
            metrics.http_rejected.inc()
            # 429, not 503: here 503 means "unhealthy" (/healthz) or "no data yet" (/metrics).
            return web.Response(
                status=429, headers={"Retry-After": "1"},
                text=f"overloaded: {in_flight} requests in flight (limit {max_in_flight}); "
                     "retry later (this is not a health verdict)\n")
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
        exp = await agent.exposition()
        if exp is None:
            return web.Response(status=503, text="no collection finished yet\n")
        accept = request.headers.get("Accept-Encoding", "")
        if "gzip" in accept.lower():
            return web.Response(
                body=exp.gzipped,
                headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip",
                         "Vary": "Accept-Encoding"},
            )
        # Kept gzipped: decompressed piece by piece while the response is written (each piece
        # ~0.1 ms of the loop), never as a whole copy of the text (see Exposition.text_chunks).
        # A body, not a prepared stream: the middlewares still add their headers.
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if exp.text_size >= 0:
            headers["Content-Length"] = str(exp.text_size)
        return web.Response(body=_pieces(exp), headers=headers)

    async def handle_healthz(_: web.Request) -> web.Response:
        received = wall_ns()
        ok, why = agent.healthy()
        resp = web.Response(status=200 if ok else 503, text=why + "\n")
        resp.headers[RECEIVE_HEADER] = str(received)
        resp.headers[TRANSMIT_HEADER] = str(wall_ns())
        return resp

    async def handle_readyz(_: web.Request) -> web.Response:
        ok, why = agent.ready()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def handle_status(_: web.Request) -> web.Response:
        body = json.dumps(agent.status(), indent=2, sort_keys=True, default=str)
        return web.Response(text=body + "\n", content_type="application/json")

    async def handle_landing(_: web.Request) -> web.Response:
        return web.Response(text=_LANDING.format(version=__version__), content_type="text/html")

    # No request body is ever needed: 1 KiB is plenty and refuses floods early.
    app = web.Application(middlewares=[guard, *guards], client_max_size=1024)
    app[_CONNECTIONS] = conns
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


class _Admit(asyncio.Protocol):
    """One TCP connection: admitted by :class:`_Connections` at connect time, then handed to an
    aiohttp RequestHandler (every callback delegated); refused ones never reach aiohttp."""

    def __init__(self, conns: _Connections) -> None:
        self.conns = conns
        self.client = ""
        self.born = 0.0
        self.handler: web.RequestHandler | None = None
        self._timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self.born = loop.time()
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else ""
        why = self.conns.admit(self)
        if why is not None:
            self.conns.on_refuse()
            cast(asyncio.Transport, transport).write(overload_response(why))
            transport.close()
            return
        assert self.conns.server is not None, "start_server sets it before serving"
        self.handler = self.conns.server()
        self.handler.connection_made(transport)
        # The header deadline is ours for the first request: recent aiohttp also arms its
        # keep-alive timer at connect, older releases (pyproject allows 3.9) never time out a
        # connection that does not finish its first request's headers. Later requests: that
        # timer, in all of them.
        self._timers = [loop.call_later(GRACE, self._end_of_grace),
                        loop.call_later(HEADER_TIMEOUT, self._header_deadline)]

    def pending(self) -> bool:
        """Admitted, and no request of it has reached the app yet (its headers are not in)."""
        h = self.handler
        return h is not None and h not in self.conns.served and h not in self.conns.busy

    def evictable(self, now: float) -> bool:
        """Idle (no request being handled) and past its grace or already served once."""
        h = self.handler
        return (h is not None and h not in self.conns.busy
                and (h in self.conns.served or now - self.born >= GRACE))

    def close(self) -> None:
        self.conns.open.pop(self, None)
        if self.handler is not None:
            self.handler.force_close()  # idle: no request is cut; buffered output is flushed

    def _end_of_grace(self) -> None:
        if self.pending() and self.conns.crowded(self.client):
            self.close()

    def _header_deadline(self) -> None:
        if self.pending():
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self) -> None:  # like aiohttp's: the transport then closes itself
        if self.handler is not None:
            self.handler.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.conns.open.pop(self, None)
        for t in self._timers:
            t.cancel()
        if self.handler is not None:
            self.conns.served.discard(self.handler)
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


def overload_response(why: str) -> bytes:
    """The raw 429 a refused connection gets: never a 503, which means "unhealthy" here."""
    body = f"overloaded: {why}; retry later (this is not a health verdict)\n".encode()
    return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))


class _Connections:
    """Protocol factory in front of aiohttp's web.Server that bounds open connections.

    ``limit`` connections are open, one client (source IP) holds ``per_client`` of them. A new
    connection is always let in below ``hard`` (4 x limit) and gets GRACE to send its headers:
    the agent cannot tell a probe from an attacker before that, so evicting newcomers would
    cut probes coming from an attacker's address. Beyond a soft bound, room is made by closing
    the oldest *evictable* connection (idle, i.e. no request being handled, and past its grace
    or served before) of that client or of the biggest holder, and a newcomer still without a
    request at the end of its grace is closed while its client or the total is over its bound.
    At ``hard`` the oldest idle connection of the biggest holder is closed even within its grace,
    and only when every connection is handling a request is the newcomer refused with a 429. A
    connection that has not sent a complete request within HEADER_TIMEOUT of connecting is
    closed by its _Admit, and within HEADER_TIMEOUT of its last response by aiohttp (its
    keep-alive timer, set to HEADER_TIMEOUT)."""

    def __init__(self, limit: int, on_refuse: Callable[[], None]) -> None:
        self.limit = max(1, limit)
        self.per_client = max(2, self.limit // 4)
        self.hard = 4 * self.limit
        self.on_refuse = on_refuse
        self.server: web.Server | None = None
        self.open: dict[_Admit, None] = {}  # admitted and not yet lost, oldest first
        self.busy: set[web.RequestHandler] = set()  # handling a request (see build_app)
        self.served: set[web.RequestHandler] = set()  # open, and a request got in

    def __call__(self) -> asyncio.BaseProtocol:
        return _Admit(self)

    def crowded(self, client: str) -> bool:
        """Over a soft bound: too many connections in all, or from ``client``."""
        return (len(self.open) > self.limit
                or sum(1 for c in self.open if c.client == client) > self.per_client)

    def admit(self, conn: _Admit) -> str | None:
        """Register ``conn``, making room as the bounds require; or say why it is refused."""
        now = conn.born
        # At the hard bound even a newcomer still in its grace may go (the file descriptors
        # must stay bounded); only if every connection is handling a request is this one refused.
        if len(self.open) >= self.hard and not self._evict_biggest(now, young_too=True):
            return f"{len(self.open)} connections open, none idle (limit {self.hard})"
        self.open[conn] = None
        mine = [c for c in self.open if c.client == conn.client]
        if len(mine) > self.per_client:
            self._evict(mine, now)
        if len(self.open) > self.limit:
            self._evict_biggest(now)
        return None

    def _evict_biggest(self, now: float, young_too: bool = False) -> bool:
        """Close the oldest evictable connection of the biggest holder that has one (with
        ``young_too``, also one still in its grace, before trying a smaller holder)."""
        per: dict[str, list[_Admit]] = {}
        for c in self.open:
            per.setdefault(c.client, []).append(c)
        return any(self._evict(cs, now) or (young_too and self._evict(cs, now + GRACE))
                   for cs in sorted(per.values(), key=len, reverse=True))

    def _evict(self, candidates: list[_Admit], now: float) -> bool:
        """Close the oldest evictable connection among ``candidates``; False if there is none."""
        for c in candidates:
            if c.evictable(now):
                c.close()
                return True
        return False

    def __getattr__(self, name: str) -> Any:  # the runner's shutdown calls reach the server
        return getattr(self.server, name)


_CONNECTIONS = web.AppKey("connections", _Connections)


class _Site(web.TCPSite):
    """A TCPSite whose TLS handshake is bounded like the request headers. asyncio's default is
    60 s, and a handshake in progress is not yet a connection the limits above can see, so a
    flood of clients that never finish their handshake would hold sockets for a minute each."""

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner, as TCPSite does
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=HEADER_TIMEOUT if self._ssl_context is not None else None)


async def start_server(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Start serving; return the runner (for cleanup) and the bound port (useful with port 0).

    An app from build_app also gets its connection limits (from --web.max-connections)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0,
                           keepalive_timeout=HEADER_TIMEOUT, logger=_PROTOCOL_LOG)
    await runner.setup()
    conns = app.get(_CONNECTIONS)
    if conns is not None and runner.server is not None:
        conns.server = runner.server
        # TCPSite uses runner.server as its protocol factory; aiohttp has no public hook here.
        runner._server = cast(web.Server, conns)
    site = _Site(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    bound = port
    server = site._server  # aiohttp has no public accessor for the bound port
    sockets = getattr(server, "sockets", None)
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    return runner, bound
