"""`nodemedic run` start -> ready, paired between git revisions: wall time and CPU time used.

Run directly (not part of `make bench`: it compares revisions), e.g.

    python bench/start_ready.py --rev before=main --rev after=HEAD --runs 10

Each revision is exported with `git archive` (bench/footprint_levers.py) and started as
`python -m agent run` on the synthetic 250-pod node with the fake kubelet (bench/footprint.py),
the revisions alternating run by run so a busy machine slows them alike. Per start: the wall
time from spawn to /readyz answering 200 (polled every 10 ms) and the process's user + system
CPU seconds at that moment, which contention inflates far less than wall time (the machine is
shared). Each tree is byte-compiled first as packaging/build-deb.sh does (the unit runs with
PYTHONDONTWRITEBYTECODE=1, so without shipped .pyc files every start would compile ~95 modules);
``--source`` measures without them. Writes bench/results/<name>.json and .md (default
start_ready).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from footprint import RESULTS, KubeletThread, free_port  # noqa: E402
from footprint_levers import export_tree  # noqa: E402
from synthetic_node import build_node, pods_json, summary_json  # noqa: E402


def compile_tree(tree: Path) -> None:
    """Byte-compile like packaging/build-deb.sh (unchecked hashes: no stat per import)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", str(tree / "agent")], check=True)


def start_once(tree: Path, cgroot: Path, kubelet_url: str) -> tuple[float, float]:
    port = free_port()
    env = dict(os.environ, NODEMEDIC_LOG_LEVEL="warning", NODEMEDIC_LOG_FORMAT="json")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("PYTHONPATH", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--web.listen-address", f"127.0.0.1:{port}",
         "--path.cgroupfs", str(cgroot), "--kubelet.url", kubelet_url,
         "--rules.dir", str(tree / "rules"), "--node-name", "bench-node",
         "--state.dir", str(cgroot.parent / f"state-{port}")],
        cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p = psutil.Process(proc.pid)
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() - t0 < 60:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        t = p.cpu_times()
                        return time.monotonic() - t0, t.user + t.system
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.01)
        raise RuntimeError("agent not ready within 60 s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", action="append", required=True, metavar="LABEL=GITREV")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--name", default="start_ready")
    ap.add_argument("--source", action="store_true",
                    help="do not byte-compile the trees (every start compiles from source)")
    args = ap.parse_args()
    revs = [tuple(r.split("=", 1)) for r in args.rev]
    load_start = os.getloadavg()[0]
    per: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in revs}
    with tempfile.TemporaryDirectory(prefix="nodemedic-ready-") as d:
        work = Path(d)
        commits = {label: export_tree(rev, work / "trees" / label) for label, rev in revs}
        if not args.source:
            for label, _ in revs:
                compile_tree(work / "trees" / label)
        refs = build_node(work / "cgroup", pods=250, containers=2, layout="v2-systemd")
        with KubeletThread(pods_json(refs), summary_json(refs)) as kubelet:
            for label, _ in revs:  # warm the disk cache and the .pyc files of every tree
                start_once(work / "trees" / label, work / "cgroup", kubelet.url)
            for i in range(args.runs):
                order = revs if i % 2 == 0 else revs[::-1]
                for label, _ in order:
                    per[label].append(start_once(work / "trees" / label, work / "cgroup",
                                                 kubelet.url))
    summary = {label: {"wall_s_median": statistics.median(w for w, _ in v),
                       "wall_s_min": min(w for w, _ in v),
                       "cpu_s_median": statistics.median(c for _, c in v),
                       "cpu_s_min": min(c for _, c in v)} for label, v in per.items()}
    meta = {"revs": [(label, commits[label]) for label, _ in revs], "runs": args.runs,
            "byte_compiled": not args.source,
            "cpus": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg()[0],
            "command": " ".join(["python", "bench/start_ready.py", *sys.argv[1:]])}
    rows = [
        "## start -> ready, paired between revisions",
        "",
        "`nodemedic run` on the synthetic 250-pod node, no API server, "
        + ("no .pyc files (compiled at every start)" if args.source else "byte-compiled as shipped")
        + f", {args.runs} alternating "
        f"starts per revision after one warm-up each; median (min). Wall: spawn to /readyz 200; "
        f"CPU: the process's user + system seconds at that moment. Machine: {meta['cpus']} vCPU, "
        f"load average {load_start:.1f} at start, {meta['load_end']:.1f} at end (shared: wall "
        "time grows with the load, CPU time much less). Goal: ≤ 1 s on a warm disk.",
        "",
        "| revision | commit | wall s | CPU s |",
        "|---|---|---|---|",
    ]
    for label, commit in meta["revs"]:
        s = summary[label]
        rows.append(f"| {label} | {commit[:10]} | {s['wall_s_median']:.2f} ({s['wall_s_min']:.2f})"
                    f" | {s['cpu_s_median']:.2f} ({s['cpu_s_min']:.2f}) |")
    rows += ["", f"Command: `{meta['command']}`"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": per}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
