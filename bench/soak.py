"""Soak: one agent on a simulated 250-pod node under continuous scraping; is anything growing?

Run by `make bench` (bench/run_all.py, 30 minutes by default) or directly:
`python bench/soak.py --minutes 10`. Writes bench/results/soak.json and bench/results/soak.md.

Set-up: bench/synthetic_node.py builds 250 pods x 2 containers (cgroup v2, systemd driver); the
fake kubelet (nodemedic_sim.fake_kubelet, on its own thread as in bench/footprint.py) serves the
matching /pods. The agent runs as a child process (``--child``: the same Agent that `nodemedic
run` builds, plus one sampler task that writes ``len(asyncio.all_tasks())`` to a file, because
/status only lists supervised tasks) with the default rules, ticking every 2 s. The parent
scrapes /metrics (gzip) once a second, /status and /healthz every 5 s, and churns the node every
minute: 10 pods get new UIDs (their cgroup directories are renamed), so per-pod caches see series
come and go as on a real node. Every 30 s it samples RSS, open fds, threads, asyncio tasks and the
series count. Growth is reported from the first sample after a warm-up (2 min, or 20% of shorter
runs) to the last, plus the least-squares slope per hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from footprint import KubeletThread, free_port, get, wait_http  # noqa: E402
from synthetic_node import build_node, pods_json, summary_json  # noqa: E402

RESULTS = REPO / "bench" / "results"
SAMPLE_EVERY = 30.0
CHURN_EVERY = 60.0
CHURN_PODS = 10
# "Flat" means: after warm-up, growth extrapolated to a day stays under these.
FLAT_RSS_MIB = 2.0  # median of the last third vs the first third after warm-up
FLAT_FDS = 3
FLAT_TASKS = 3


# ---- child: the agent plus a task counter ----------------------------------------------------
def child(argv: list[str], task_file: Path) -> int:
    """Run the agent exactly as `nodemedic run` does, with a task-count sampler beside it."""
    from agent.cli import _collector_names, make_parser
    from agent.runtime.daemon import Agent
    from agent.runtime.logging import configure_logging
    from agent.settings import load_settings

    args = make_parser().parse_args(["run", *argv])
    settings = load_settings(args, collector_names=_collector_names(), base_dir=Path.cwd())
    configure_logging(settings.log_level, settings.log_format)
    agent = Agent(settings, handle_signals=True)

    async def sampler() -> None:
        # The count swings by ~10 within a tick (one task per collector, per request), so
        # report the minimum over each 5 s window: a leak raises the floor.
        while True:
            seen = []
            for _ in range(20):
                seen.append(len(asyncio.all_tasks()) - 1)  # minus this sampler
                await asyncio.sleep(0.25)
            tmp = task_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"tasks_min": min(seen), "tasks_max": max(seen)}))
            tmp.replace(task_file)

    async def main() -> int:
        s = asyncio.create_task(sampler())
        try:
            return await agent.run()
        finally:
            s.cancel()

    return asyncio.run(main())


# ---- parent ------------------------------------------------------------------------------------
def churn(cgroot: Path, rng: random.Random) -> int:
    """Give CHURN_PODS pods new UIDs by renaming their cgroup directories."""
    pods = [p for p in cgroot.rglob("*-pod*.slice") if p.is_dir()]
    renamed = 0
    for p in rng.sample(pods, min(CHURN_PODS, len(pods))):
        prefix = p.name.split("-pod", 1)[0]
        new = p.with_name(f"{prefix}-pod{str(uuid.uuid4()).replace('-', '_')}.slice")
        try:
            p.rename(new)
            renamed += 1
        except OSError:
            continue
    return renamed


def _thirds_growth(values: list[float]) -> float:
    if len(values) < 3:
        return values[-1] - values[0] if values else 0.0
    k = len(values) // 3
    return statistics.median(values[-k:]) - statistics.median(values[:k])


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) \
        / den * 3600


def sample(p: psutil.Process, base: str, task_file: Path, t0: float) -> dict[str, Any]:
    st = json.loads(get(base + "/status", gzip_ok=False))
    try:
        doc = json.loads(task_file.read_text())
        tasks, tasks_max = int(doc["tasks_min"]), int(doc["tasks_max"])
    except (OSError, ValueError, KeyError):
        tasks = tasks_max = -1
    return {
        "t": round(time.monotonic() - t0, 1),
        "rss_mib": round(p.memory_info().rss / 2**20, 2),
        "fds": p.num_fds(),
        "threads": p.num_threads(),
        "asyncio_tasks": tasks,
        "asyncio_tasks_peak": tasks_max,
        "supervised_tasks": len(st.get("tasks", [])),
        "series_cgroup": st.get("collectors", {}).get("cgroup", {}).get("series", 0),
        "tick_ms": round(1000 * float(st.get("last_tick", {}).get("duration_seconds", 0)), 1),
    }


def run(minutes: float, interval: str) -> dict[str, Any]:
    duration = minutes * 60
    warmup = min(120.0, duration * 0.2)
    rng = random.Random(8)
    with tempfile.TemporaryDirectory(prefix="nodemedic-soak-") as tmp:
        work = Path(tmp)
        cgroot = work / "cgroup"
        refs = build_node(cgroot, pods=250, containers=2, layout="v2-systemd")
        task_file = work / "tasks.json"
        with KubeletThread(pods_json(refs, "soak-node"), summary_json(refs, "soak-node")) as kt:
            port = free_port()
            env = dict(os.environ, NODEMEDIC_LOG_LEVEL="warning", NODEMEDIC_LOG_FORMAT="json")
            env.pop("NOTIFY_SOCKET", None)
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__)), "--child", str(task_file), "--",
                 "--web.listen-address", f"127.0.0.1:{port}", "--path.cgroupfs", str(cgroot),
                 "--kubelet.url", kt.url, "--collect.interval", interval,
                 "--rules.dir", str(REPO / "rules"), "--node-name", "soak-node",
                 "--state.dir", str(work / "state")],
                env=env, stdout=subprocess.DEVNULL, stderr=(work / "agent.log").open("wb"),
            )
            base = f"http://127.0.0.1:{port}"
            samples: list[dict[str, Any]] = []
            counts = {"scrapes": 0, "scrape_errors": 0, "healthz_not_ok": 0, "churned_pods": 0}
            try:
                try:
                    wait_http(base + "/metrics", timeout=180)
                except RuntimeError:
                    sys.stderr.write((work / "agent.log").read_text()[-3000:])
                    raise
                p = psutil.Process(proc.pid)
                t0 = time.monotonic()
                next_sample = next_churn = next_probe = t0
                while (now := time.monotonic()) - t0 < duration:
                    if proc.poll() is not None:
                        raise RuntimeError(f"agent exited with {proc.returncode}")
                    try:
                        get(base + "/metrics")
                        counts["scrapes"] += 1
                    except OSError:
                        counts["scrape_errors"] += 1
                    if now >= next_probe:
                        try:
                            get(base + "/healthz", gzip_ok=False)
                        except OSError:
                            counts["healthz_not_ok"] += 1
                        next_probe += 5
                    if now >= next_churn and now > t0:
                        counts["churned_pods"] += churn(cgroot, rng)
                        next_churn += CHURN_EVERY
                    elif now >= next_churn:
                        next_churn += CHURN_EVERY
                    if now >= next_sample:
                        samples.append(sample(p, base, task_file, t0))
                        print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
                        next_sample += SAMPLE_EVERY
                    time.sleep(1.0)
                samples.append(sample(p, base, task_file, t0))
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    return summarise(samples, warmup, {"minutes": minutes, "interval": interval, **counts})


def summarise(
    samples: list[dict[str, Any]], warmup: float, meta: dict[str, Any]
) -> dict[str, Any]:
    """Figures and verdicts from the samples (also used by --render on a saved soak.json)."""
    steady = [s for s in samples if s["t"] >= warmup] or samples
    first, last = steady[0], samples[-1]
    ts = [s["t"] for s in steady]
    out: dict[str, Any] = {
        "pods": 250, "containers": 2, "warmup_seconds": warmup, "samples": samples, **meta,
        "rss_mib": {"start": samples[0]["rss_mib"], "after_warmup": first["rss_mib"],
                    "end": last["rss_mib"], "max": max(s["rss_mib"] for s in samples),
                    "growth_after_warmup": round(last["rss_mib"] - first["rss_mib"], 2),
                    # Robust to GC sawtooth: median of the last third minus the first third.
                    "median_growth": round(_thirds_growth([s["rss_mib"] for s in steady]), 2),
                    "slope_per_hour": round(slope_per_hour(ts, [s["rss_mib"] for s in steady]),
                                            2)},
    }
    for key in ("fds", "threads", "asyncio_tasks", "asyncio_tasks_peak", "series_cgroup"):
        vals = [s[key] for s in steady]
        out[key] = {"after_warmup": first[key], "end": last[key], "min": min(vals),
                    "max": max(vals)}
    out["flat"] = {
        "rss": out["rss_mib"]["median_growth"] < FLAT_RSS_MIB,
        "fds": out["fds"]["max"] - out["fds"]["min"] <= FLAT_FDS,
        "asyncio_tasks": out["asyncio_tasks"]["max"] - out["asyncio_tasks"]["min"] <= FLAT_TASKS,
    }
    return out


def markdown(r: dict[str, Any]) -> str:
    rss = r["rss_mib"]

    def row(name: str, key: str, bound: str) -> str:
        v = r[key]
        return (f"| {name} | {v['after_warmup']} | {v['end']} | {v['min']}–{v['max']} | "
                f"{bound} | {'flat' if r['flat'].get(key, True) else '**GROWING**'} |")

    return "\n".join([
        "# Soak: one agent, simulated 250-pod node, continuous scraping",
        "",
        f"{r['minutes']:g} minutes, tick every {r['interval']}, /metrics scraped every second "
        f"({r['scrapes']} scrapes, {r['scrape_errors']} errors), /healthz probed every 5 s "
        f"({r['healthz_not_ok']} failures), {r['churned_pods']} pods given new UIDs (10 a "
        f"minute). Samples every {SAMPLE_EVERY:g} s; warm-up {r['warmup_seconds']:g} s excluded.",
        "",
        "| figure | after warm-up | end | range | flat when | verdict |",
        "|---|---|---|---|---|---|",
        f"| RSS (MiB) | {rss['after_warmup']} | {rss['end']} | max {rss['max']} | "
        f"median of last third − first third < {FLAT_RSS_MIB:g} MiB "
        f"({rss['median_growth']:+.2f}; least-squares slope {rss['slope_per_hour']:+.2f} MiB/h) "
        f"| {'flat' if r['flat']['rss'] else '**GROWING**'} |",
        row("open fds", "fds", f"range ≤ {FLAT_FDS}"),
        row("asyncio tasks (floor of each 5 s)", "asyncio_tasks", f"range ≤ {FLAT_TASKS}"),
        row("asyncio tasks (peak of each 5 s)", "asyncio_tasks_peak", "—"),
        row("threads", "threads", "—"),
        row("cgroup series", "series_cgroup", "—"),
        "",
        "Reference: bench/footprint.py gives the steady RSS of a fresh agent on the same node.",
    ])


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        rest = sys.argv[3:]
        return child(rest[1:] if rest[:1] == ["--"] else rest, Path(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", default="2s", help="agent --collect.interval")
    ap.add_argument("--render", action="store_true",
                    help="recompute figures and soak.md from the saved soak.json, no run")
    args = ap.parse_args()
    if args.render:
        old = json.loads((RESULTS / "soak.json").read_text())
        meta = {k: old[k] for k in ("minutes", "interval", "scrapes", "scrape_errors",
                                    "healthz_not_ok", "churned_pods")}
        res = summarise(old["samples"], old["warmup_seconds"], meta)
    else:
        res = run(args.minutes, args.interval)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "soak.md").write_text(markdown(res) + "\n")
    print(markdown(res))
    return 0 if all(res["flat"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
