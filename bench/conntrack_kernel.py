"""CPU of reading a REAL kernel conntrack table of 262,144 entries, the old way and the new way.

Run as root, directly (`python bench/conntrack_kernel.py`) or by `make bench`; writes
bench/results/conntrack_kernel.json and .md. Skips (and says so in the results) without root,
``ip`` or ``iptables``.

A scratch network namespace gets a veth pair (both ends inside) as its default route, a
kube-proxy-like DNAT rule (nat OUTPUT: 200 Service VIPs in 10.96.0.0/23 -> 3 endpoints each in
10.244.0.0/16, picked by ``-m statistic``), byte accounting on (nf_conntrack_acct=1) and long
UDP/TCP timeouts. A child
process in the namespace opens half the flows as TCP connects (SYN_SENT, [UNREPLIED]) and half
as UDP datagrams from distinct source ports until the table holds the target number of entries.
All packets go out of one veth end and are dropped at the other: nothing leaves the
namespace. Then, in the
namespace, each measurement runs in a fresh child and reports its own user + system CPU seconds
(getrusage, so the kernel's formatting of /proc/net/nf_conntrack is included):

- ``walk``: what the lbskew collector did every tick before: the whole /proc/net/nf_conntrack
  aggregated per (VIP, endpoint) with byte counters;
- ``counts``: what it now reads every tick: nf_conntrack_count, nf_conntrack_max and the per-CPU
  /proc/net/stat/nf_conntrack (agent.netstate.ctstats.read_counts);
- ``conntrack -L``: the conntrack tool's own dump, for reference.

From those, the collector's average CPU per 10 s tick at the default --lbskew.conntrack-cpu=0.1%
and how old its per-endpoint counts get. The namespace (and its table) is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ENTRIES = 262_144
SERVICES = 200
ROUNDS = 5
NS = f"nmbench{os.getpid() % 100000}"
GLOBAL_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")

FILL = r"""
import errno, socket, sys
target, services = int(sys.argv[1]), int(sys.argv[2])
vips = [f"10.96.0.{i % 250 + 1}" if i < 250 else f"10.96.1.{i - 249}" for i in range(services)]
def count():
    return int(open("/proc/sys/net/netfilter/nf_conntrack_count").read())
made, port = 0, 20000
while count() < target:
    # TCP: one non-blocking connect per VIP: SYN_SENT [UNREPLIED], the SYN goes to the veth.
    for vip in vips:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((vip, 80))
        except BlockingIOError:
            pass
        s.close()
    # UDP: one datagram per VIP from a fresh source port.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("10.200.0.1", 0))
    for vip in vips:
        u.sendto(b"x" * 64, (vip, 53))
    u.close()
    made += 2 * len(vips)
print(count(), made, flush=True)
"""

MEASURE = r"""
import json, resource, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
what, rounds = sys.argv[2], int(sys.argv[3])
from agent.netstate.conntrack import aggregate_text, read_chunks
from agent.netstate.ctstats import read_counts
from pathlib import Path
def cpu(kind):
    r = resource.getrusage(kind)
    return r.ru_utime, r.ru_stime
out = []
extra = {}
for _ in range(rounds):
    kind = resource.RUSAGE_SELF
    u0, s0 = cpu(resource.RUSAGE_SELF)
    cu0, cs0 = cpu(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    if what == "walk":
        s = aggregate_text(read_chunks("/proc/net/nf_conntrack"))
        extra = {"entries": s.entries, "dnat_entries": s.dnat_entries, "keys": len(s.flows),
                 "accounting": s.accounting, "lines": s.lines}
    elif what == "counts":
        for _ in range(1000):
            c = read_counts(Path("/proc"))
        extra = {"count": c.entries, "max": c.limit, "stats": c.stats}
    else:
        subprocess.run(["conntrack", "-L", "-o", "extended"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - w0
    u1, s1 = cpu(resource.RUSAGE_SELF)
    cu1, cs1 = cpu(resource.RUSAGE_CHILDREN)
    user, system = (u1 - u0) + (cu1 - cu0), (s1 - s0) + (cs1 - cs0)
    n = 1000 if what == "counts" else 1
    out.append({"user": user / n, "system": system / n, "wall": wall / n})
print(json.dumps({"rounds": out, **extra}))
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespace, nat rules)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def setup() -> None:
    _run("ip", "netns", "add", NS)
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        # Both ends in the namespace: packets out of v0 arrive on v1 and are dropped there
        # (forwarding is off), after conntrack confirmed their entries.
        ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        ["ip", "link", "set", "v0", "up"],
        ["ip", "link", "set", "v1", "up"],
        ["ip", "addr", "add", "10.200.0.1/16", "dev", "v0"],
        ["ip", "route", "add", "default", "dev", "v0"],
    ):
        _run(*_ns(*cmd))
    # Per-namespace conntrack settings: byte counters and timeouts long enough to measure.
    for key, value in (("nf_conntrack_acct", "1"), ("nf_conntrack_udp_timeout", "3600"),
                       ("nf_conntrack_tcp_timeout_syn_sent", "3600")):
        _run(*_ns("sysctl", "-q", "-w", f"net.netfilter.{key}={value}"))
    # kube-proxy-like: each VIP to one of 3 endpoints with the statistic module's probabilities.
    rules = ["*nat", ":OUTPUT ACCEPT [0:0]"]
    for i in range(SERVICES):
        vip = f"10.96.0.{i % 250 + 1}" if i < 250 else f"10.96.1.{i - 249}"
        eps = [f"10.244.{i}.{j + 1}" for j in range(3)]
        rules += [
            f"-A OUTPUT -d {vip}/32 -m statistic --mode random --probability 0.33333 "
            f"-j DNAT --to-destination {eps[0]}",
            f"-A OUTPUT -d {vip}/32 -m statistic --mode random --probability 0.5 "
            f"-j DNAT --to-destination {eps[1]}",
            f"-A OUTPUT -d {vip}/32 -j DNAT --to-destination {eps[2]}",
        ]
    rules.append("COMMIT")
    subprocess.run(_ns("iptables-restore"), input="\n".join(rules) + "\n", text=True,
                   check=True, capture_output=True, timeout=60)


def teardown() -> None:
    subprocess.run(["ip", "netns", "del", NS], check=False, capture_output=True, timeout=60)


def measure(what: str, rounds: int) -> dict[str, Any]:
    res = subprocess.run(_ns(sys.executable, "-c", MEASURE, str(REPO), what, str(rounds)),
                         check=True, capture_output=True, text=True, timeout=900)
    doc: dict[str, Any] = json.loads(res.stdout)
    total = [r["user"] + r["system"] for r in doc["rounds"]]
    doc["cpu_s_median"] = statistics.median(total)
    doc["user_s_median"] = statistics.median(r["user"] for r in doc["rounds"])
    doc["system_s_median"] = statistics.median(r["system"] for r in doc["rounds"])
    doc["wall_s_median"] = statistics.median(r["wall"] for r in doc["rounds"])
    return doc


def markdown(doc: dict[str, Any]) -> str:
    head = ["## conntrack on a real kernel table (scratch network namespace)", ""]
    if "skipped" in doc:
        return "\n".join([*head, f"Skipped: {doc['skipped']}."]) + "\n"
    w, c = doc["walk"], doc["counts"]
    rows = [
        *head,
        f"{doc['table_entries']:,} entries in the namespace's table (half TCP SYN_SENT, half UDP, "
        f"all DNATed to {SERVICES} VIPs x 3 endpoints), byte accounting on. User + system CPU "
        f"seconds of each measurement in a fresh child in the namespace, median of {ROUNDS} "
        f"(kernel {doc['kernel']}, {doc['cpus']} vCPU, load average {doc['load']:.1f}).",
        "",
        "| measurement | user s | system s | total CPU s | wall s |",
        "|---|---|---|---|---|",
        f"| full walk of /proc/net/nf_conntrack with byte accounting (before: every tick) "
        f"| {w['user_s_median']:.3f} | {w['system_s_median']:.3f} | {w['cpu_s_median']:.3f} "
        f"| {w['wall_s_median']:.3f} |",
        f"| counts + per-CPU stats (now: every tick) | {c['user_s_median'] * 1e6:.1f} µs "
        f"| {c['system_s_median'] * 1e6:.1f} µs | {c['cpu_s_median'] * 1e6:.1f} µs "
        f"| {c['wall_s_median'] * 1e6:.1f} µs |",
    ]
    if "cli" in doc:
        k = doc["cli"]
        rows.append(f"| `conntrack -L -o extended` (reference) | {k['user_s_median']:.3f} "
                    f"| {k['system_s_median']:.3f} | {k['cpu_s_median']:.3f} "
                    f"| {k['wall_s_median']:.3f} |")
    per_tick_before = w["cpu_s_median"]
    interval = w["cpu_s_median"] / 0.001
    per_tick_after = c["cpu_s_median"] + w["cpu_s_median"] * 10.0 / interval
    rows += [
        "",
        f"Per 10 s tick: before {per_tick_before * 1000:.0f} ms of CPU "
        f"({per_tick_before / 10 * 100:.1f} % of a core); now, at the default "
        f"--lbskew.conntrack-cpu=0.1%, the walk repeats every "
        f"{interval:.0f} s and a tick costs on average {per_tick_after * 1000:.1f} ms "
        f"({per_tick_after / 10 * 100:.2f} % of a core) at this table size, whatever the size; "
        f"the per-endpoint counts are then up to {interval / 60:.0f} min old (the table's "
        "size and drop counters are current every tick). The walk found "
        f"{w['dnat_entries']:,} DNATed entries in {w['keys']:,} (VIP, endpoint) keys.",
    ]
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"kernel": os.uname().release, "cpus": os.cpu_count(),
                           "load": os.getloadavg()[0], "target_entries": ENTRIES}
    why = _skip_reason()
    old_max = GLOBAL_MAX.read_text().strip() if GLOBAL_MAX.exists() else None
    if why is None:
        try:
            if old_max is not None and int(old_max) < ENTRIES + 1024:
                GLOBAL_MAX.write_text(str(ENTRIES + 1024))  # restored below
            setup()
            t0 = time.monotonic()
            fill = subprocess.run(_ns(sys.executable, "-c", FILL, str(ENTRIES), str(SERVICES)),
                                  check=True, capture_output=True, text=True, timeout=900)
            doc["fill_seconds"] = time.monotonic() - t0
            doc["table_entries"] = int(fill.stdout.split()[0])
            doc["walk"] = measure("walk", ROUNDS)
            doc["counts"] = measure("counts", ROUNDS)
            if shutil.which("conntrack"):
                doc["cli"] = measure("cli", 3)
        finally:
            teardown()
            if old_max is not None and GLOBAL_MAX.read_text().strip() != old_max:
                GLOBAL_MAX.write_text(old_max)
    else:
        doc["skipped"] = why
    (RESULTS / "conntrack_kernel.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    (RESULTS / "conntrack_kernel.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
