"""Failover on the real control plane at default settings, next to Kubernetes alone.

Run by `make bench` (bench/run_all.py) or directly: `python bench/failover_real.py`. Writes
bench/results/failover_real.json and failover_real.md. Needs Go (hack/k8s/build.sh builds the
control plane once); takes about 7 minutes, most of it Kubernetes' own 300 s wait.

One real control plane (hack/k8s, the controller-manager at its defaults), three Node objects
whose kubelet side tests/real_fleet.Kubelets plays, a 3-replica Deployment spread one per node with
a PDB (minAvailable 2). Two runs in the same cluster:

- **with nodemedic**: three agents with failover at its defaults (`--failover.node-grace=40s`),
  as the nodemedic ServiceAccount of deploy/rbac.yaml. Reported: failure -> cordon, failure ->
  the victim's pods evicted, failure -> all replacements bound to healthy nodes.
- **Kubernetes alone**: no agents. Reported: failure -> node NotReady/unreachable taint (the node
  lifecycle controller, `node-monitor-grace-period`), failure -> replacements bound (after the
  default `tolerationSeconds: 300` for `unreachable`, added by the DefaultTolerationSeconds
  admission plugin).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodemedic_sim.demo.fleet import Timings  # noqa: E402  (after the sys.path line above)
from tests.polling import seconds_until as until  # noqa: E402
from tests.real_cluster import Backend, RealCluster, nodemedic_token, rest_path  # noqa: E402
from tests.real_fleet import Kubelets, RealNodes, fleet, sa_kubeconfig  # noqa: E402

RESULTS = REPO / "bench" / "results"
NODES = ["node-a", "node-b", "node-c"]


def workload(ns: str) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
              "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
              "labelSelector": {"matchLabels": labels}}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"replicas": 3, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"terminationGracePeriodSeconds": 5,
                                        "containers": [{"name": "c", "image": "busybox"}],
                                        "topologySpreadConstraints": [spread]}}}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"minAvailable": 2, "selector": {"matchLabels": labels}}},
    ]


async def pods(kube: Backend, ns: str) -> list[dict[str, Any]]:
    _, body = await kube.request("GET", f"/api/v1/namespaces/{ns}/pods")
    return list(body.get("items", []))


async def setup(kube: Backend, ns: str) -> Kubelets:
    kubelets = Kubelets(kube, NODES)
    await kubelets.start()

    async def untainted() -> bool:
        nodes = [await kube.get("Node", "", n) for n in NODES]
        return all(n is not None and not n["spec"].get("taints") for n in nodes)

    assert await until(untainted, 60) is not None, "nodes never lost their not-ready taint"
    for obj in workload(ns):
        await kube.seed(obj)

    async def spread() -> bool:
        live = [p for p in await pods(kube, ns) if p["spec"].get("nodeName")
                and p["status"].get("phase") == "Running"]
        return len({p["spec"]["nodeName"] for p in live}) == 3

    assert await until(spread, 120) is not None, "the workload never spread over 3 nodes"
    return kubelets


def replaced(kube: Backend, ns: str, victim: str) -> Any:
    async def check() -> bool:
        live = [p for p in await pods(kube, ns)
                if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")]
        return len(live) == 3 and all(p["spec"]["nodeName"] != victim for p in live)
    return check


async def with_nodemedic(kube: Backend, token: str, work: Path) -> dict[str, Any]:
    ns = "bench-with"
    kubelets = await setup(kube, ns)
    assert kube.creds is not None
    kc = sa_kubeconfig(work / "sa.kubeconfig", kube.creds.server, kube.creds.ca, token)
    timings = Timings.production()
    fl = fleet(RealNodes(kc, kubelets), timings, work)
    await fl.start()
    try:
        await until(lambda: _true(fl.leader() is not None), 60)
        victim = next(n for n in NODES if n != fl.leader())
        await fl.kill(victim)

        async def cordoned() -> bool:
            node = await kube.get("Node", "", victim)
            return bool(node and node["spec"].get("unschedulable"))

        async def evicted() -> bool:
            on = [p for p in await pods(kube, ns) if p["spec"].get("nodeName") == victim]
            return all(p["metadata"].get("deletionTimestamp") for p in on)

        t_cordon = await until(cordoned, timings.node_grace + 60)
        t_evict = await until(evicted, 60)
        t_bound = await until(replaced(kube, ns, victim), 120)
    finally:
        await fl.stop()
        await kubelets.stop()
    return {"node_grace_s": timings.node_grace, "failure_to_cordon_s": _r(t_cordon),
            "failure_to_evicted_s": _r(t_evict, t_cordon),
            "failure_to_replacements_bound_s": _r(t_bound, t_cordon, t_evict)}


async def kubernetes_alone(kube: Backend) -> dict[str, Any]:
    ns = "bench-alone"
    kubelets = await setup(kube, ns)
    victim = NODES[1]
    try:
        kubelets.kill(victim)

        async def unreachable() -> bool:
            node = await kube.get("Node", "", victim)
            return any(t["key"] == "node.kubernetes.io/unreachable"
                       for t in (node or {}).get("spec", {}).get("taints", []))

        t_taint = await until(unreachable, 180)
        t_bound = await until(replaced(kube, ns, victim), 600)
    finally:
        await kubelets.stop()
    return {"failure_to_unreachable_taint_s": _r(t_taint),
            "failure_to_replacements_bound_s": _r(t_bound, t_taint)}


async def _true(value: bool) -> bool:
    return value


def _r(*parts: float | None) -> float | None:
    """The sum of consecutive waits, rounded; None if one of them timed out."""
    if any(p is None for p in parts):
        return None
    return round(sum(p for p in parts if p is not None), 1)


async def run() -> dict[str, Any]:
    cluster = RealCluster(defaults=True)
    creds = cluster.start()
    kube = Backend("real", creds.server, None, creds=creds)
    try:
        token = await nodemedic_token(cluster, kube)
        with tempfile.TemporaryDirectory() as tmp:
            with_nm = await with_nodemedic(kube, token, Path(tmp))
        for n in NODES:  # a clean slate for the second run
            await kube.request("DELETE", rest_path("Node", "", n))
            await kube.request("DELETE", rest_path("Lease", "kube-node-lease", n))
        alone = await kubernetes_alone(kube)
    finally:
        if kube._session is not None:
            await kube._session.close()
        cluster.stop()
    return {"with_nodemedic": with_nm, "kubernetes_alone": alone}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    res = asyncio.run(run())
    res["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover_real.json").write_text(json.dumps(res, indent=2) + "\n")
    w, a = res["with_nodemedic"], res["kubernetes_alone"]
    md = [
        "## Failover on the real control plane (bench/failover_real.py)",
        "",
        "Kubernetes v1.35.4 built from its modules (hack/k8s), controller-manager at defaults; "
        "3 nodes, a 3-replica Deployment one per node with a PDB (minAvailable 2); one node "
        "goes silent. nodemedic at its defaults (`--failover.node-grace="
        f"{w['node_grace_s']:g}s`), as the ServiceAccount of deploy/rbac.yaml. One run each, "
        f"{res['when']}.",
        "",
        "| | failure → cordon / unreachable taint | failure → pods evicted | "
        "failure → replacements bound |",
        "|---|---|---|---|",
        f"| with nodemedic | {w['failure_to_cordon_s']} s (cordon) | "
        f"{w['failure_to_evicted_s']} s | {w['failure_to_replacements_bound_s']} s |",
        f"| Kubernetes alone | {a['failure_to_unreachable_taint_s']} s (unreachable taint) | "
        f"after tolerationSeconds 300 | {a['failure_to_replacements_bound_s']} s |",
    ]
    (RESULTS / "failover_real.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
