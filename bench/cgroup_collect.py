"""CPU cost of one cgroup-collector tick on a 250-pod x 2-container node.

Run by `make bench` (bench/run_all.py) or directly: `python bench/cgroup_collect.py`. Writes
bench/results/cgroup_collect.json and .md. Measures, per layout, the process CPU time (all
threads: the collector reads in a worker thread) and wall time of ``CgroupCollector.collect()``
with kubelet attribution, plus its two halves (``scan``: discovery + file reads;
``build_families``: samples), and the control files one scan at the defaults opens with and
without limits from the cache (agent.collectors.cgroupfs.read.LimitCache), on:

- the synthetic node of bench/synthetic_node.py (v2 systemd driver, v1 cgroupfs driver) on disk;
- when run as root on a host with cgroup v1 controllers: the same 250 x 3 cgroups created for real
  under /sys/fs/cgroup/{memory,cpu,cpuacct,unified}/kubepods/... (hybrid mode, as on these VMs),
  because kernfs reads cost more than reads of plain files. They are removed afterwards.

Budget context: the whole agent must stay under 0.5% of one core at a 10 s interval, i.e.
50 ms of CPU per tick for everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthetic_node import build_node  # noqa: E402

from agent.collectors.base import CollectorContext  # noqa: E402
from agent.collectors.cgroup import CgroupCollector, build_families  # noqa: E402
from agent.collectors.cgroupfs import scan  # noqa: E402
from agent.collectors.cgroupfs.layout import ListingCache, detect, discover  # noqa: E402
from agent.collectors.cgroupfs.read import WATCHED_FILES, LimitCache  # noqa: E402
from agent.settings import Settings  # noqa: E402
from agent.structs.pods import PodRef  # noqa: E402

RESULTS = REPO / "bench" / "results"
PODS, CONTAINERS, ROUNDS = 250, 2, 30


class _Kubelet:
    def __init__(self, refs: list[PodRef]) -> None:
        self.refs = refs
        self.pods_generation = 1  # an unchanged pod list, as KubeletClient reports it


    async def pods(self) -> list[PodRef]:
        return self.refs


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": round(statistics.median(s) * 1000, 2),
        "p90_ms": round(s[int(len(s) * 0.9) - 1] * 1000, 2),
        "min_ms": round(s[0] * 1000, 2),
    }


def _measure(fn: Callable[[], object]) -> dict[str, Any]:
    fn()
    fn()  # warm caches (dentries, imports) as a long-running agent has them
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu": _stats(cpu), "wall": _stats(wall)}


def files_opened(fn: Callable[[], object]) -> int:
    """Control files ``fn`` opens (relative to a cgroup directory fd, as the reader does)."""
    real, n = os.open, 0

    def counting(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        nonlocal n
        n += dir_fd is not None
        return real(path, flags, mode, dir_fd=dir_fd)

    os.open = counting  # type: ignore[assignment]
    try:
        fn()
    finally:
        os.open = real
    return n


def bench_root(root: Path, refs: list[PodRef]) -> dict[str, Any]:
    # min-interval 0: every collect() reads (at the default 30 s most would re-serve the last).
    ctx = CollectorContext(Settings(path_cgroupfs=root, cgroup_min_interval=0),
                           kubelet=_Kubelet(refs))
    collector = CgroupCollector(ctx)
    loop = asyncio.new_event_loop()
    try:
        fams = loop.run_until_complete(collector.collect())
        out: dict[str, Any] = {
            "collect": _measure(lambda: loop.run_until_complete(collector.collect())),
        }
    finally:
        loop.close()
    result = scan(root)
    pods = {r.uid: r for r in refs}
    out["scan"] = _measure(lambda: scan(root))
    cache = ListingCache(full_every=10**9)  # every read after the first served from the cache
    out["scan_cached"] = _measure(lambda: scan(root, cache=cache))
    layout = detect(str(root), WATCHED_FILES)
    out["discover"] = _measure(lambda: discover(layout))
    dcache = ListingCache(full_every=10**9)
    out["discover_cached"] = _measure(lambda: discover(layout, dcache))
    out["build_families"] = _measure(lambda: build_families(result, pods))
    # At the defaults (--cgroup.psi=pod, listings cached): every limit file read (as on a pod
    # list change, every 10th read, or without the kubelet) vs limits from the cache.
    dflt = ListingCache(full_every=10**9)
    out["scan_default"] = _measure(lambda: scan(root, psi="pod", cache=dflt))
    limits = LimitCache(full_every=10**9)
    lcache = ListingCache(full_every=10**9)
    out["scan_default_limits_cached"] = _measure(
        lambda: scan(root, psi="pod", cache=lcache, limits=limits))
    out["files_per_scan"] = files_opened(lambda: scan(root, psi="pod", cache=dflt))
    out["files_per_scan_limits_cached"] = files_opened(
        lambda: scan(root, psi="pod", cache=lcache, limits=limits))
    out["cgroups"] = len(result.stats)
    out["series"] = sum(len(f.samples) for f in fams)
    out["mode"] = result.layout.mode
    out["read_errors"] = sum(result.errors.values())
    return out


@contextmanager
def kernel_node(pods: int, containers: int) -> Iterator[tuple[Path, list[PodRef]]]:
    """250 x (1 + 2) empty cgroups at cgroupfs-driver paths in every real hierarchy."""
    root = Path("/sys/fs/cgroup")
    hierarchies = [root / h for h in ("memory", "cpu", "cpuacct", "unified") if (root / h).is_dir()]
    created: list[Path] = []
    refs: list[PodRef] = []
    try:
        for i in range(pods):
            uid = str(uuid.uuid4())
            cids = {uuid.uuid4().hex + uuid.uuid4().hex: f"c{j}" for j in range(containers)}
            refs.append(PodRef(uid, "bench", f"pod-{i}", "Burstable", "Running", cids))
            for h in hierarchies:
                for rel in ("kubepods", "kubepods/burstable", f"kubepods/burstable/pod{uid}",
                            *(f"kubepods/burstable/pod{uid}/{c}" for c in cids)):
                    d = h / rel
                    if not d.exists():
                        d.mkdir()
                        created.append(d)
        yield root, refs
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError as exc:
                print(f"could not remove {d}: {exc}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    results: dict[str, Any] = {
        "pods": PODS,
        "containers_per_pod": CONTAINERS,
        "rounds": ROUNDS,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "layouts": {},
    }
    for layout in ("v2-systemd", "v1-cgroupfs"):
        with tempfile.TemporaryDirectory(prefix="nodemedic-bench-") as tmp:
            refs = build_node(Path(tmp), PODS, CONTAINERS, layout)
            results["layouts"][layout] = bench_root(Path(tmp), refs)
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/memory").is_dir():
        with kernel_node(PODS, CONTAINERS) as (root, refs):
            results["layouts"]["kernel-hybrid"] = bench_root(root, refs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cgroup_collect.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "## cgroup collector: one tick at 250 pods x 2 containers",
        "",
        f"CPU time (all threads) and wall time of one `collect()` with kubelet attribution, "
        f"median / p90 of {ROUNDS} rounds after 2 warm-up rounds; `scan` = discovery + file "
        "reads, `build` = turning stats into samples. Budget for the whole agent: 50 ms CPU "
        "per 10 s tick (0.5% of a core).",
        "",
        "| tree | mode | cgroups | series | collect CPU ms | collect wall ms | scan CPU ms "
        "| scan CPU ms, listings cached | discovery CPU ms | discovery, cached | build CPU ms "
        "| files per default scan | ms | with limits cached: files | ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["layouts"].items():
        c = r["collect"]
        lines.append(
            f"| {name} | {r['mode']} | {r['cgroups']} | {r['series']} "
            f"| {c['cpu']['median_ms']} / {c['cpu']['p90_ms']} "
            f"| {c['wall']['median_ms']} / {c['wall']['p90_ms']} "
            f"| {r['scan']['cpu']['median_ms']} | {r['scan_cached']['cpu']['median_ms']} "
            f"| {r['discover']['cpu']['median_ms']} | {r['discover_cached']['cpu']['median_ms']} "
            f"| {r['build_families']['cpu']['median_ms']} "
            f"| {r['files_per_scan']} | {r['scan_default']['cpu']['median_ms']} "
            f"| {r['files_per_scan_limits_cached']} "
            f"| {r['scan_default_limits_cached']['cpu']['median_ms']} |"
        )
    lines += [
        "",
        "`kernel-hybrid`: empty cgroups created in the real v1 memory/cpu/cpuacct and v2 unified "
        "hierarchies (present only when run as root); the synthetic trees are plain files. "
        "`collect` is the collector as it runs (its listing cache re-lists everything every 6th "
        "read, its limit cache re-reads every limit file every 10th read and after a pod-list "
        "change); the cached columns serve every listing after the first from the cache (a stat "
        "per directory instead of a scandir). The last four columns: one read at the defaults "
        "(`--cgroup.psi=pod`, listings cached), files opened and CPU ms, reading every limit "
        "file (as before the limit cache, and now on a pod-list change or every 10th read) and "
        "with limits from the cache (the other reads).",
    ]
    (RESULTS / "cgroup_collect.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
