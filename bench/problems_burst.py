"""A burst of kernel-style log lines through the problem detector: RSS, CPU, drops.

Run by `make bench` (bench/run_all.py) or directly: `python bench/problems_burst.py
[--seconds 60]`. Writes bench/results/problems_burst.json and .md.

A writer process appends 100,000 lines/s (in 10 ms batches) to a log file and rotates it every
2,000,000 lines (rename + new file: the tailer drains the old one); 0.1% of the lines are
problems in the kernel's wording (OOM kill with its oom-kill line, EXT4 error, Xid, conntrack
full), the rest realistic noise. The detector (no API server: problems are only counted) runs
in a second process with the shipped kernel and hardware definitions of problems/ moved onto
that file source (/dev/kmsg itself is rate-limited by the kernel and cannot take this load).
Cases:
- ``default``: the default --problems.max-lines-per-second (20,000): the excess is dropped and
  counted as "rate"; memory must stay flat;
- ``unlimited``: the rate limit above the offered load: CPU per 1,000 lines matched, and whether
  the consumer keeps up (queue drops);
- ``below-limit``: 10,000 lines/s with the default limit: nothing may be lost.
RSS is sampled every second in the detector process; the bound stated is max - min after a 5 s
warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RSS_BOUND_MIB = 16.0

WRITER = r"""
import os, sys, time
path, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
noise = [
    "IPv6: ADDRCONF(NETDEV_CHANGE): veth%05d: link becomes ready",
    "cni0: port %d(veth1234abcd) entered forwarding state",
    "audit: type=1400 audit(1700000000.%03d:42): apparmor=\"STATUS\" operation=\"profile_load\"",
    "EXT4-fs (sda1): mounted filesystem with ordered data mode. Quota mode: none. %d",
    "device veth%05d entered promiscuous mode",
]
problems = [
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=x,mems_allowed=0,"
    "oom_memcg=/kubepods/burstable/pod0b7d3c44-1f43-4b7a-9d2c-1c2a3b4c5d6e/c,"
    "task_memcg=/kubepods/burstable/pod0b7d3c44-1f43-4b7a-9d2c-1c2a3b4c5d6e/c,"
    "task=hog,pid=%d,uid=0",
    "Memory cgroup out of memory: Killed process %d (hog) total-vm:540000kB, "
    "anon-rss:65000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0",
    "EXT4-fs error (device sdb1): ext4_find_entry:1455: inode #%d: comm ls: "
    "reading directory lblock 0",
    "NVRM: Xid (PCI:0000:3b:00): 13, pid=%d, name=python, Graphics Exception",
    "nf_conntrack: nf_conntrack: table full, dropping packet %d",
]
batch = rate // 100
n = 0
fh = open(path, "a")
start = time.monotonic()
while time.monotonic() - start < seconds:
    buf = []
    for _ in range(batch):
        n += 1
        if n % 1000 == 0:
            buf.append(problems[(n // 1000) % len(problems)] % (n % 32768) + "\n")
        else:
            buf.append(noise[n % len(noise)] % (n % 1000) + "\n")
    fh.write("".join(buf))
    fh.flush()
    if n % 2_000_000 < batch:
        fh.close()
        os.replace(path, path + ".1")
        fh = open(path, "a")
    due = start + n / rate
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
fh.close()
print(n, flush=True)
"""

DETECTOR = r"""
import asyncio, dataclasses, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import psutil
from agent.problems.detector import DetectorOptions, ProblemDetector
from agent.problems.loader import load_problems
from agent.problems.model import LogSource, ProblemSet
path, rate, seconds = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
shipped = load_problems(sys.argv[1] + "/problems")
mons = tuple(dataclasses.replace(m, source=LogSource("filelog", path, lookback=0))
             for m in shipped.log_monitors if m.source.plugin == "kmsg")
async def main():
    d = ProblemDetector(ProblemSet(mons), DetectorOptions(node="bench",
                        max_lines_per_second=rate), None)
    await d.start()
    print("ready", flush=True)
    me = psutil.Process()
    rss, t0, cpu0 = [], time.monotonic(), time.process_time()
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(1.0)
        rss.append(me.memory_info().rss / 2**20)
    await asyncio.sleep(1.0)  # let the consumer finish what was queued (idle otherwise)
    cpu = time.process_time() - cpu0
    (st,) = d.stats.values()
    await d.close()
    print(json.dumps({"rss_mib": rss, "cpu_s": cpu, "read": st.read, "matched": st.matched,
                      "dropped": st.dropped, "problems": dict(d.counters.problems),
                      "workload": sum(d.counters.workload.values())}), flush=True)
asyncio.run(main())
"""


def run_case(name: str, rate: int, limit: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "burst.log")
        open(path, "w").close()
        det = subprocess.Popen([sys.executable, "-c", DETECTOR, str(REPO), path, str(limit),
                                str(seconds + 1)], stdout=subprocess.PIPE, text=True)
        assert det.stdout is not None
        assert det.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        w = subprocess.run([sys.executable, "-c", WRITER, path, str(rate), str(seconds)],
                           capture_output=True, text=True, check=True)
        out = json.loads(det.stdout.read().strip().splitlines()[-1])
        det.wait()
    written = int(w.stdout.strip())
    warm = out["rss_mib"][5:] or out["rss_mib"]
    processed = out["read"] - sum(out["dropped"].values())
    return {
        "case": name, "offered_lines_per_s": rate, "limit_lines_per_s": limit,
        "seconds": seconds, "written": written, "read": out["read"],
        "processed": processed, "dropped": out["dropped"],
        "problems": out["problems"], "pod_attributed": out["workload"],
        "rss_min_mib": round(min(warm), 1), "rss_max_mib": round(max(warm), 1),
        "rss_spread_mib": round(max(warm) - min(warm), 1),
        "cpu_s": round(out["cpu_s"], 2),
        "cpu_ms_per_1000_lines": round(1000 * out["cpu_s"] / max(processed, 1) * 1000, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    cases = [run_case("default", 100_000, 20_000, args.seconds),
             run_case("unlimited", 100_000, 1_000_000, args.seconds),
             run_case("below-limit", 10_000, 20_000, min(args.seconds, 20.0))]
    result = {"machine": platform.node(), "python": platform.python_version(),
              "cpus": os.cpu_count(), "rss_bound_mib": RSS_BOUND_MIB, "cases": cases}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "problems_burst.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| case | offered/s | limit/s | written | read | processed | dropped (rate/queue) "
            "| RSS min-max MiB | CPU s | CPU ms / 1000 lines |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        rows.append(f"| {c['case']} | {c['offered_lines_per_s']:,} | {c['limit_lines_per_s']:,} "
                    f"| {c['written']:,} | {c['read']:,} | {c['processed']:,} "
                    f"| {c['dropped']['rate']:,}/{c['dropped']['queue']:,} "
                    f"| {c['rss_min_mib']}-{c['rss_max_mib']} | {c['cpu_s']} "
                    f"| {c['cpu_ms_per_1000_lines']} |")
    md = ("# Problem detector burst\n\n" + (__doc__ or "").split("\n\n")[1] + "\n\n"
          + "\n".join(rows) + f"\n\nRSS bound stated: spread <= {RSS_BOUND_MIB} MiB after "
          "warm-up. Machine: " + f"{result['cpus']} CPUs, Python {result['python']}.\n")
    (RESULTS / "problems_burst.md").write_text(md)
    print(md)
    ok = all(c["rss_spread_mib"] <= RSS_BOUND_MIB for c in cases)
    below = cases[2]
    ok = ok and sum(below["dropped"].values()) == 0 and below["read"] == below["written"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
