"""Run every benchmark and assemble bench/results/REPORT.md and REPORT.json.

Called by `make bench`. Each benchmark is a script in bench/ that writes
bench/results/<name>.json and <name>.md; this runner executes them one after another (so they do
not compete for the 2 cores), records how long each took and whether it failed, then stitches
their Markdown into one report with the machine it ran on. `--only NAME` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
# Order: cheap first; the report keeps this order.
BENCHMARKS = (
    "footprint",
    "footprint_cgroup_every_tick",  # same script with --cgroup.min-interval=0s (see VARIANTS)
    "footprint_psi_container",  # same script with --cgroup.psi=container
    "footprint_old_defaults",  # both: the defaults before issue 17's round 3
    "footprint_levers_round6_api",  # ~12 min: the levers since round 5 side by side, API connected
    "footprint_round6_alone",  # ~10 min: the current revision alone beside node_exporter, API
    "footprint_round7_real_node",  # ~10 min: stop 26's end and HEAD on the node as a live one
    "cgroup_collect",
    "rules_eval",
    "web_auth",
    "conntrack_parse",
    "conntrack_kernel",  # root: a real 262,144-entry table in a scratch network namespace
    "problems_burst",  # ~3 min: 100,000 log lines/s for 60 s through the problem detector
    "iptables_save_cost",
    "apiserver_scale",
    "failover",
    "failover_real",  # ~7 min: the real control plane, mostly Kubernetes' own 300 s wait
    "leader_rss",  # ~3 min: `nodemedic run` as leader of 1,000 nodes at defaults
    "fuzz",  # ~12 min: atheris/hypothesis targets plus the stress suite at its long budget
    "soak",  # 30 min by default; `python bench/soak.py --minutes 10` for a shorter one
)


# Results of benchmarks that compare git revisions (run by hand, see each script's docstring):
# not rerun by `make bench`, but kept in the report beside the others when their files exist.
COMPARISONS = (
    "footprint_levers_round3_api",  # round 3's levers (the commits are on main's history)
    "footprint_levers_round4_api",
    "footprint_levers_round5_api",
    "footprint_levers_round5_arena",
    "footprint_levers_round3",
    "footprint_levers_probe",  # round 3's intermediate paired run (min-interval as a flag)
    "footprint_levers_pair",
    "footprint_levers_api",
    "footprint_levers_round2",
    "footprint_levers_round2_api",
    "start_ready",
    "start_ready_source",
    "start_ready_round3",
)


# Result name -> (script, extra arguments) for benchmarks that reuse another's script.
# Issue 17, round 3: each lever as the commit that made it (they are on main's history; a
# revision that does not resolve is skipped with a note) or as a flag on the current checkout,
# then the flags still off by default; agents in a venv with the runtime dependencies only.
ROUND3_LEVERS = [
    "--rev", "base=9691093",
    "--rev", "raw-watch=52a6fcf",
    "--rev", "render-members=18f11b5",
    "--rev", "kubelet-ssl=d4a26b0",
    "--rev", "lazy-core-v1=930e3fc",
    "--rev", "psi-pod-default=e1fa09e",
    "--rev", "min-interval-30s-default=ba12bc8",
    "--rev", "kubelet-pods-digest=0725aba",
    "--rev", "current=HEAD",
    "--rev", "arena-max-1=HEAD+env:MALLOC_ARENA_MAX=1",  # not a default: a packaging choice
]
# Issue 17, round 6: the levers since round 5, each as the commit that made it. Agents on 2 cores
# load each other (2620127 measured 0.59 % beside one other agent, 0.49 % beside four on a quieter
# machine, and round 5's 0.84 % for a near-identical revision beside three under load): the
# table's savings are paired; footprint_round6_alone is the current revision on its own.
ROUND6_LEVERS = [
    "--rev", "base=3a4cf68",  # round 5's base (the start of stop 25)
    "--rev", "summary-30s=bb0aff4",  # --kubelet.summary-min-interval=30s
    "--rev", "stop-25=2620127",  # + rules carry-over, pod families, limit cache, grace floor
    "--rev", "msgspec-summary=16af7a4",  # + /stats/summary decoded to the fields read
    "--rev", "current=HEAD",  # + unmoved young series' rates not recomputed, one hand-off
]
# Round 7: the reference node made honest (a pause sandbox cgroup per pod as containerd makes
# it, counters moving every 10 s); stop 26's end read every sandbox as a container.
ROUND7_REAL_NODE = [
    "--rev", "stop-26=a196085",  # stop 26's end: every sandbox read and exported as a container
    "--rev", "current=HEAD",  # + sandboxes counted, not read
]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "footprint_levers_round3_api": ("footprint_levers", [
        *ROUND3_LEVERS, "--api", "--shipped", "--rounds", "2", "--window", "150",
        "--name", "footprint_levers_round3_api"]),
    "footprint_levers_round6_api": ("footprint_levers", [
        *ROUND6_LEVERS, "--api", "--shipped", "--rounds", "3", "--window", "150",
        "--name", "footprint_levers_round6_api"]),
    "footprint_round7_real_node": ("footprint_levers", [
        *ROUND7_REAL_NODE, "--api", "--shipped", "--real-node", "--rounds", "3",
        "--window", "150", "--name", "footprint_round7_real_node"]),
    "footprint_round6_alone": ("footprint_levers", [
        "--rev", "current=HEAD", "--api", "--shipped", "--rounds", "3", "--window", "150",
        "--name", "footprint_round6_alone"]),
    "footprint_cgroup_every_tick": ("footprint", ["--agent-arg=--cgroup.min-interval=0s",
                                                  "--name", "footprint_cgroup_every_tick"]),
    "footprint_psi_container": ("footprint", ["--agent-arg=--cgroup.psi=container",
                                              "--name", "footprint_psi_container"]),
    "footprint_old_defaults": ("footprint", ["--agent-arg=--cgroup.psi=container",
                                             "--agent-arg=--cgroup.min-interval=0s",
                                             "--name", "footprint_old_defaults"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--report-only", action="store_true",
                    help="assemble REPORT.md/json from the saved results without running")
    args = ap.parse_args()
    names = args.only or [n for n in BENCHMARKS
                          if (BENCH / f"{VARIANTS.get(n, (n, []))[0]}.py").exists()]
    RESULTS.mkdir(exist_ok=True)
    ran: dict[str, dict[str, object]] = {}
    for name in [] if args.report_only else names:
        print(f"== {name}", file=sys.stderr, flush=True)
        start = time.monotonic()
        script, extra = VARIANTS.get(name, (name, []))
        res = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), *extra],
                             cwd=BENCH.parent, check=False)
        ran[name] = {"exit_code": res.returncode, "seconds": round(time.monotonic() - start, 1)}
    sections = []
    for name in (*BENCHMARKS, *COMPARISONS):
        md = RESULTS / f"{name}.md"
        if md.exists():
            sections.append(md.read_text().strip())
    machine = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    head = [
        "# nodemedic benchmark report",
        "",
        f"Generated by `make bench` on {machine['when']} — Python {machine['python']}, "
        f"kernel {machine['kernel']}, {machine['cpus']} vCPU. Figures are medians of several "
        "runs with (min–max) unless a section says otherwise; references were measured in the "
        "same run or are cited with their source.",
        "",
        "Cited references for the failover figures (bench/failover.py measures nodemedic's "
        "overhead above its detection window): with defaults nodemedic cordons and evicts "
        "≈ 40 s (`--failover.node-grace`) + the measured overhead after a node dies; Kubernetes "
        "alone marks it NotReady after 40–50 s (`node-monitor-grace-period`) and evicts after "
        "the 300 s `tolerationSeconds` (≈ 5.8 min); medik8s NodeHealthCheck waits 300 s plus a "
        "~180 s safe-reboot window; GKE/AKS auto-repair acts after ~10 min (sources and the "
        "full comparison: README, \"Defaults, next to the others\").",
        "",
        *(["| benchmark | exit | seconds |", "|---|---|---|",
           *[f"| {n} | {r['exit_code']} | {r['seconds']} |" for n, r in ran.items()], ""]
          if ran else ["Assembled from the saved results of each benchmark (`--report-only`).",
                       ""]),
    ]
    (RESULTS / "REPORT.md").write_text("\n".join(head) + "\n" + "\n\n".join(sections) + "\n")
    merged: dict[str, object] = {"machine": machine, "ran": ran}
    for name in (*BENCHMARKS, *COMPARISONS):
        js = RESULTS / f"{name}.json"
        if js.exists():
            merged[name] = json.loads(js.read_text())
    (RESULTS / "REPORT.json").write_text(json.dumps(merged, indent=2) + "\n")
    for name in ("footprint_levers_round6_api", "footprint_round6_alone",
                 "footprint_round7_real_node"):
        md = RESULTS / f"{name}.md"
        if md.exists():  # the lever table (issue 17): each lever's saving beside node_exporter
            print(md.read_text())
    print(f"wrote {RESULTS / 'REPORT.md'}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in ran.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
