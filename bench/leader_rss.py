"""RSS of `nodemedic run` as the failover leader of 1,000 nodes, at defaults, on a 250-pod node.

Run directly (`python bench/leader_rss.py [--nodes 1000] [--runs 2] [--steady 60]`) or by
`make bench`; writes bench/results/leader_rss.json and .md. Goal (issue 17): ≤ 100 MiB.

Unlike bench/failover.py's scale part (an in-process Agent with every collector off), this is
the real process as a node runs it: `python -m agent run --failover.enabled` with default
settings and every default collector on the synthetic 250-pod node (bench/synthetic_node.py, fake
kubelet in this process), connected to the in-memory API server of bench/failover.py (a child:
1,000 Nodes, their kubelet Leases renewed every 10 s, one nodemedic heartbeat Lease each). The
agent is node-00000 of that cluster and, alone, takes the leader Lease. Measured once it
classifies every node (nodemedic_peer_nodes sums to --nodes; that metric is exported at the end
of a tick, so "start → classified" is at most one 10 s tick late: a classification finished just
after the first tick shows at the second, ~10.9 s instead of ~1.1 s): RSS sampled every 0.5 s
over --steady seconds (median and max) with a gzip scrape every 15 s, as Prometheus scrapes, and
the CPU share over the same window. Each run has its own --state.dir. agent/ is byte-compiled
first, as shipped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from failover import read_json  # noqa: E402
from footprint import (  # noqa: E402
    RESULTS,
    SCRAPE_EVERY,
    KubeletThread,
    cpu_seconds,
    free_port,
    get,
)
from synthetic_node import build_node, pods_json, summary_json  # noqa: E402

GOAL_MIB = 100.0


def peer_nodes(base: str) -> float:
    """Nodes the leader has classified, from a gzip scrape (as Prometheus scrapes)."""
    raw = get(base + "/metrics")
    body = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("nodemedic_peer_nodes{"))


def one_run(work: Path, kubelet_url: str, nodes: int, steady: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, str(REPO / "bench" / "failover.py"), "--serve",
                               str(nodes)], stdout=subprocess.PIPE, env=env)
    assert server.stdout is not None
    agent: subprocess.Popen[bytes] | None = None
    try:
        hello = read_json(server.stdout, "url")
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "bench", "cluster": {"server": hello["url"]}}],
            "users": [{"name": "bench", "user": {"token": "bench"}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
        }))
        port = free_port()
        aenv = dict(os.environ, NODEMEDIC_LOG_LEVEL="warning", NODEMEDIC_LOG_FORMAT="json")
        aenv.pop("NOTIFY_SOCKET", None)
        t0 = time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--web.listen-address", f"127.0.0.1:{port}",
             "--path.cgroupfs", str(work / "cgroup"), "--kubelet.url", kubelet_url,
             "--rules.dir", str(REPO / "rules"), "--node-name", "node-00000",
             "--kubeconfig", str(kubeconfig), "--failover.enabled",
             # A fresh state file per run: not the machine's, not the previous run's.
             "--state.dir", str(work / f"state-{port}")],
            cwd=REPO, env=aenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        while True:
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}")
            if time.monotonic() - t0 > 180:
                raise RuntimeError("the agent did not classify every node within 180 s")
            try:
                if peer_nodes(base) >= nodes:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        synced = time.monotonic() - t0
        time.sleep(5.0)  # the initial flood settles
        p = psutil.Process(agent.pid)
        c0, w0 = cpu_seconds(p), time.monotonic()
        rss: list[float] = []
        next_scrape = w0
        while time.monotonic() - w0 < steady:
            if time.monotonic() >= next_scrape:  # a gzip scrape every 15 s, as Prometheus
                get(base + "/metrics")
                next_scrape += SCRAPE_EVERY
            rss.append(p.memory_info().rss / 2**20)
            time.sleep(0.5)
        cpu, wall = cpu_seconds(p) - c0, time.monotonic() - w0
        return {"sync_seconds": round(synced, 2), "rss_median_mib": statistics.median(rss),
                "rss_max_mib": max(rss), "cpu_s": cpu, "cpu_pct_core": cpu / wall * 100,
                "peer_nodes": peer_nodes(base)}
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steady", type=float, default=60.0)
    args = ap.parse_args()
    # In place: timestamp-checked .pyc files (an edited source is recompiled, never ignored).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(REPO / "agent")],
                   check=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="nodemedic-leader-") as d:
        work = Path(d)
        refs = build_node(work / "cgroup", pods=250, containers=2, layout="v2-systemd")
        with KubeletThread(pods_json(refs), summary_json(refs)) as kubelet:
            for i in range(args.runs):
                print(f"leader run {i + 1}/{args.runs}", file=sys.stderr)
                runs.append(one_run(work, kubelet.url, args.nodes, args.steady))
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("sync_seconds", "rss_median_mib", "rss_max_mib", "cpu_pct_core")}
    doc = {"nodes": args.nodes, "runs": runs, "summary": med, "steady_seconds": args.steady,
           "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "leader_rss.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = "\n".join([
        f"## Leader of {args.nodes:,} nodes: RSS at defaults on the 250-pod node",
        "",
        f"`nodemedic run --failover.enabled`, default settings and collectors, API connected "
        f"(in-memory server, {args.nodes:,} Nodes with kubelet and nodemedic heartbeat Leases), "
        f"{args.runs} runs of {args.steady:g} s after it classified every node; median of runs. "
        f"{doc['cpus']} vCPU, load average {doc['load']:.1f}.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| RSS (median of samples) | {med['rss_median_mib']:.1f} MiB | ≤ {GOAL_MIB:g} MiB |",
        f"| RSS (max) | {med['rss_max_mib']:.1f} MiB | |",
        f"| CPU, % of a core | {med['cpu_pct_core']:.2f} % | |",
        f"| start → every node classified | {med['sync_seconds']:.1f} s | |",
    ]) + "\n"
    (RESULTS / "leader_rss.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
