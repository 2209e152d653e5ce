"""What protecting the HTTP endpoints costs per request: plain, basic auth, TLS, Kubernetes token.

Run by `make bench` (bench/run_all.py) or directly: `python bench/web_auth.py [--requests 300]`.
Writes bench/results/web_auth.json and bench/results/web_auth.md.

One process, loopback only: the agent's real HTTP server (agent.exporter.webfront, the same
middleware chain as `nodemedic run`) serving a rendered exposition of 2,000 series, and an aiohttp
client. For each mode, ``--requests`` sequential GET /metrics after one warm-up request:
- plain HTTP, keep-alive;
- basic auth (bcrypt cost 10; the warm-up pays the one bcrypt, later requests hit the cache);
- TLS with a client certificate (RequireAndVerifyClientCert), keep-alive;
- the same with a new connection (full handshake) per request;
- --web.kubernetes-auth against the in-memory API server (cached decision after the warm-up).
Also reported: one bcrypt cost-10 check (what an uncached password costs), and the API calls the
token mode made. Latency is client-measured wall time (client and server share the 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.exporter.render import Exposition, Renderer  # noqa: E402
from agent.exporter.self_metrics import SelfMetrics  # noqa: E402
from agent.exporter.webfront import WebFront  # noqa: E402
from agent.settings import Settings, settings_for_tests  # noqa: E402
from agent.structs.metrics import Family, MetricSpec  # noqa: E402
from nodemedic_sim.apiserver import ApiServer  # noqa: E402
from tests.pki import Pki  # noqa: E402

RESULTS = REPO / "bench" / "results"
SPEC = MetricSpec("nodemedic_bench_value", "Bench.", "gauge", ("pod", "container"))


def _families() -> list[Family]:
    fam = SPEC.family()
    for i in range(2000):
        fam.add([f"pod-{i // 4}", f"c{i % 4}"], float(i))
    return [fam]


class _Agent:
    def __init__(self) -> None:
        self.renderer = Renderer(CollectorRegistry(auto_describe=False), _families)
        self.renderer.render()

    async def exposition(self) -> Exposition | None:
        return self.renderer.latest

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {}


def _pct(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000, 3)


async def _mode(settings: Settings, api: Any, n: int, headers: dict[str, str],
                ctx: ssl.SSLContext | None, new_conn: bool) -> dict[str, float]:
    front = await WebFront.create(settings, lambda: api)
    runner, port = await front.serve(_Agent(), SelfMetrics(CollectorRegistry()), "127.0.0.1", 0,
                                     64)
    url = f"{front.scheme}://127.0.0.1:{port}/metrics"
    times: list[float] = []
    try:
        conn = aiohttp.TCPConnector(force_close=new_conn)
        async with aiohttp.ClientSession(connector=conn) as s:
            for i in range(n + 1):
                t = time.perf_counter()
                async with s.get(url, headers=headers, ssl=ctx or False) as r:
                    await r.read()
                    assert r.status == 200, r.status
                if i:
                    times.append(time.perf_counter() - t)
    finally:
        await runner.cleanup()
    return {"p50_ms": _pct(times, 0.5), "p95_ms": _pct(times, 0.95),
            "mean_ms": round(statistics.fmean(times) * 1000, 3)}


async def measure(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nodemedic-bench-web-") as tmp:
        return await _measure(Path(tmp), n)


async def _measure(tmp: Path, n: int) -> dict[str, Any]:
    pki = Pki(tmp / "pki")
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(10))
    t = time.perf_counter()
    bcrypt.checkpw(b"pw", hashed)
    bcrypt_ms = round((time.perf_counter() - t) * 1000, 1)
    basic = tmp / "basic.yml"
    basic.write_text(f"basic_auth_users:\n  prom: {hashed.decode()}\n")
    tls = tmp / "tls.yml"
    tls.write_text(f"tls_server_config:\n  cert_file: {pki.server.cert}\n"
                   f"  key_file: {pki.server.key}\n"
                   f"  client_auth_type: RequireAndVerifyClientCert\n"
                   f"  client_ca_file: {pki.ca}\n")
    cctx = ssl.create_default_context(cafile=str(pki.ca))
    cctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    modes: dict[str, dict[str, float]] = {}
    modes["plain"] = await _mode(settings_for_tests(), None, n, {}, None, False)
    auth = {"Authorization": "Basic " + base64.b64encode(b"prom:pw").decode()}
    modes["basic auth (cached)"] = await _mode(settings_for_tests(web_config_file=basic), None,
                                               n, auth, None, False)
    modes["TLS + client cert, keep-alive"] = await _mode(
        settings_for_tests(web_config_file=tls), None, n, {}, cctx, False)
    modes["TLS + client cert, new connection"] = await _mode(
        settings_for_tests(web_config_file=tls), None, n, {}, cctx, True)
    async with ApiServer() as server:
        server.reviews.add_token("t", "prom")
        server.reviews.allow("prom", "get", "nodes", subresource="metrics")
        from kubernetes_asyncio import client

        cfg = client.Configuration(host=server.url)
        async with client.ApiClient(cfg) as api:
            modes["Kubernetes token (cached)"] = await _mode(
                settings_for_tests(web_kubernetes_auth=True), api, n,
                {"Authorization": "Bearer t"}, None, False)
        reviews = server.reviews.token_reviews + server.reviews.access_reviews
    return {"requests": n, "series": 2000, "bcrypt_cost10_ms": bcrypt_ms, "modes": modes,
            "kube_api_calls": reviews, "python": platform.python_version(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def write(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "web_auth.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"## HTTP protection: cost per GET /metrics ({result['series']:,} series)",
        "",
        f"{result['requests']} sequential requests per mode after one warm-up, client-measured "
        "on loopback (bench/web_auth.py).",
        "",
        "| mode | p50 ms | p95 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for mode, m in result["modes"].items():
        lines.append(f"| {mode} | {m['p50_ms']} | {m['p95_ms']} | {m['mean_ms']} |")
    lines += ["", f"One uncached bcrypt check at cost 10: {result['bcrypt_cost10_ms']} ms (paid "
              "once per user/password; results are cached). The token mode made "
              f"{result['kube_api_calls']} API calls for {result['requests'] + 1} requests. "
              f"Load average: {result['loadavg']}.", ""]
    (RESULTS / "web_auth.md").write_text("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    write(asyncio.run(measure(ap.parse_args().requests)))
    print((RESULTS / "web_auth.md").read_text())
