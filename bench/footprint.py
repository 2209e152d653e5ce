"""Footprint of a running agent on a synthetic 250-pod node, next to Debian's node_exporter.

Run by `make bench` (bench/run_all.py) or directly: `python bench/footprint.py [--runs 3]`.
Writes bench/results/footprint.json and bench/results/footprint.md.

What is measured, each as the median (min–max) of --runs independent runs:
- steady-state RSS of `nodemedic run` with the Kubernetes client loaded;
- CPU share of one core at the default 10 s interval (agent user+system time, children
  included, over a 60 s window / wall time) with a gzip scrape every 15 s as Prometheus does (the
  exposition is rendered by the first scrape after a tick, so an unscraped agent would look
  cheaper than a real one), and CPU per tick derived from it;
- start → ready: from spawning `nodemedic run` to /readyz answering 200 (first tick done), with
  agent/ byte-compiled first as packaging/build-deb.sh ships it (the unit sets
  PYTHONDONTWRITEBYTECODE=1: without shipped .pyc files every start compiles ~95 modules);
- tick latency p50/p99 (the agent's own last-tick duration, read from /status each tick);
- /metrics scrape latency p50/p99 and CPU per scrape, gzip accepted as Prometheus does, on an
  agent whose interval is 1 h so that only scrapes cost CPU in the window;
- the same scrape figures, RSS and series count for prometheus-node-exporter (Debian), started
  on loopback in the same run.
The node: bench/synthetic_node.py builds 250 pods x 2 containers in a cgroup v2 systemd-driver
tree; a fake kubelet (nodemedic_sim.fake_kubelet) serves the matching /pods in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic_node import build_node, pods_json, summary_json  # noqa: E402

from nodemedic_sim.fake_kubelet import FakeKubelet, Override  # noqa: E402

RESULTS = REPO / "bench" / "results"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
SCRAPE_EVERY = 15.0  # seconds, Prometheus' usual scrape interval


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(p: psutil.Process) -> float:
    """User+system CPU of the process and of the children it waited for (iptables-save...)."""
    t = p.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


class KubeletThread:
    """The fake kubelet on its own event loop thread, serving the synthetic node's /pods (and
    its /stats/summary when given)."""

    def __init__(self, pods_doc: dict[str, Any],
                 summary_doc: dict[str, Any] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.fk = FakeKubelet(REPO / "tests" / "fixtures" / "kubelet")
        self.fk.overrides["/pods"] = Override(200, json.dumps(pods_doc).encode(),
                                              "application/json")
        if summary_doc is not None:  # else the 17-pod capture
            self.fk.overrides["/stats/summary"] = Override(
                200, json.dumps(summary_doc).encode(), "application/json")
        self.url = ""
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> KubeletThread:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.fk.start(), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fk.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def get(url: str, gzip_ok: bool = True) -> bytes:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not up")


AGENT_ARGS: list[str] = []  # extra `nodemedic run` flags (--agent-arg), e.g. --cgroup.min-interval


def start_agent(
    cgroot: Path, kubelet_url: str, interval: str, port: int
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NODEMEDIC_LOG_LEVEL="warning", NODEMEDIC_LOG_FORMAT="json")
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--web.listen-address", f"127.0.0.1:{port}",
         "--path.cgroupfs", str(cgroot), "--kubelet.url", kubelet_url,
         "--collect.interval", interval, "--rules.dir", str(REPO / "rules"),
         "--node-name", "bench-node", "--state.dir", str(cgroot.parent / f"state-{port}"),
         *AGENT_ARGS],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def scrape_figures(url: str, pid: int, n: int) -> dict[str, float]:
    p = psutil.Process(pid)
    for _ in range(5):
        get(url)  # warm up
    lat: list[float] = []
    c0 = cpu_seconds(p)
    for _ in range(n):
        t = time.perf_counter()
        get(url)
        lat.append(time.perf_counter() - t)
    cpu = cpu_seconds(p) - c0
    body = get(url, gzip_ok=False).decode()
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    return {
        "scrape_p50_ms": pct(lat, 0.5) * 1000,
        "scrape_p99_ms": pct(lat, 0.99) * 1000,
        "cpu_per_scrape_ms": cpu / n * 1000,
        "series": float(series),
        "rss_mib": p.memory_info().rss / 2**20,
    }


def one_run(work: Path, kubelet_url: str, scrapes: int, window: float,
            cpu_window: float, interval: float) -> dict[str, Any]:
    cgroot = work / "cgroup"
    out: dict[str, Any] = {}
    # 1. CPU share at the real interval (default 10 s): total CPU / wall time over cpu_window.
    port = free_port()
    t_start = time.monotonic()
    proc = start_agent(cgroot, kubelet_url, f"{interval:g}s", port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz")  # 503 until the first tick has finished
        out["start_to_ready_s"] = time.monotonic() - t_start
        wait_http(base + "/metrics")
        time.sleep(3)  # settle: imports done, caches warm
        p = psutil.Process(proc.pid)
        c0, t0 = cpu_seconds(p), time.monotonic()
        while (left := cpu_window - (time.monotonic() - t0)) > 0:
            get(base + "/metrics")  # a gzip scrape every 15 s, as Prometheus does
            time.sleep(min(SCRAPE_EVERY, left))
        cpu, elapsed = cpu_seconds(p) - c0, time.monotonic() - t0
        out["cpu_pct_core"] = cpu / elapsed * 100
        out["cpu_per_tick_ms"] = cpu / (elapsed / interval) * 1000
        out["rss_mib"] = p.memory_info().rss / 2**20
        st = json.loads(get(base + "/status", gzip_ok=False))
        out["kubernetes_client_loaded"] = bool(st.get("kubernetes_client_loaded"))
        out["collectors_ok"] = sorted(n for n, c in st.get("collectors", {}).items() if c["ok"])
    finally:
        stop(proc)
    # 2. tick latency percentiles: 1 s ticks for many samples in a short window
    port = free_port()
    proc = start_agent(cgroot, kubelet_url, "1s", port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/metrics")
        time.sleep(3)
        lat: list[float] = []
        for _ in range(int(window)):
            st = json.loads(get(base + "/status", gzip_ok=False))
            lat.append(float(st["last_tick"]["duration_seconds"]))
            time.sleep(1.0)
        out["tick_p50_ms"] = pct(lat, 0.5) * 1000
        out["tick_p99_ms"] = pct(lat, 0.99) * 1000
    finally:
        stop(proc)
    # 2. scrape cost on an agent that does not tick during the window
    port = free_port()
    proc = start_agent(cgroot, kubelet_url, "1h", port)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url)
        time.sleep(2)
        out["agent_scrape"] = scrape_figures(url, proc.pid, scrapes)
    finally:
        stop(proc)
    # 3. node_exporter, same client, same machine, same run
    if shutil.which(NODE_EXPORTER) or Path(NODE_EXPORTER).exists():
        port = free_port()
        ne = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_http(url)
            time.sleep(2)
            out["node_exporter"] = scrape_figures(url, ne.pid, scrapes)
        finally:
            ne.terminate()
            ne.wait(10)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def agg(get_: Any) -> dict[str, float]:
        vals = [float(get_(r)) for r in runs]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    summary: dict[str, Any] = {
        "rss_mib": agg(lambda r: r["rss_mib"]),
        "cpu_per_tick_ms": agg(lambda r: r["cpu_per_tick_ms"]),
        "cpu_pct_core": agg(lambda r: r["cpu_pct_core"]),
        "tick_p50_ms": agg(lambda r: r["tick_p50_ms"]),
        "tick_p99_ms": agg(lambda r: r["tick_p99_ms"]),
        "scrape_p50_ms": agg(lambda r: r["agent_scrape"]["scrape_p50_ms"]),
        "scrape_p99_ms": agg(lambda r: r["agent_scrape"]["scrape_p99_ms"]),
        "cpu_per_scrape_ms": agg(lambda r: r["agent_scrape"]["cpu_per_scrape_ms"]),
        "series": agg(lambda r: r["agent_scrape"]["series"]),
        "start_to_ready_s": agg(lambda r: r["start_to_ready_s"]),
    }
    if all("node_exporter" in r for r in runs):
        summary["node_exporter"] = {
            k: agg(lambda r, k=k: r["node_exporter"][k])
            for k in ("rss_mib", "scrape_p50_ms", "scrape_p99_ms", "cpu_per_scrape_ms", "series")
        }
    return summary


def fmt(a: dict[str, float], unit: str = "") -> str:
    return f"{a['median']:.2f}{unit} ({a['min']:.2f}–{a['max']:.2f})"


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    ne = summary.get("node_exporter")
    rows = [
        "# Footprint: nodemedic on a synthetic 250-pod node vs prometheus-node-exporter",
        "",
        f"{meta['pods']} pods x {meta['containers']} containers (cgroup {meta['layout']}), "
        f"{meta['runs']} runs, median (min–max), a gzip scrape every {SCRAPE_EVERY:g} s during "
        "the CPU window. Extra flags: "
        f"{' '.join(meta['agent_args']) or 'none'}. Kubernetes client loaded: "
        f"{meta['kubernetes_client_loaded']}. Machine: {meta['cpus']} vCPU.",
        "",
        "| figure | nodemedic | node_exporter | target |",
        "|---|---|---|---|",
        f"| RSS | {fmt(summary['rss_mib'], ' MiB')} | "
        f"{fmt(ne['rss_mib'], ' MiB') if ne else 'n/a'} | ≤ 80 MiB |",
        f"| CPU per tick | {fmt(summary['cpu_per_tick_ms'], ' ms')} | | |",
        f"| CPU share of one core at a {meta['interval']:g} s interval "
        f"| {fmt(summary['cpu_pct_core'], ' %')} | | ≤ 0.5 % at 10 s |",
        f"| start → ready (/readyz 200) | {fmt(summary['start_to_ready_s'], ' s')} | | ≤ 1 s |",
        f"| tick latency p50 | {fmt(summary['tick_p50_ms'], ' ms')} | | |",
        f"| tick latency p99 | {fmt(summary['tick_p99_ms'], ' ms')} | | |",
        f"| series exposed | {fmt(summary['series'])} | {fmt(ne['series']) if ne else 'n/a'} | |",
        f"| scrape latency p50 (gzip) | {fmt(summary['scrape_p50_ms'], ' ms')} | "
        f"{fmt(ne['scrape_p50_ms'], ' ms') if ne else 'n/a'} | |",
        f"| scrape latency p99 (gzip) | {fmt(summary['scrape_p99_ms'], ' ms')} | "
        f"{fmt(ne['scrape_p99_ms'], ' ms') if ne else 'n/a'} | |",
        f"| CPU per scrape | {fmt(summary['cpu_per_scrape_ms'], ' ms')} | "
        f"{fmt(ne['cpu_per_scrape_ms'], ' ms') if ne else 'n/a'} | ≤ node_exporter's |",
    ]
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pods", type=int, default=250)
    ap.add_argument("--containers", type=int, default=2)
    ap.add_argument("--layout", default="v2-systemd")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of 1 s ticks for latency")
    ap.add_argument("--cpu-window", type=float, default=60.0,
                    help="seconds over which CPU share is measured at --interval")
    ap.add_argument("--interval", type=float, default=10.0, help="agent interval for CPU share")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="extra flag for `nodemedic run` (repeatable)")
    ap.add_argument("--name", default="footprint", help="results file name (bench/results/NAME.*)")
    args = ap.parse_args()
    AGENT_ARGS.extend(args.agent_arg)
    # In place: timestamp-checked .pyc files (an edited source is recompiled, never ignored).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(REPO / "agent")],
                   check=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="nodemedic-footprint-") as d:
        work = Path(d)
        refs = build_node(work / "cgroup", pods=args.pods, containers=args.containers,
                          layout=args.layout)
        with KubeletThread(pods_json(refs), summary_json(refs)) as kubelet:
            for i in range(args.runs):
                print(f"footprint run {i + 1}/{args.runs}", file=sys.stderr)
                runs.append(one_run(work, kubelet.url, args.scrapes, args.window,
                                    args.cpu_window, args.interval))
    summary = summarise(runs)
    meta = {"pods": args.pods, "containers": args.containers, "layout": args.layout,
            "runs": args.runs, "cpus": os.cpu_count(), "interval": args.interval,
            "kubernetes_client_loaded": all(r["kubernetes_client_loaded"] for r in runs),
            "collectors_ok": runs[-1]["collectors_ok"], "agent_args": args.agent_arg}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
