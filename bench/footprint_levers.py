"""What each footprint lever saves: one agent per git revision, all running side by side.

Run directly (not part of `make bench`: it needs the revisions to compare), e.g.

    python bench/footprint_levers.py --rev baseline=1f35f12 --rev lazy-client=48332e3 ...

Each revision is exported with `git archive` into a scratch directory and started from there as
`python -m agent run` (same interpreter and libraries), at the default 10 s interval, on the same
synthetic 250-pod node (bench/synthetic_node.py) and fake kubelet; with --api every agent is also
connected to one in-memory API server (its own Node object, informers, Leases, Events).
prometheus-node-exporter (Debian) runs beside them. All processes run in the same window, so a
busy machine loads every revision alike: CPU figures are paired, not taken at different times.
Every 15 s each one is scraped once with gzip, as Prometheus does.

Per round and process: RSS sampled halfway between scrapes (median and max of the samples: one
sample swings by several MiB with the point of the tick it lands on), CPU share of one core over
the window (user+system, children included). Rounds rotate the start order. Writes
bench/results/<name>.json and .md (default name footprint_levers, footprint_levers_api with --api).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from footprint import (  # noqa: E402
    NODE_EXPORTER,
    RESULTS,
    SCRAPE_EVERY,
    KubeletThread,
    cpu_seconds,
    free_port,
    get,
    wait_http,
)
from synthetic_node import (  # noqa: E402
    Advancer,
    build_node,
    pause_process,
    pods_json,
    summary_json,
)

from nodemedic_sim.apiserver import ApiServer  # noqa: E402

# Published, not measured: the resources of node-problem-detector's own DaemonSet manifest
# (kubernetes/node-problem-detector deployment/node-problem-detector.yaml, v0.8.18).
NPD_LIMITS = "limit and request 80 MiB, 10m CPU (1 % of a core), from its DaemonSet manifest"


class ApiServerThread:
    """The in-memory API server on its own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ApiServer()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ApiServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def add_node(self, name: str) -> None:
        async def create() -> None:
            self.server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

        asyncio.run_coroutine_threadsafe(create(), self.loop).result(10)

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def export_tree(rev: str, dest: Path) -> str:
    """`git archive` ``rev`` into ``dest``; return its full commit id."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # As packaging/build-deb.sh ships it (the unit runs with PYTHONDONTWRITEBYTECODE=1).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", str(dest / "agent")], check=True)
    return commit


def shipped_python(work: Path) -> str:
    """A venv with nodemedic's runtime dependencies only, as packaging/build-deb.sh builds the
    one under /opt/nodemedic: without the test extras (structlog imports `rich` whenever it is
    installed, ~5 MiB). Each revision still runs its own exported tree (cwd comes first)."""
    venv = work / "shipped-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(REPO)], check=True)
    return str(venv / "bin" / "python")


def start_agent(tree: Path, cgroot: Path, kubelet_url: str, port: int, node: str,
                kubeconfig: Path | None, extra: list[str],
                python: str = sys.executable) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NODEMEDIC_LOG_LEVEL="warning", NODEMEDIC_LOG_FORMAT="json")
    env.update(f[len("env:"):].split("=", 1) for f in extra if f.startswith("env:"))  # type: ignore[misc]
    extra = [f for f in extra if not f.startswith("env:")]
    env.pop("NOTIFY_SOCKET", None)
    env.pop("PYTHONPATH", None)
    args = [python, "-m", "agent", "run", "--web.listen-address", f"127.0.0.1:{port}",
            "--path.cgroupfs", str(cgroot), "--kubelet.url", kubelet_url,
            "--collect.interval", "10s", "--rules.dir", str(tree / "rules"), "--node-name", node,
            # Its own state file: never the machine's /var/lib/nodemedic, never another agent's.
            "--state.dir", str(cgroot.parent / f"state-{port}"),
            *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *extra]
    # cwd=tree: `python -m agent` imports the exported revision, not the editable install.
    return subprocess.Popen(args, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def one_round(procs: dict[str, tuple[subprocess.Popen[bytes], str]], window: float,
              settle: float) -> dict[str, dict[str, Any]]:
    """Measure every running process over the same window."""
    for _, url in procs.values():
        wait_http(url, timeout=120)
    time.sleep(settle)
    gates = {k: _api_gate(url) for k, (_, url) in procs.items() if k != "node_exporter"}
    ps = {k: psutil.Process(p.pid) for k, (p, _) in procs.items()}
    c0 = {k: cpu_seconds(p) for k, p in ps.items()}
    rss: dict[str, list[float]] = {k: [] for k in ps}
    t0 = time.monotonic()
    while time.monotonic() - t0 < window:
        for _, url in procs.values():
            get(url)
        time.sleep(max(0.0, SCRAPE_EVERY / 2 - (time.monotonic() - t0) % (SCRAPE_EVERY / 2)))
        for k, p in ps.items():  # halfway between scrapes, at a random point of the tick
            rss[k].append(p.memory_info().rss / 2**20)
        time.sleep(max(0.0, SCRAPE_EVERY - (time.monotonic() - t0) % SCRAPE_EVERY))
    elapsed = time.monotonic() - t0
    out: dict[str, dict[str, Any]] = {
        k: {"rss_mib": statistics.median(rss[k]), "rss_max_mib": max(rss[k]),
            "cpu_s": cpu_seconds(p) - c0[k],
            "cpu_pct_core": (cpu_seconds(p) - c0[k]) / elapsed * 100} for k, p in ps.items()}
    for k, gate in gates.items():
        out[k]["api_gate"] = gate
    return out


def _api_gate(metrics_url: str) -> str:
    """The agent's own view of its API connection (/status remediation.gate.api)."""
    st = json.loads(get(metrics_url.replace("/metrics", "/status"), gzip_ok=False))
    return str(st.get("remediation", {}).get("gate", {}).get("api", "unknown"))


def markdown(meta: dict[str, Any], summary: dict[str, dict[str, float]]) -> str:
    labels = [label for label, _ in meta["revs"]]
    rows = [
        "# Footprint levers: one agent per revision, side by side, beside node_exporter",
        "",
        f"{meta['pods']} pods x 2 containers, default settings (10 s interval), a gzip scrape "
        f"every {SCRAPE_EVERY:g} s, API connected: {meta['api']}. "
        + ("Node as a live one: a pause sandbox cgroup per pod, counters moving every 10 s. "
           if meta.get("real_node") else "")
        + "Interpreter: "
        + ("a venv with the runtime dependencies only, as the .deb ships them"
           if meta.get("shipped") else "the bench's own venv (with the test extras: `rich`)")
        + f". {meta['rounds']} rounds of "
        f"{meta['window']:g} s, all processes in the same window; median of rounds. Machine: "
        f"{meta['cpus']} vCPU, load average {meta['load_start']:.1f} at start, "
        f"{meta['load_end']:.1f} at end (other work on the machine: CPU figures are paired but "
        "noisy; RSS is reliable).",
        "",
        "| lever (cumulative) | commit | RSS (median) | saved vs previous | RSS (max) "
        f"| CPU s in {meta['window']:g} s | CPU, % of a core | saved vs previous |",
        "|---|---|---|---|---|---|---|---|",
    ]
    prev: dict[str, float] | None = None
    for label, commit in meta["revs"]:
        s = summary[label]
        d_rss = f"{prev['rss_mib'] - s['rss_mib']:+.1f} MiB" if prev else ""
        d_cpu = f"{prev['cpu_pct_core'] - s['cpu_pct_core']:+.2f}" if prev else ""
        fl = " ".join(f"`{f}`" for f in meta.get("flags", {}).get(label, []))
        rows.append(f"| {label} | {commit[:10]} {fl} | {s['rss_mib']:.1f} MiB | {d_rss} "
                    f"| {s['rss_max_mib']:.1f} MiB | {s.get('cpu_s', float('nan')):.2f} "
                    f"| {s['cpu_pct_core']:.2f} % | {d_cpu} |")
        prev = s
    if "node_exporter" in summary:
        ne = summary["node_exporter"]
        rows.append(f"| prometheus-node-exporter (Debian) | | {ne['rss_mib']:.1f} MiB | "
                    f"| {ne['rss_max_mib']:.1f} MiB | {ne.get('cpu_s', float('nan')):.2f} "
                    f"| {ne['cpu_pct_core']:.2f} % | |")
    rows.append(f"| node-problem-detector (published limits) | | {NPD_LIMITS} | | | | | |")
    gates = sorted({str(r[k].get("api_gate")) for r in meta["per_round"] for k in labels})
    rows += ["", "API connection as the agents reported it (/status gate.api): "
             f"{', '.join(gates)}."]
    first, last = summary[labels[0]], summary[labels[-1]]
    rows += ["", f"Total ({labels[0]} → {labels[-1]}): {first['rss_mib']:.1f} → "
             f"{last['rss_mib']:.1f} MiB RSS, "
             f"{first['cpu_pct_core']:.2f} → {last['cpu_pct_core']:.2f} % of a core. "
             "Targets (issue 17): ≤ 80 MiB, ≤ 0.5 % at defaults with the API connected.",
             *([f"Skipped (revision not in this repository): {', '.join(meta['skipped'])}."]
               if meta.get("skipped") else []),
             "", f"Command: `{meta['command']}`"]
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", action="append", required=True, metavar="LABEL=GITREV[+FLAG...]",
                    help="a revision to run, in lever order (repeatable); flags after '+' are "
                         "given to that agent only (a lever that is a flag, e.g. "
                         "min-interval=HEAD+--cgroup.min-interval=30s; env:NAME=VALUE sets "
                         "its environment)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=float, default=120.0, help="seconds measured per round")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after start, unmeasured")
    ap.add_argument("--pods", type=int, default=250)
    ap.add_argument("--api", action="store_true", help="connect every agent to an API server")
    ap.add_argument("--real-node", action="store_true",
                    help="the node as a live one is: a sandbox (pause) cgroup per pod and the "
                         "kernel's counters moving every 10 s (bench/synthetic_node.py)")
    ap.add_argument("--agent-arg", action="append", default=[], help="extra flag for every agent")
    ap.add_argument("--name", default="")
    ap.add_argument("--shipped", action="store_true",
                    help="run the agents in a venv with the runtime dependencies only (as the "
                         ".deb ships them), not this interpreter's (which may have test extras)")
    args = ap.parse_args()
    name = args.name or ("footprint_levers_api" if args.api else "footprint_levers")
    revs: list[tuple[str, str]] = []
    flags: dict[str, list[str]] = {}
    for r in args.rev:
        label, spec = r.split("=", 1)
        rev, *flags[label] = spec.split("+")
        revs.append((label, rev))
    load_start = os.getloadavg()[0]
    skipped: list[str] = []
    per_round: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="nodemedic-levers-") as d:
        work = Path(d)
        commits: dict[str, str] = {}
        for label, rev in list(revs):
            try:
                commits[label] = export_tree(rev, work / "trees" / label)
            except subprocess.CalledProcessError:  # e.g. a squashed branch: not in history
                print(f"skipping {label}: revision {rev} not in this repository", file=sys.stderr)
                skipped.append(f"{label}={rev}")
                revs.remove((label, rev))
        python = shipped_python(work) if args.shipped else sys.executable
        with contextlib.ExitStack() as node:
            pid = node.enter_context(pause_process()) if args.real_node else None
            refs = build_node(work / "cgroup", pods=args.pods, containers=2,
                              layout="v2-systemd", sandbox_pid=pid)
            if args.real_node:
                node.callback(Advancer(work / "cgroup").start().stop)
            kubelet = node.enter_context(KubeletThread(pods_json(refs), summary_json(refs)))
            api = node.enter_context(ApiServerThread())
            kubeconfig = api.server.write_kubeconfig(work / "kubeconfig") if args.api else None
            for label, _ in revs:
                api.add_node(f"bench-{label}")
            for rnd in range(args.rounds):
                print(f"levers round {rnd + 1}/{args.rounds}", file=sys.stderr)
                order = [label for label, _ in revs]
                order = order[rnd % len(order):] + order[:rnd % len(order)]
                procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
                try:
                    for label in order:
                        port = free_port()
                        procs[label] = (start_agent(
                            work / "trees" / label, work / "cgroup", kubelet.url, port,
                            f"bench-{label}", kubeconfig, [*args.agent_arg, *flags[label]],
                            python),
                            f"http://127.0.0.1:{port}/metrics")
                    if Path(NODE_EXPORTER).exists():
                        port = free_port()
                        procs["node_exporter"] = (subprocess.Popen(
                            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                            f"http://127.0.0.1:{port}/metrics")
                    per_round.append(one_round(procs, args.window, args.settle))
                finally:
                    for proc, _ in procs.values():
                        proc.terminate()
                    for proc, _ in procs.values():
                        try:
                            proc.wait(10)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait(5)
    summary = {k: {f: statistics.median(r[k][f] for r in per_round)
                   for f in ("rss_mib", "rss_max_mib", "cpu_s", "cpu_pct_core")}
               for k in per_round[0]}
    meta = {"revs": [(label, commits[label]) for label, _ in revs], "flags": flags,
            "skipped": skipped,
            "rounds": args.rounds, "real_node": args.real_node,
            "window": args.window, "pods": args.pods, "api": args.api, "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": os.getloadavg()[0], "shipped": args.shipped,
            "per_round": per_round,
            "command": " ".join(["python", "bench/footprint_levers.py", *sys.argv[1:]])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"meta": meta, "summary": summary}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(meta, summary))
    print(markdown(meta, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
