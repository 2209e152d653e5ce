"""Hostile HTTP clients against a real running agent: malformed, oversized, slow, too many
connections, path traversal and writes. The agent refuses each cleanly, keeps its connections
and file descriptors bounded, and /healthz keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from stress_agent import PROBE_TIMEOUT, get, healthz, running_agent, short_budget

from agent.exporter.server import HEADER_TIMEOUT

CRLF = b"\r\n"


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection and return what the server answered."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        with contextlib.suppress(ConnectionError):  # refused mid-upload: answer still readable
            await w.drain()
        try:
            return await asyncio.wait_for(r.read(4096), timeout)
        except (ConnectionError, TimeoutError):
            return b""
    finally:
        w.close()


def status_of(answer: bytes) -> int:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def req(line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return line + CRLF + b"".join(h + CRLF for h in (b"Host: x", *headers)) + CRLF + body


HOSTILE = {
    "garbage request line": (b"GARBAGE" + CRLF + CRLF, {400}),
    "unknown HTTP version": (req(b"GET / HTTP/9.9"), {400, 505}),
    "NUL in path": (req(b"GET /\x00 HTTP/1.1"), {400}),
    "100 KB header": (req(b"GET /healthz HTTP/1.1", b"X-Big: " + b"a" * 100_000), {400, 431}),
    "300 headers": (req(b"GET /healthz HTTP/1.1",
                        *(b"X-%d: y" % i for i in range(300))), {400, 431}),
    "20 KB request line": (req(b"GET /" + b"a" * 20_000 + b" HTTP/1.1"), {400, 414}),
    "10 MB POST body": (req(b"POST /metrics HTTP/1.1", b"Content-Length: 10000000",
                            body=b"x" * 65536), {405, 413}),
    "bad chunked body": (req(b"POST /status HTTP/1.1", b"Transfer-Encoding: chunked",
                             body=b"ZZZ" + CRLF), {400, 405}),
    "PUT": (req(b"PUT /status HTTP/1.1", b"Content-Length: 0"), {405}),
    "DELETE": (req(b"DELETE /metrics HTTP/1.1"), {405}),
    "PATCH": (req(b"PATCH /healthz HTTP/1.1", b"Content-Length: 2", body=b"{}"), {405}),
    "TRACE": (req(b"TRACE / HTTP/1.1"), {405}),
    "CONNECT": (req(b"CONNECT example.com:443 HTTP/1.1"), {400, 404, 405}),
    "OPTIONS *": (req(b"OPTIONS * HTTP/1.1"), {400, 404, 405}),
    "dot-dot path": (req(b"GET /../../../etc/passwd HTTP/1.1"), {404}),
    "encoded dot-dot": (req(b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1"), {404}),
    "encoded slash": (req(b"GET /metrics/..%2f..%2fetc%2fpasswd HTTP/1.1"), {404}),
    "absolute file URL": (req(b"GET file:///etc/passwd HTTP/1.1"), {400, 404}),
}


async def test_hostile_requests_are_refused_cleanly(tmp_path: Path) -> None:
    """Every malformed, oversized, writing or traversing request gets its 4xx (never a 500,
    never a file), and the agent stays healthy afterwards."""
    async with running_agent(tmp_path) as agent:
        assert agent.port is not None
        for name, (data, expected) in HOSTILE.items():
            answer = await exchange(agent.port, data)
            assert status_of(answer) in expected, (name, answer[:200])
            assert b"root:" not in answer, name
        assert await healthz(agent.port) == 200
        status, body = await get(agent.port, "/metrics")
        assert status == 200 and b"nodemedic_http_requests_total" in body


async def _slowloris(port: int, n: int, stop: asyncio.Event) -> int:
    """Open ``n`` connections that send half a request and then one byte every 0.5 s; return
    how many the server closed on us."""
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns.append((r, w))
    while not stop.is_set():
        for _r, w in conns:
            if not w.is_closing():
                w.write(b"a")
        await asyncio.sleep(0.5)
    closed = sum(1 for r, _w in conns if r.at_eof() or r.exception() is not None)
    for _r, w in conns:
        w.close()
    return closed


@pytest.mark.slow
async def test_slowloris_and_idle_connections_beyond_the_cap(tmp_path: Path) -> None:
    """Hundreds of slow half-sent requests (more than --web.max-connections) do not hold file
    descriptors without bound: the agent keeps at most the cap open, closes the oldest idle
    ones, and liveness probes keep getting 200 throughout."""
    cap = 32
    attackers = 300 if short_budget() else 3000
    me = psutil.Process()
    async with running_agent(tmp_path, web_max_connections=cap) as agent:
        assert agent.port is not None
        await asyncio.sleep(0.2)
        fds_before = me.num_fds()
        stop = asyncio.Event()
        attack = asyncio.create_task(_slowloris(agent.port, attackers, stop))
        probes: list[int] = []
        while not attack.done() and len(probes) < 40:
            probes.append(await healthz(agent.port))
            await asyncio.sleep(0.1)
        server_conns = len(agent._runner.server.connections)  # type: ignore[union-attr]
        stop.set()
        closed_by_agent = await attack
        assert probes and set(probes) == {200}, probes
        assert server_conns <= cap
        assert closed_by_agent >= attackers - cap
        await asyncio.sleep(0.5)
        assert me.num_fds() <= fds_before + 5  # both ends of every connection are gone
        assert await healthz(agent.port) == 200


async def _probe(port: int, path: str, source: str | None = None) -> tuple[int, float]:
    """(status, seconds) of one GET on a fresh connection, as a prober or Prometheus does it,
    from ``source`` (a loopback address) if given; status 0 when nothing came back within
    PROBE_TIMEOUT."""
    start = time.monotonic()
    conn = aiohttp.TCPConnector(local_addr=(source, 0) if source else None)
    try:
        async with aiohttp.ClientSession(
                connector=conn, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as s, \
                s.get(f"http://127.0.0.1:{port}{path}") as r:
            await r.read()
            status = r.status
    except (TimeoutError, aiohttp.ClientError):
        status = 0
    return status, time.monotonic() - start


async def _sustained_slowloris(port: int, n: int, stop: asyncio.Event,
                               answers: list[bytes], pause: float = 1.0) -> int:
    """Keep ``n`` connections that never finish their headers open from 127.0.0.1, reopening
    each one the agent closes ``pause`` seconds later (slowloris tools wait a little; 0 is a
    connection flood), until ``stop``; return how many times the agent closed one. Whatever the
    agent answered goes to ``answers``."""
    closed = 0

    async def one() -> None:
        nonlocal closed
        again = False
        while not stop.is_set():
            await asyncio.sleep(pause if again else 0)
            again = True
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                while not stop.is_set() and not r.at_eof():
                    w.write(b"a")
                    with contextlib.suppress(TimeoutError):
                        if data := await asyncio.wait_for(r.read(4096), 0.5):
                            answers.append(data)
                if not stop.is_set():
                    closed += 1
            except ConnectionError:
                closed += 1
            finally:
                w.close()

    await asyncio.gather(*(one() for _ in range(n)))
    return closed


@pytest.mark.slow
async def test_probes_and_scrapes_are_served_during_a_slowloris_attack(tmp_path: Path) -> None:
    """250 loopback connections that never finish their headers, reopened a second after the
    agent closes them, for longer than the header timeout: /healthz, /readyz and /metrics each keep
    answering 200 within the probe timeout, and the attackers are cut off by the header
    timeout and the connection limits rather than holding their sockets."""
    attackers = 250
    async with running_agent(tmp_path) as agent:
        assert agent.port is not None
        while (await _probe(agent.port, "/readyz"))[0] != 200:
            await asyncio.sleep(0.2)
        stop = asyncio.Event()
        answers: list[bytes] = []
        attack = asyncio.create_task(_sustained_slowloris(agent.port, attackers, stop, answers))
        await asyncio.sleep(1.0)  # the attack is established
        results: dict[str, list[tuple[int, float]]] = {"/healthz": [], "/readyz": [],
                                                       "/metrics": []}
        end = time.monotonic() + 2.5 * HEADER_TIMEOUT
        while time.monotonic() < end:
            for path, seen in results.items():
                seen.append(await _probe(agent.port, path))
            await asyncio.sleep(0.2)
        stop.set()
        closed_by_agent = await attack
        for path, seen in results.items():
            failed = [(i, status, took) for i, (status, took) in enumerate(seen) if status != 200]
            assert not failed, (path, len(seen), failed)
            assert len(seen) >= 5, (path, seen)
        # Every attacker was cut off at least once by the header timeout or an eviction.
        assert closed_by_agent >= attackers, closed_by_agent
        # Refused attackers were told it is overload, never a 503 that reads as "unhealthy".
        assert all(a.startswith(b"HTTP/1.1 429 ") and b"overloaded" in a for a in answers), \
            {a[:80] for a in answers}
        assert await healthz(agent.port) == 200


@pytest.mark.slow
async def test_a_connection_flood_from_one_address_does_not_starve_probes(
    tmp_path: Path,
) -> None:
    """250 connections from 127.0.0.1 reopened the moment the agent closes them (below the
    hard bound of 4 x --web.max-connections): probes and scrapes from the same address and from
    another one (127.0.0.2, as Prometheus or a peer's prober would be) keep getting 200 within
    the probe timeout: every newcomer gets its grace to send its headers, slow ones beyond a
    client's share are closed after it, and room is made at the biggest holder's expense."""
    async with running_agent(tmp_path) as agent:
        assert agent.port is not None
        while (await _probe(agent.port, "/readyz"))[0] != 200:
            await asyncio.sleep(0.2)
        stop = asyncio.Event()
        answers: list[bytes] = []
        attack = asyncio.create_task(
            _sustained_slowloris(agent.port, 250, stop, answers, pause=0.0))
        await asyncio.sleep(1.0)
        seen: list[tuple[str, int, float]] = []
        end = time.monotonic() + 2 * HEADER_TIMEOUT
        while time.monotonic() < end:
            for path in ("/healthz", "/readyz", "/metrics"):
                for source in ("127.0.0.1", "127.0.0.2"):
                    seen.append((f"{source}{path}",
                                 *await _probe(agent.port, path, source=source)))
            await asyncio.sleep(0.1)
        stop.set()
        await attack
        assert len(seen) >= 6 and all(status == 200 for _, status, _ in seen), seen
