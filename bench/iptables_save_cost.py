"""Cost of one `iptables-save -t nat` plus our parse on a kube-proxy-sized nat table.

Run directly as root: `python bench/iptables_save_cost.py` (optionally `--services 1000,5000`).
Writes bench/results/iptables_save_cost.json and .md. It measures what
--lbskew.rules-min-interval saves the lbskew collector on the ticks that reuse the parsed rules.

In a network namespace of its own (`ip netns add`, deleted in a finally), it loads with
`iptables-restore` a nat table shaped like kube-proxy's iptables mode: per Service a
KUBE-SERVICES jump, a KUBE-SVC-* chain with a masquerade rule and one `-m statistic --mode
random --probability 1/(n-i+1)` jump per endpoint, and per endpoint a KUBE-SEP-* chain with the
hairpin masquerade rule and the DNAT, chain names hashed as kube-proxy does. It then times
`ip netns exec NS iptables-save -t nat` (the children's CPU from getrusage, and wall) and
agent.netstate.iptables.parse_iptables_save on its output (process CPU), median of 5 rounds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.netstate.iptables import parse_iptables_save  # noqa: E402

RESULTS = REPO / "bench" / "results"
ROUNDS = 5
ENDPOINTS = 3
TICK_S = 10.0  # --collect.interval default
INTERVAL_S = 30.0  # --lbskew.rules-min-interval default


def _chain(prefix: str, *parts: str) -> str:
    """kube-proxy's chain name: prefix + the first 16 base32 characters of a SHA-256."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def build_rules(services: int, endpoints: int = ENDPOINTS) -> str:
    """iptables-restore input for ``services`` ClusterIP Services x ``endpoints`` endpoints."""
    chains = ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", "KUBE-NODEPORTS"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    for s in range(services):
        name = f"ns{s % 50}/svc-{s}:http"
        vip = f"10.96.{s // 250}.{s % 250 + 1}"
        svc = _chain("KUBE-SVC-", name, "tcp")
        chains.append(svc)
        rules.append(f'-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "{name} cluster '
                     f'IP" -m tcp --dport 80 -j {svc}')
        rules.append(f'-A {svc} ! -s 10.244.0.0/16 -d {vip}/32 -p tcp -m comment --comment '
                     f'"{name} cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ')
        for i in range(endpoints):
            n = s * endpoints + i
            ep = f"10.{244 + n // 64000}.{n // 250 % 256}.{n % 250 + 1}"
            sep = _chain("KUBE-SEP-", name, "tcp", ep)
            chains.append(sep)
            prob = (f"-m statistic --mode random --probability {1 / (endpoints - i):.11f} "
                    if i < endpoints - 1 else "")
            rules.append(f'-A {svc} -m comment --comment "{name} -> {ep}:8080" {prob}-j {sep}')
            rules.append(f'-A {sep} -s {ep}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            rules.append(f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp -j DNAT '
                         f"--to-destination {ep}:8080")
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
                 'must be the last rule in this chain" -m addrtype --dst-type LOCAL '
                 "-j KUBE-NODEPORTS")
    head = ["*nat", *(f":{c} - [0:0]" for c in chains)]
    return "\n".join([*head, *rules, "COMMIT", ""])


def _run(*argv: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=data, capture_output=True, text=True, check=True)


def measure(ns: str, services: int) -> dict[str, Any]:
    """Load the rules into ``ns`` and time ROUNDS rounds of iptables-save + parse."""
    _run("ip", "netns", "exec", ns, "iptables-restore", data=build_rules(services))
    save_cpu, save_wall, parse_cpu, size, found = [], [], [], 0, 0
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"],
                             capture_output=True, check=True).stdout
        save_wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        save_cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        size = len(out)
        c0 = time.process_time()
        rules = parse_iptables_save(out.decode("utf-8", "replace").splitlines())
        parse_cpu.append(time.process_time() - c0)
        found = len(rules.services)
    if found != services:
        raise RuntimeError(f"parsed {found} Service chains, loaded {services}")
    med_save, med_parse = statistics.median(save_cpu), statistics.median(parse_cpu)
    per_read = med_save + med_parse
    reads_per_tick = TICK_S / max(INTERVAL_S, TICK_S)
    return {
        "services": services,
        "endpoints_per_service": ENDPOINTS,
        "output_bytes": size,
        "iptables_save_cpu_s_median": round(med_save, 4),
        "iptables_save_wall_s_median": round(statistics.median(save_wall), 4),
        "parse_cpu_s_median": round(med_parse, 4),
        "read_cpu_s_median": round(per_read, 4),
        # Each 10 s tick used to pay a whole read; at the default interval one tick in three does.
        "cpu_s_per_tick_every_tick": round(per_read, 4),
        "cpu_s_per_tick_default_interval": round(per_read * reads_per_tick, 4),
        "cpu_s_saved_per_tick": round(per_read * (1 - reads_per_tick), 4),
        "cpu_s_saved_per_hour": round(per_read * (1 - reads_per_tick) * 3600 / TICK_S, 2),
        "rounds": {"iptables_save_cpu_s": [round(x, 4) for x in save_cpu],
                   "iptables_save_wall_s": [round(x, 4) for x in save_wall],
                   "parse_cpu_s": [round(x, 4) for x in parse_cpu]},
    }


def write(results: dict[str, Any]) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "iptables_save_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        f"| {c['services']:,} x {c['endpoints_per_service']} | {c['output_bytes'] / 2**20:.2f} | "
        f"{c['iptables_save_cpu_s_median']} | {c['iptables_save_wall_s_median']} | "
        f"{c['parse_cpu_s_median']} | {c['cpu_s_per_tick_every_tick']} | "
        f"{c['cpu_s_per_tick_default_interval']} | {c['cpu_s_saved_per_tick']} | "
        f"{c['cpu_s_saved_per_hour']} |"
        for c in results["cases"]
    ]
    md = "\n".join([
        "# iptables_save_cost: reading kube-proxy's nat rules",
        "",
        "A kube-proxy-shaped nat table (KUBE-SERVICES jump, KUBE-SVC chain with masquerade and "
        "`statistic random` jumps, KUBE-SEP chains with hairpin masquerade and DNAT) loaded with "
        "iptables-restore into a private network namespace; `ip netns exec NS iptables-save -t "
        f"nat` (children's CPU, user+sys, and wall) and our parse (process CPU), median of "
        f"{ROUNDS} rounds. {results['iptables']}, Python {results['python']}, "
        f"{results['cpus']} vCPUs shared with other work (load average "
        f"{results['loadavg_before'][0]} before, {results['loadavg_after'][0]} after).",
        "",
        f"Per-tick CPU: with {TICK_S:.0f} s ticks, reading every tick costs a whole read per "
        f"tick; with `--lbskew.rules-min-interval={INTERVAL_S:.0f}s` (the default) one tick in "
        f"{INTERVAL_S / TICK_S:.0f} reads, the others reuse the parsed rules (cost: a clock "
        "comparison).",
        "",
        "| Services x endpoints | output MiB | iptables-save CPU s | iptables-save wall s | "
        "parse CPU s | CPU s/tick, every tick | CPU s/tick, 30s interval | saved s/tick | "
        "saved CPU s/hour |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    (RESULTS / "iptables_save_cost.md").write_text(md)
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", default="1000,5000",
                    help="comma-separated Service counts (3 endpoints each)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("iptables_save_cost: needs root (network namespaces, iptables-restore)")
        return 2
    for tool in ("ip", "iptables-save", "iptables-restore"):
        if shutil.which(tool) is None:
            print(f"iptables_save_cost: {tool} not found")
            return 2
    version = _run("iptables-save", "--version").stdout.strip()
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "iptables": version,
        "rounds": ROUNDS,
        "tick_s": TICK_S,
        "rules_min_interval_s": INTERVAL_S,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "cases": [],
    }
    for services in (int(x) for x in args.services.split(",")):
        ns = f"nodemedic-bench-ipt-{os.getpid()}"
        _run("ip", "netns", "add", ns)
        try:
            results["cases"].append(measure(ns, services))
        finally:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(write(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
