"""``nodemedic demo``: watch failover work end to end on a simulated cluster, no cluster needed.

Registered as a subcommand through nodemedic_sim.demo.add_parser. Starts the in-memory API server
with a simulated cluster (nodemedic_sim.demo.cluster: 6 nodes in 2 zones, a Deployment with a PDB
and a StatefulSet), one real agent per node on 127.0.0.<n> (nodemedic_sim.demo.fleet), kills one
node and prints the timeline: failure, detection, cordon, evictions, pods running elsewhere,
fencing, then brings the node back and prints the recovery. Windows are shortened (``--node-grace``,
``--fencing-time``) so it finishes in well under a minute; every agent's /metrics stays
scrapeable for ``--hold`` seconds at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import sys
from typing import Any, TextIO

# Cluster-log kinds worth a line in the timeline, with the phase label printed for them.
_PHASES = {
    "node_killed": "FAILURE",
    "node_not_ready": "k8s NotReady",
    "cordoned": "CORDON",
    "taint_added": "TAINT",
    "pod_terminating": "EVICTION",
    "pod_running": "RESCHEDULED",
    "pod_deleted": "POD GONE",
    "node_revived": "NODE BACK",
    "uncordoned": "UNCORDON",
    "taint_removed": "UNTAINT",
}
_STAGE_PHASES = {
    "failed": "DETECTED", "partitioned": "PARTITION", "kubelet_down": "KUBELET DOWN",
    "fenced": "FENCED", "recovered": "RECOVERED", "mass_failure": "MASS FAILURE",
    "leader": "LEADER",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="simulate a cluster, kill a node and watch nodemedic move its workloads",
        description="Runs an in-memory API server, a simulated 6-node cluster and one nodemedic "
        "agent per node in this process, then kills a node and prints what happens.",
    )
    p.add_argument("--nodes", type=int, default=6, help="simulated nodes (default 6)")
    p.add_argument("--zones", type=int, default=2, help="topology zones (default 2)")
    p.add_argument("--node-grace", type=float, default=3.0,
                   help="failover.node-grace for the demo in seconds (production: 40)")
    p.add_argument("--fencing-time", type=float, default=4.0,
                   help="failover.fencing-time for the demo in seconds (production: 180)")
    p.add_argument("--healthy-delay", type=float, default=3.0,
                   help="failover.healthy-delay for the demo in seconds (production: 120)")
    p.add_argument("--kill", default="", help="node to kill (default: one running db-0)")
    p.add_argument("--no-recover", action="store_true", help="do not bring the node back")
    p.add_argument("--hold", type=float, default=0.0,
                   help="keep everything running this many seconds at the end (scrape metrics)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(demo(args, sys.stdout))
    except KeyboardInterrupt:
        return 130


async def demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the whole story; returns 0 when every step happened."""
    from agent.runtime.logging import configure_logging
    from nodemedic_sim.demo.cluster import LogEntry, SimCluster, SimConfig
    from nodemedic_sim.demo.fleet import Fleet, Timings

    configure_logging("error", "console")
    if args.nodes < 3 or args.nodes > 50 or args.zones < 1:
        print("nodemedic demo: --nodes must be 3 to 50 (one failure must stay under the "
              "40% mass-failure limit) and --zones at least 1", file=sys.stderr)
        return 2
    if args.kill and args.kill not in [f"node-{i + 1}" for i in range(args.nodes)]:
        print(f"nodemedic demo: --kill {args.kill}: no such node (node-1 .. node-{args.nodes})",
              file=sys.stderr)
        return 2
    grace = float(args.node_grace)
    cluster = SimCluster(SimConfig(nodes=args.nodes, zones=args.zones,
                                   node_monitor_grace=grace * 1.25))
    timings = Timings(node_grace=grace, fencing_time=float(args.fencing_time),
                      healthy_delay=float(args.healthy_delay),
                      lease_duration=1.5, retry_period=0.25)
    fleet = Fleet(cluster, timings)
    t_kill = 0.0

    # Lines come from two sources (the cluster's log, the agents' timelines) a little apart:
    # hold each for a moment and print in time order.
    pending: list[tuple[float, int, str, str]] = []
    order = itertools.count()

    def show(at: float, label: str, detail: str) -> None:
        heapq.heappush(pending, (at, next(order), label, detail))

    def flush(upto: float = float("inf")) -> None:
        while pending and pending[0][0] <= upto:
            at, _, label, detail = heapq.heappop(pending)
            print(f"  t+{max(at - t_kill, 0.0):6.2f}s  {label:<13} {detail}", file=out, flush=True)

    async def printer() -> None:
        while True:
            flush(cluster.elapsed() - 0.3)
            await asyncio.sleep(0.05)

    def on_log(e: LogEntry) -> None:
        if t_kill and e.kind in _PHASES:
            show(e.at, _PHASES[e.kind], e.detail)

    await cluster.start()
    try:
        await fleet.start()
        print(f"nodemedic demo: in-memory API server at {cluster.server.url}", file=out)
        print(f"  {args.nodes} nodes in {args.zones} zones, one agent each "
              "(scrape any of these during the demo):", file=out)
        for node in cluster.names:
            print(f"    {node} ({cluster.zone(cluster.names.index(node))}): "
                  f"{fleet.url(node)}/metrics", file=out)
        leader = await _wait(fleet.leader, 10.0)
        print(f"  leader: {leader}; windows: node grace {grace:g}s (Kubernetes 40-50s), "
              f"fencing {timings.fencing_time:g}s (medik8s ~180s), healthy delay "
              f"{timings.healthy_delay:g}s", file=out)
        await asyncio.sleep(1.0)
        pods = cluster.pods_by_node()
        victim = args.kill or next(
            (n for n, ps in pods.items() if "db-0" in ps and n != leader),
            next(n for n in cluster.names if n != leader),
        )
        print(f"  pods before: {_fmt_pods(pods)}", file=out)
        print(f"\nKilling {victim} (kubelet and agent, no warning):", file=out)
        cluster.listeners.append(on_log)
        t_kill = cluster.elapsed()
        await fleet.kill(victim)
        seen: set[tuple[float, str, str]] = set()
        poller = asyncio.create_task(_follow_stages(fleet, cluster, seen, show))
        printing = asyncio.create_task(printer())
        ok = await _wait(lambda: _fenced_and_moved(cluster, victim), grace + 40)
        await asyncio.sleep(1.0)
        t_done = cluster.elapsed()
        if not args.no_recover:
            await asyncio.sleep(0.3)
            flush()
            print(f"\nBringing {victim} back:", file=out)
            await fleet.revive(victim)
            ok = bool(await _wait(lambda: _recovered(cluster, victim),
                                  timings.healthy_delay + 20)) and bool(ok)
            await asyncio.sleep(0.5)
        poller.cancel()
        printing.cancel()
        await asyncio.sleep(0.3)
        flush()
        _summary(out, cluster, victim, t_kill=t_kill, grace=grace, t_done=t_done)
        if args.hold > 0:
            print(f"\nHolding for {args.hold:g}s; metrics stay at the URLs above.", file=out)
            await asyncio.sleep(args.hold)
        return 0 if ok else 1
    finally:
        await fleet.stop()
        await cluster.stop()


async def _follow_stages(fleet: Any, cluster: Any, seen: set[tuple[float, str, str]],
                         show: Any) -> None:
    import time

    since = time.time()
    while True:
        for stage in list(fleet.stages.values()):
            for item in list(stage.timeline):
                key = (item["at"], item["node"], item["what"])
                if key in seen or item["what"] not in _STAGE_PHASES or item["at"] < since:
                    continue
                seen.add(key)
                at = cluster.elapsed() - (time.time() - item["at"])
                show(at, _STAGE_PHASES[item["what"]], item["detail"])
        await asyncio.sleep(0.05)


async def _wait(cond: Any, limit: float) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.1)
    return None


def _fmt_pods(pods: dict[str, list[str]]) -> str:
    return ", ".join(f"{n}: {' '.join(sorted(ps)) or '-'}" for n, ps in pods.items())


def _fenced_and_moved(cluster: Any, victim: str) -> bool:
    node = cluster.server.get("nodes", "", victim)
    oos = any(t.get("key") == "node.kubernetes.io/out-of-service"
              for t in (node or {}).get("spec", {}).get("taints") or [])
    running = {p for n, ps in cluster.pods_by_node().items() if n != victim for p in ps}
    return oos and not cluster.pods_by_node().get(victim) and {"db-0", "db-1"} <= running


def _recovered(cluster: Any, victim: str) -> bool:
    node = cluster.server.get("nodes", "", victim) or {}
    taints = [t.get("key", "") for t in node.get("spec", {}).get("taints") or []]
    return not node.get("spec", {}).get("unschedulable") and not any(
        k.startswith("nodemedic.io/") or k == "node.kubernetes.io/out-of-service" for k in taints
    )


def _summary(out: TextIO, cluster: Any, victim: str, *, t_kill: float, grace: float,
             t_done: float) -> None:
    def since(kind: str, contains: str = "") -> str:
        e = cluster.first(kind, contains)
        return f"{e.at - t_kill:.1f}s" if e is not None and e.at >= t_kill else "never"

    print("\nSummary (from the cluster's own event log):", file=out)
    print(f"  failure -> cordon:                 {since('cordoned', victim)} "
          f"(detection window {grace:g}s)", file=out)
    print(f"  failure -> first eviction:         {since('pod_terminating', victim)}", file=out)
    print(f"  failure -> out-of-service (fenced): "
          f"{since('taint_added', victim + ' node.kubernetes.io/out-of-service')}", file=out)
    print(f"  failure -> StatefulSet pod gone:   {since('pod_deleted', 'db-')}", file=out)
    print(f"  failure -> everything moved:       {t_done - t_kill - 1.0:.1f}s", file=out)
    print("  Kubernetes alone: NotReady after 40-50s, pods evicted after the 300s toleration "
          "(~5.8 min), StatefulSet pods stuck until someone deletes them by hand.", file=out)
