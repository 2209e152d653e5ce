"""The HTTP endpoints as Prometheus and on-call engineers use them."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from typing import Any, cast

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.exporter.render import Exposition, Renderer
from agent.exporter.self_metrics import SelfMetrics
from agent.exporter.server import (
    GRACE,
    HEADER_TIMEOUT,
    _Admit,
    _Connections,
    build_app,
    overload_response,
    start_server,
)
from agent.structs.metrics import Family, MetricSpec

OOM = MetricSpec("nodemedic_container_oom_kills_total", "OOM kills.", "counter",
                 ("namespace", "pod", "container"))
MEM = MetricSpec("nodemedic_container_memory_usage_bytes", "Usage.", "gauge",
                 ("namespace", "pod", "container"))


class FakeAgent:
    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.slow = 0.0

    async def exposition(self) -> Exposition | None:
        return self.renderer.latest

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return (self.renderer.latest is not None), "first collection not finished"

    def status(self) -> dict[str, Any]:
        return {"node": "n1", "collectors": {"cgroup": {"ok": True}}}


def families() -> list[Family]:
    oom, mem = OOM.family(), MEM.family()
    oom.add(["default", "web-1", "app"], 3)
    mem.add(["default", "web-1", "app"], 1.5e8)
    mem.add(["kube-system", 'we"ird\\pod', "c"], 1)
    return [oom, mem]


def make() -> tuple[FakeAgent, SelfMetrics, Renderer]:
    reg = CollectorRegistry(auto_describe=False)
    sm = SelfMetrics(reg)
    r = Renderer(reg, families)
    return FakeAgent(r), sm, r


async def test_metrics_before_first_tick_is_503_then_served() -> None:
    """/metrics and /readyz answer 503 until the first collection, then serve the text format."""
    agent, sm, renderer = make()
    async with TestClient(TestServer(build_app(agent, sm))) as client:
        assert (await client.get("/metrics")).status == 503
        assert (await client.get("/readyz")).status == 503
        renderer.render()
        resp = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        oom = fams["nodemedic_container_oom_kills"]
        assert oom.type == "counter"
        assert oom.samples[0].value == 3
        weird = [s for s in fams["nodemedic_container_memory_usage_bytes"].samples
                 if s.labels["namespace"] == "kube-system"]
        assert weird[0].labels["pod"] == 'we"ird\\pod'  # escaped on the wire, intact after parse
        assert (await client.get("/readyz")).status == 200


async def test_gzip_when_accepted_and_same_bytes_for_every_scraper() -> None:
    """gzip is served to clients that accept it; every scrape gets the one cached rendering."""
    agent, sm, renderer = make()
    renderer.render()
    async with TestClient(TestServer(build_app(agent, sm))) as client:
        r1 = await client.get(
            "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        )
        assert r1.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(await r1.read())
        r2 = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert body == await r2.read()


def big_families() -> list[Family]:
    """Two families of 20,000 and 3,000 samples and small ones between: several gzip members,
    a text of a few MB, as on a 250-pod node."""
    mem, oom = MEM.family(), OOM.family()
    for i in range(20_000):
        mem.add([f"ns-{i % 7}", f"pod-{i}", f"c{i % 3}"], float(i) * 1.5)
    for i in range(3_000):
        oom.add([f"ns-{i % 7}", f"pod-{i}", "app"], i % 4)
    small = [MEM.family() for _ in range(3)]
    for j, f in enumerate(small):
        f.add(["x", f"s{j}", "c"], j)
    return [small[0], mem, small[1], oom, small[2]]


async def test_a_scrape_without_gzip_gets_the_whole_text_streamed_with_its_length() -> None:
    """A client that does not accept gzip gets the same text as a gzip scrape, with the right
    Content-Length, from every member, whatever the size: served piece by piece."""
    reg = CollectorRegistry(auto_describe=False)
    sm = SelfMetrics(reg)
    fams = big_families()
    renderer = Renderer(reg, lambda: fams)
    exp = renderer.render()
    pieces = list(exp.text_chunks())
    assert len(pieces) > 20 and max(map(len, pieces)) < 256 * 1024
    assert b"".join(pieces) == exp.text
    assert exp.text_size == len(exp.text)
    assert exp.gzipped.count(b"\x1f\x8b\x08") >= 4  # several members
    async with TestClient(TestServer(build_app(FakeAgent(renderer), sm))) as client:
        gz = await client.get("/metrics", headers={"Accept-Encoding": "gzip"},
                              auto_decompress=False)
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        body = await plain.read()
        assert plain.status == 200
        assert int(plain.headers["Content-Length"]) == len(body) == exp.text_size
        assert "Content-Encoding" not in plain.headers
        assert body == gzip.decompress(await gz.read())
        head = await client.head("/metrics", headers={"Accept-Encoding": "identity"})
        assert head.status == 200 and int(head.headers["Content-Length"]) == exp.text_size
    # A second render re-uses the big members (same Family objects): the length still adds up.
    reused = {k: v[2] for k, v in renderer._members.items()}
    again = renderer.render()
    assert all(renderer._members[k][2] is m for k, m in reused.items())
    assert again.text_size == len(again.text)


async def test_status_is_json_and_nothing_is_writable() -> None:
    """/status is JSON; POST/PUT/DELETE anywhere are refused; unknown paths are 404."""
    agent, sm, renderer = make()
    renderer.render()
    async with TestClient(TestServer(build_app(agent, sm))) as client:
        st = await client.get("/status")
        assert json.loads(await st.text())["node"] == "n1"
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/metrics", "/status", "/healthz"):
                resp = await client.request(method, path, data=b"x" * 10)
                assert resp.status == 405, (method, path)
        assert (await client.get("/../../etc/passwd")).status == 404


async def test_oversized_request_is_refused_and_server_keeps_serving() -> None:
    """A huge header or body gets a 4xx; the next normal request still works."""
    agent, sm, renderer = make()
    renderer.render()
    async with TestClient(TestServer(build_app(agent, sm))) as client:
        resp = await client.get("/metrics", headers={"X-Junk": "a" * 20000})
        assert 400 <= resp.status < 500
        resp = await client.post("/metrics", data=b"x" * 5_000_000)
        assert 400 <= resp.status < 500
        assert (await client.get("/healthz")).status == 200


async def test_too_many_in_flight_get_429_saying_overloaded() -> None:
    """Beyond the in-flight limit requests are refused at once with a 429 that says it is
    overload (a 503 would read as "unhealthy"); health probes still answer."""
    agent, sm, renderer = make()
    renderer.render()
    gate = asyncio.Event()
    orig_status = agent.status

    app = build_app(agent, sm, max_in_flight=2)

    async def slow_status(_: Any) -> Any:
        await gate.wait()
        return web.json_response(orig_status())

    app.router.add_get("/slow", slow_status)
    async with TestServer(app) as server, ClientSession() as session:
        url = str(server.make_url("/slow"))
        pending = [asyncio.create_task(session.get(url)) for _ in range(2)]
        await asyncio.sleep(0.2)
        refused = await session.get(str(server.make_url("/status")))
        assert refused.status == 429
        assert (await refused.text()).startswith("overloaded: 2 requests in flight")
        assert refused.headers["Retry-After"] == "1"
        probe = await session.get(str(server.make_url("/healthz")))
        assert probe.status == 200  # health probes still answer truthfully under load
        gate.set()
        for t in pending:
            assert (await t).status == 200


async def _raw(port: int, path: str, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """The whole answer to one GET ``path`` on a fresh connection from ``source``."""
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        w.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        return await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()


async def test_one_client_beyond_its_share_loses_its_slow_connections_not_its_probes() -> None:
    """One client address holds at most a quarter of --web.max-connections (here 2 of 8) of
    connections that are slow to send their headers: past that, its oldest idle connection is
    closed, and a newcomer still without a request at the end of its grace is closed; a probe
    from the same address, which sends its request at once, is served throughout."""
    agent, sm, renderer = make()
    renderer.render()
    gate = asyncio.Event()
    app = build_app(agent, sm, max_in_flight=8)

    async def slow(_: Any) -> web.Response:
        await gate.wait()
        return web.Response(text="done")

    app.router.add_get("/slow", slow)
    runner, port = await start_server(app, "127.0.0.1", 0)
    half = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # headers never finished

    async def half_sent() -> asyncio.StreamReader:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(half)
        writers.append(w)
        return r

    writers: list[asyncio.StreamWriter] = []
    try:
        idle = await half_sent()
        busy = asyncio.create_task(_raw(port, "/slow", timeout=30))
        await asyncio.sleep(GRACE + 0.1)
        # At its share: the probe gets in and the idle half-sent connection makes room.
        assert (await _raw(port, "/healthz")).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(idle.read(), 2.0) == b""  # closed by the agent
        # Two more slow ones in a row: the first is over the share at the end of its grace and
        # closed then; the second, within the share, lasts until the header timeout. A probe
        # sent meanwhile is served.
        late = [await half_sent(), await half_sent()]
        assert (await _raw(port, "/healthz")).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(late[0].read(), HEADER_TIMEOUT / 2) == b""
        assert not late[1].at_eof()
        assert await asyncio.wait_for(late[1].read(), HEADER_TIMEOUT + 2) == b""
        assert not gate.is_set() and not busy.done()  # the request in progress was not cut
        gate.set()
        assert (await busy).startswith(b"HTTP/1.1 200")
    finally:
        for w in writers:
            w.close()
        await runner.cleanup()


def test_at_the_hard_bound_with_every_connection_busy_a_newcomer_gets_429() -> None:
    """The last resort, driven directly: 4 x --web.max-connections open and every one handling
    a request; the newcomer is refused with a reason (sent as a 429 "overloaded"), and admitted
    again as soon as one of them is idle."""
    refused: list[int] = []
    conns = _Connections(2, lambda: refused.append(1))

    class Handler:
        def force_close(self) -> None:
            self.closed = True

    open_ = []
    for i in range(conns.hard):
        a = _Admit(conns)
        a.client, a.born, a.handler = f"10.0.0.{i}", 0.0, cast(Any, Handler())
        assert conns.admit(a) is None
        conns.busy.add(cast(Any, a.handler))
        open_.append(a)
    newcomer = _Admit(conns)
    newcomer.client, newcomer.born = "10.0.0.99", 1.0
    why = conns.admit(newcomer)
    assert why == "8 connections open, none idle (limit 8)"
    assert overload_response(why).startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"overloaded: 8 connections open" in overload_response(why)
    conns.busy.discard(cast(Any, open_[3].handler))
    assert conns.admit(newcomer) is None and open_[3] not in conns.open


async def test_at_the_connection_limit_the_biggest_holder_makes_room() -> None:
    """With --web.max-connections open, a newcomer closes the oldest idle connection of the
    address holding the most, not the idle connection of a smaller client."""
    agent, sm, renderer = make()
    renderer.render()
    runner, port = await start_server(build_app(agent, sm, max_in_flight=4), "127.0.0.1", 0)
    half = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    try:
        held = []
        for source in ("127.0.0.2", "127.0.0.1", "127.0.0.1", "127.0.0.3"):
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            w.write(half)
            held.append((source, r, w))
            await asyncio.sleep(0.05)
        await asyncio.sleep(GRACE)  # past their grace: evictable
        answer = await _raw(port, "/healthz", source="127.0.0.4")
        assert answer.startswith(b"HTTP/1.1 200"), answer
        closed = [src for src, r, _ in held if r.at_eof()]
        assert closed == ["127.0.0.1"], closed  # the oldest of the biggest holder's two
        assert held[1][1].at_eof()
        for _, _, w in held:
            w.close()
    finally:
        await runner.cleanup()


async def test_headers_trickled_slower_than_the_header_timeout_get_the_connection_closed() -> None:
    """A connection sending its request headers a byte at a time is closed once HEADER_TIMEOUT
    has passed since it connected (first request) or since its last response (the next one),
    even far below every connection limit; a byte now and then does not extend it."""
    agent, sm, renderer = make()
    renderer.render()
    runner, port = await start_server(build_app(agent, sm), "127.0.0.1", 0)
    loop = asyncio.get_running_loop()

    async def trickle(first: bytes) -> float:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(first)
        if first:  # a whole request: read its answer, then start the next one slowly
            await r.readuntil(b"ok\n")
        since = loop.time()
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        try:
            while not r.at_eof() and loop.time() - since < 4 * HEADER_TIMEOUT:
                w.write(b"a")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(r.read(100), 0.5)
        except ConnectionError:
            pass
        w.close()
        return loop.time() - since

    try:
        first, later = await asyncio.gather(
            trickle(b""), trickle(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        for took in (first, later):
            assert 0.8 * HEADER_TIMEOUT <= took < 2 * HEADER_TIMEOUT, (first, later)
    finally:
        await runner.cleanup()
