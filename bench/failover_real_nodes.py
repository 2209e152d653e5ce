"""Node failure with real kubelets, with nodemedic and with Kubernetes alone (agents in dry-run).

Run directly: `NODEMEDIC_K8S_NODES=1 python bench/failover_real_nodes.py` (root; Debian's
containerd, runc, containernetworking-plugins, busybox-static; Go for hack/k8s/build.sh). Writes
bench/results/failover_real_nodes.json and .md. Takes about 11 minutes, most of it Kubernetes'
own 300 s wait. `--test-timings`: the test's nodemedic timings and control plane
(node-monitor-grace-period 20 s) instead of the defaults.

One real control plane (hack/k8s), three real nodes on this host (tests/real_node.py: kubelet,
containerd, runc; nodes 2 and 3 with their own cgroupRoot), a 3-replica Deployment of the local
busybox image spread one per node with a PDB (maxUnavailable 1), three in-process agents as the
nodemedic ServiceAccount (tests/real_fleet.py). A non-leader node fails: its kubelet and its
containers are SIGKILLed and its agent stops (the nodes share the host's network, so that is all
"cut its network" can mean here: nothing on it answers any more). Two runs, each on three fresh
nodes in the same control plane:

- **with nodemedic**: failover live. Marks: cordon, evicted, fenced (out-of-service taint), the
  dead node's pods gone (pod GC), replacements bound, replacements Running (their kubelets say).
- **Kubernetes alone**: the same agents in --dry-run (they detect, but do nothing). The node
  lifecycle controller taints the node unreachable; the pod's `tolerationSeconds: 300`
  (DefaultTolerationSeconds) runs out, the taint manager deletes it, it stays Terminating on the
  dead kubelet, and the ReplicaSet controller replaces it (a terminating pod is not active).
  Stops once replacements run or at 420 s ("> 420 s").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodemedic_sim.demo.fleet import Timings  # noqa: E402
from tests.polling import eventually as until  # noqa: E402
from tests.real_cluster import Backend, RealCluster, nodemedic_token  # noqa: E402
from tests.real_fleet import fleet, sa_kubeconfig  # noqa: E402
from tests.real_node import (  # noqa: E402
    NODES_ENV,
    KubeletNodes,
    failover_timeline,
    namespace_pods,
    real_nodes,
    running,
    spread_workload,
)

RESULTS = REPO / "bench" / "results"
ALONE_LIMIT = 420.0
# tests/integration/k8s/test_real_node_failover.py's timings (why 25 s: see there).
TEST = Timings(node_grace=25.0, fencing_time=8.0, healthy_delay=3.0, lease_duration=3.0,
               retry_period=0.5, probe_timeout=1.0, max_cordoned="1", max_unhealthy="40%")


async def one_run(cluster: RealCluster, kube: Backend, token: str, ns: str, timings: Timings,
                  limit: float) -> dict[str, Any]:
    """Three fresh real nodes, the workload, the agents; one node fails; its timeline."""
    stack = contextlib.ExitStack()
    nodes = stack.enter_context(contextlib.contextmanager(real_nodes)(cluster, 3))
    names = [n.name for n in nodes]
    try:
        async def ready() -> bool:
            got = [await kube.get("Node", "", n) for n in names]
            leases = [await kube.get("Lease", "kube-node-lease", n) for n in names]
            return all(n is not None and not n["spec"].get("taints") for n in got) and all(
                lease is not None for lease in leases)

        await until(ready, 90, "3 Ready untainted nodes with their Leases")
        await kube.request("POST", "/api/v1/namespaces",
                           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for obj in spread_workload(ns, nodes[0].image):
            await kube.seed(obj)

        async def spread() -> bool:
            live = [p for p in await namespace_pods(kube, ns) if running(p)]
            return len({p["spec"]["nodeName"] for p in live}) == 3

        await until(spread, 120, "3 pods Running on 3 nodes")
        with tempfile.TemporaryDirectory() as tmp:
            assert kube.creds is not None
            kc = sa_kubeconfig(Path(tmp) / "sa.kubeconfig", kube.creds.server, kube.creds.ca,
                               token)
            fl = fleet(KubeletNodes(kc, nodes), timings, Path(tmp))  # type: ignore[arg-type]
            await fl.start()
            try:
                async def elected() -> bool:
                    lead = fl.leader()
                    view = fl.stages[lead].view if lead else None
                    return view is not None and len(view.urls) == 3

                await until(elected, 60, "a leader that knows all three agents")
                victim = next(n for n in names if n != fl.leader())
                t0 = time.monotonic()
                await fl.kill(victim)
                tl = await failover_timeline(kube, ns, victim, t0, limit, stop_at=(
                    ("running",) if timings.dry_run else ("running", "gone")))
            finally:
                await fl.stop()
        print(f"{ns}: {tl.summary()}", flush=True)
        return {"victim": victim, "node_grace_s": timings.node_grace,
                "dry_run": timings.dry_run, "limit_s": limit, "marks_s": tl.marks}
    finally:
        await kube.request("DELETE", f"/api/v1/namespaces/{ns}")
        stack.close()  # node-down.sh for each node


async def run(test_timings: bool) -> dict[str, Any]:
    os.environ[NODES_ENV] = "1"
    cluster = RealCluster(defaults=not test_timings)
    creds = cluster.start()
    kube = Backend("real", creds.server, None, creds=creds)
    timings = TEST if test_timings else Timings.production()
    try:
        token = await nodemedic_token(cluster, kube)
        with_nm = await one_run(cluster, kube, token, "bench-with", timings, 240)
        alone = await one_run(cluster, kube, token, "bench-alone",
                              dataclasses.replace(timings, dry_run=True), ALONE_LIMIT)
    finally:
        if kube._session is not None:
            await kube._session.close()
        cluster.stop()
    return {"timings": "test" if test_timings else "defaults", "with_nodemedic": with_nm,
            "kubernetes_alone": alone}


def cell(marks: dict[str, float | None], key: str, limit: float) -> str:
    """A mark's seconds; one never reached: "> limit" if the run timed out, else "no" (the run
    stopped when its last awaited mark came, this one had not happened by then)."""
    v = marks.get(key)
    if v is not None:
        return f"{v:g} s"
    return f"> {limit:g} s" if marks.get("running") is None else "no"


def write(res: dict[str, Any]) -> list[str]:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover_real_nodes.json").write_text(json.dumps(res, indent=2) + "\n")
    w, a = res["with_nodemedic"], res["kubernetes_alone"]
    wm, am = w["marks_s"], a["marks_s"]
    cp = ("controller-manager at its defaults" if res["timings"] == "defaults"
          else "controller-manager with --node-monitor-grace-period=20s (the tests')")
    md = [
        "## Node failure with real kubelets (bench/failover_real_nodes.py)",
        "",
        f"Kubernetes v1.35.4 built from its modules (hack/k8s), {cp}; 3 real nodes on one host "
        "(kubelet + containerd + runc), a 3-replica busybox Deployment one per node with a PDB "
        "(maxUnavailable 1). One node fails: kubelet and containers SIGKILLed, its agent "
        f"stopped. nodemedic failover at `--failover.node-grace={w['node_grace_s']:g}s`; "
        "\"Kubernetes alone\" = the same agents in --dry-run. Seconds from the failure; one run "
        f"each, {res['when']}, {res['wall_s']} s wall time in all.",
        "",
        "| | cordon | unreachable taint | pod evicted / deleted | out-of-service | "
        "dead pod gone | replacement bound | replacement Running |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, run_, m in (("with nodemedic", w, wm), ("Kubernetes alone", a, am)):
        lim = run_["limit_s"]
        md.append(f"| {label} | " + " | ".join(cell(m, k, lim) for k in (
            "cordon", "unreachable", "evicted", "fenced", "gone", "bound", "running")) + " |")
    md += ["", "\"no\": not seen when the run stopped (Kubernetes alone: once its replacement "
           "ran; nodemedic in --dry-run never cordons or fences)."]
    (RESULTS / "failover_real_nodes.md").write_text("\n".join(md) + "\n")
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-timings", action="store_true",
                    help="the test's nodemedic timings and control plane, not the defaults")
    ap.add_argument("--rewrite", action="store_true",
                    help="only rewrite the .md from the stored .json (no run)")
    args = ap.parse_args()
    if args.rewrite:
        res = json.loads((RESULTS / "failover_real_nodes.json").read_text())
    else:
        started = time.monotonic()
        res = asyncio.run(run(args.test_timings))
        res["when"] = datetime.now(UTC).isoformat(timespec="seconds")
        res["wall_s"] = round(time.monotonic() - started)
    print("\n".join(write(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
