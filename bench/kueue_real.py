"""Kueue's failed-node replacement on the real control plane, with nodemedic and without.

Run directly: `python bench/kueue_real.py` (not part of `make bench`'s list yet). Writes
bench/results/kueue_real.json and kueue_real.md. Needs Go: hack/k8s/build.sh and
hack/k8s/kueue-build.sh build the control plane and Kueue once. Takes about 15 minutes, most of it
Kubernetes' own 300 s (twice) before it evicts a dead node's pods.

One real control plane (hack/k8s, the controller-manager at its defaults), Kueue as a local
process (hack/k8s/kueue-up.sh, TopologyAwareScheduling and TASFailedNodeReplacement on), three
fake-kubelet nodes in one topology block, a 2-pod Job that requires one block
(tests/real_kueue.Scenario); the third node is the spare. One node holding a pod goes silent.
Three runs in the same cluster:

- **with nodemedic**: three agents with failover at its defaults, as the nodemedic
  ServiceAccount of deploy/rbac.yaml: cordon, `nodemedic.io/node-failed:NoSchedule`, evictions.
- **Kubernetes + Kueue alone**: no agents: the node lifecycle controller marks the node NotReady
  after `node-monitor-grace-period`; at Kueue's default gates (TASReplaceNodeOnPodTermination on)
  Kueue replaces it only once the workload's pod there is terminating, i.e. when the `unreachable`
  toleration (300 s) runs out and the taint manager evicts it.
- **the same with TASReplaceNodeOnPodTermination off**: Kueue's other rule, NotReady for 30 s
  (NodeFailureDelay), replaces the node; the pod itself still goes only after the 300 s.

Reported for each: failure -> cordon / NotReady, failure -> Kueue marks the node unhealthy
(`status.unhealthyNodes`), failure -> the node swapped for the spare in the topology assignment,
failure -> the replacement pod Running on the spare; whether the workload was evicted and whether
the healthy node's pod was kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodemedic_sim.demo.fleet import Fleet, Timings  # noqa: E402  (after the sys.path line above)
from tests.real_cluster import Backend, RealCluster, nodemedic_token, rest_path  # noqa: E402
from tests.real_fleet import RealNodes, fleet, sa_kubeconfig  # noqa: E402
from tests.real_kueue import (  # noqa: E402
    NODES,
    Scenario,
    condition,
    kueue_down,
    kueue_up,
)

RESULTS = REPO / "bench" / "results"
Check = Callable[[], Awaitable[bool]]
# The third run's change to kueue-up.sh's feature gates.
NO_POD_TERMINATION = "TASReplaceNodeOnPodTermination=false"
# How long each run watches after the failure (seconds).
LIMITS = {"with": 120.0, "alone": 480.0, "alone30": 240.0}


async def first_seen(checks: dict[str, Check], limit: float) -> dict[str, float | None]:
    """Seconds until each check first held (polled together every 0.25 s), None if never."""
    start = time.monotonic()
    seen: dict[str, float | None] = dict.fromkeys(checks)
    while time.monotonic() - start < limit and any(v is None for v in seen.values()):
        for name, check in checks.items():
            if seen[name] is None and await check():
                seen[name] = round(time.monotonic() - start, 1)
        await asyncio.sleep(0.25)
    return seen


def checks(sc: Scenario, before: set[str], victim: str) -> dict[str, Check]:
    spare = next(n for n in NODES if n not in before)
    survivor = next(n for n in before if n != victim)

    async def node() -> dict[str, Any]:
        return await sc.kube.get("Node", "", victim) or {}

    async def cordoned() -> bool:
        return bool((await node()).get("spec", {}).get("unschedulable"))

    async def not_ready() -> bool:
        conds = (await node()).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] != "True" for c in conds)

    async def unhealthy() -> bool:
        wl = await sc.workload() or {}
        return victim in {u.get("name") for u in wl.get("status", {}).get("unhealthyNodes") or []}

    async def swapped() -> bool:
        return await sc.assigned() == {survivor, spare}

    async def running() -> bool:
        live = await sc.live_pods()
        return len(live) == 2 and {p["spec"].get("nodeName") for p in live
                                   if p["status"].get("phase") == "Running"} == {survivor, spare}

    return {"cordon": cordoned, "node_not_ready": not_ready, "kueue_unhealthy_node": unhealthy,
            "assignment_replaced": swapped, "replacement_running": running}


async def one_run(kube: Backend, ns: str, agents: Callable[[Scenario], Awaitable[Fleet | None]],
                  limit: float) -> dict[str, Any]:
    sc = Scenario(kube, ns)
    fl: Fleet | None = None
    try:
        await sc.nodes_up()
        await sc.queues_up()
        before = await sc.submit(120)
        fl = await agents(sc)
        lead = fl.leader() if fl else None
        victim = next(n for n in sorted(before) if n != lead)
        survivor = next(n for n in before if n != victim)
        kept = next(p["metadata"]["uid"] for p in await sc.live_pods()
                    if p["spec"].get("nodeName") == survivor)
        if fl is not None:
            await fl.kill(victim)
        else:
            sc.kubelets.kill(victim)
        seen = await first_seen(checks(sc, before, victim), limit)
        wl = await sc.workload() or {}
        still = [p["metadata"]["uid"] for p in await sc.live_pods()
                 if p["spec"].get("nodeName") == survivor]
        return {"failure_to_s": seen, "workload_evicted": condition(wl, "Evicted"),
                "healthy_pod_kept": still == [kept]}
    finally:
        if fl is not None:
            await fl.stop()
        await sc.teardown()
        for n in NODES:  # a clean slate for the next run
            await kube.request("DELETE", rest_path("Node", "", n))
            await kube.request("DELETE", rest_path("Lease", "kube-node-lease", n))


async def run() -> dict[str, Any]:
    cluster = RealCluster(defaults=True)
    creds = cluster.start()
    kube = Backend("real", creds.server, None, creds=creds)
    timings = Timings.production()
    with tempfile.TemporaryDirectory(prefix="nodemedic-kueue-bench-") as tmp:
        work = Path(tmp)
        up = False
        try:
            token = await nodemedic_token(cluster, kube)
            kc = sa_kubeconfig(work / "sa.kubeconfig", creds.server, creds.ca, token)
            t0 = time.monotonic()
            kueue_up(creds.kubeconfig, work / "kueue")
            kueue_start = round(time.monotonic() - t0, 1)
            up = True

            async def with_agents(sc: Scenario) -> Fleet:
                fl = fleet(RealNodes(kc, sc.kubelets), timings, work)
                await fl.start()
                end = time.monotonic() + 60
                while fl.leader() is None and time.monotonic() < end:
                    await asyncio.sleep(0.25)
                return fl

            async def without(_: Scenario) -> None:
                return None

            with_nm = await one_run(kube, "kueue-bench-with", with_agents, LIMITS["with"])
            alone = await one_run(kube, "kueue-bench-alone", without, LIMITS["alone"])
            # Kueue's other heuristic: NotReady for 30 s is enough (its gate off).
            kueue_down(creds.kubeconfig, work / "kueue")
            up = False
            kueue_up(creds.kubeconfig, work / "kueue", extra_gates=NO_POD_TERMINATION)
            up = True
            alone_30s = await one_run(kube, "kueue-bench-alone30", without, LIMITS["alone30"])
        finally:
            if up:
                kueue_down(creds.kubeconfig, work / "kueue")
            if kube._session is not None:
                await kube._session.close()
            cluster.stop()
    return {"node_grace_s": timings.node_grace, "kueue_start_s": kueue_start,
            "with_nodemedic": with_nm, "kubernetes_kueue_alone": alone,
            "kubernetes_kueue_alone_no_pod_termination_gate": alone_30s}


def cell(v: float | None) -> str:
    return "—" if v is None else f"{v:g} s"


def render(res: dict[str, Any]) -> list[str]:
    """The Markdown table of a result (also: `python bench/kueue_real.py --render`)."""
    rows = []
    for label, key in (("with nodemedic", "with_nodemedic"),
                       ("Kubernetes + Kueue alone", "kubernetes_kueue_alone"),
                       ("Kubernetes + Kueue alone, TASReplaceNodeOnPodTermination off",
                        "kubernetes_kueue_alone_no_pod_termination_gate")):
        r = res[key]
        s = r["failure_to_s"]
        rows.append(f"| {label} | {cell(s['cordon'])} | {cell(s['node_not_ready'])} | "
                    f"{cell(s['kueue_unhealthy_node'])} | {cell(s['assignment_replaced'])} | "
                    f"{cell(s['replacement_running'])} | {'yes' if r['workload_evicted'] else 'no'}"
                    f" | {'yes' if r['healthy_pod_kept'] else 'no'} |")
    md = [
        "## Kueue failed-node replacement on the real control plane (bench/kueue_real.py)",
        "",
        "Kubernetes v1.35.4 (hack/k8s, controller-manager at defaults) and Kueue "
        "(hack/k8s/kueue-up.sh: TopologyAwareScheduling, TASFailedNodeReplacement, "
        "TASFailedNodeReplacementFailFast, TASReplaceNodeOnNodeTaints, "
        "TASReplaceNodeOnPodTermination unless said); 3 nodes in one block, a 2-pod Job "
        "requiring one block, one pod per node; one of its nodes goes silent. nodemedic at its "
        f"defaults (`--failover.node-grace={res['node_grace_s']:g}s`). One run each, "
        f"{res['when']}.",
        "",
        "| failure → | cordon | node NotReady | Kueue: node unhealthy | node replaced in "
        "assignment | replacement pod Running | workload evicted | healthy pod kept |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"— : did not happen within the run ({LIMITS['with']:g} s, {LIMITS['alone']:g} s, "
        f"{LIMITS['alone30']:g} s after the failure; the pod of the third run goes only after "
        "the 300 s toleration). Kueue started in "
        f"{res['kueue_start_s']:g} s (CRDs applied, /readyz).",
    ]
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true",
                    help="rewrite kueue_real.md from the saved kueue_real.json without running")
    if ap.parse_args().render:
        res = json.loads((RESULTS / "kueue_real.json").read_text())
    else:
        res = asyncio.run(run())
        res["when"] = datetime.now(UTC).isoformat(timespec="seconds")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "kueue_real.json").write_text(json.dumps(res, indent=2) + "\n")
    md = render(res)
    (RESULTS / "kueue_real.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
