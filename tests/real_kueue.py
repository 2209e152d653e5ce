"""Kueue's topology-aware scheduling on the real control plane, with the nodes of tests/real_fleet.

:func:`kueue_up` / :func:`kueue_down` run hack/k8s/kueue-up.sh and kueue-down.sh (the Kueue
manager pinned in hack/k8s/versions.env, as a local process, its CRDs applied) against a cluster
given by its kubeconfig; a build or start failure raises with the script's own error.

:class:`Scenario` is the shared part of tests/integration/k8s/test_kueue_real.py and
bench/kueue_real.py: three fake-kubelet nodes (:class:`tests.real_fleet.Kubelets`) labelled with a
block / rack / hostname topology and room for one workload pod each; a Topology, a
ResourceFlavor naming it, a ClusterQueue and a LocalQueue; a 2-pod Job that requires one block
(``kueue.x-k8s.io/podset-required-topology``). Kueue admits it with a topology assignment over two
nodes, the real scheduler binds the ungated pods, the fake kubelets report them Running; the third
node is the spare a failed node can be replaced by. :meth:`Scenario.assigned` decodes the
workload's ``topologyAssignment`` (Kueue's v1beta2 slices) into node names.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.polling import seconds_until as until
from tests.real_cluster import HACK, Backend, rest_path
from tests.real_fleet import Kubelets

KUEUE_API = "/apis/kueue.x-k8s.io/v1beta2"
BLOCK = "cloud.provider.com/topology-block"
RACK = "cloud.provider.com/topology-rack"
HOSTNAME = "kubernetes.io/hostname"
NODES = ["node-a", "node-b", "node-c"]
RACKS = {"node-a": "rack-1", "node-b": "rack-1", "node-c": "rack-2"}
# Kueue v0.17's wait before it treats a NotReady node as failed (pkg/controller/tas:
# NodeFailureDelay) -- on its own only when TASReplaceNodeOnPodTermination is off.
KUEUE_NODE_FAILURE_DELAY = 30.0


def kueue_up(kubeconfig: Path, workdir: Path, extra_gates: str = "") -> Path:
    """Start Kueue on the cluster of ``kubeconfig``; its files in ``workdir``; ``extra_gates``
    (``Name=bool,...``) override kueue-up.sh's feature gates. Raises RuntimeError with
    kueue-up.sh's (or kueue-build.sh's) error when it cannot."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUEUE_DIR": str(workdir),
           "KUEUE_EXTRA_FEATURE_GATES": extra_gates}
    proc = subprocess.run(["bash", str(HACK / "kueue-up.sh")], env=env, capture_output=True,
                          text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"Kueue did not start (hack/k8s/kueue-up.sh exit {proc.returncode}):"
                           f"\n{proc.stderr[-4000:]}")
    return workdir


def kueue_down(kubeconfig: Path, workdir: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUEUE_DIR": str(workdir)}
    subprocess.run(["bash", str(HACK / "kueue-down.sh")], env=env, capture_output=True,
                   text=True, timeout=300, check=False)


def kueue_log(workdir: Path, lines: int = 30) -> str:
    log = workdir / "logs" / "kueue.log"
    return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else "(no log)"


def condition(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def kueue_objects(ns: str, flavor: str, topology: str, cq: str) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, body) of the Topology, ResourceFlavor, ClusterQueue and LocalQueue."""
    return [
        (f"{KUEUE_API}/topologies", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Topology",
            "metadata": {"name": topology},
            "spec": {"levels": [{"nodeLabel": BLOCK}, {"nodeLabel": RACK},
                                {"nodeLabel": HOSTNAME}]}}),
        (f"{KUEUE_API}/resourceflavors", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": {"nodeLabels": {BLOCK: "block-1"}, "topologyName": topology}}),
        (f"{KUEUE_API}/clusterqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {"namespaceSelector": {}, "resourceGroups": [{
                "coveredResources": ["cpu", "memory"],
                "flavors": [{"name": flavor, "resources": [
                    {"name": "cpu", "nominalQuota": "12"},
                    {"name": "memory", "nominalQuota": "12Gi"}]}]}]}}),
        (f"{KUEUE_API}/namespaces/{ns}/localqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": "lq", "namespace": ns}, "spec": {"clusterQueue": cq}}),
    ]


def job(ns: str, pods: int = 2) -> dict[str, Any]:
    """A Job of ``pods`` pods that must share one block; each takes most of a node's 2 CPUs, so
    Kueue places one per node. Created suspended, as Kueue's Job webhook (not registered: see
    hack/k8s/kueue-up.sh) would make it."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "tas", "namespace": ns,
                     "labels": {"kueue.x-k8s.io/queue-name": "lq"}},
        "spec": {"parallelism": pods, "completions": pods, "suspend": True,
                 "backoffLimit": 6,
                 "template": {
                     "metadata": {"annotations": {
                         "kueue.x-k8s.io/podset-required-topology": BLOCK}},
                     "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                              "containers": [{"name": "c", "image": "busybox",
                                              "resources": {"requests": {
                                                  "cpu": "1500m", "memory": "100Mi"}}}]}}},
    }


def pod_states(pods: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    """(name, node, phase) of each pod, for failure messages."""
    return [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"))
            for p in pods]


def assigned_nodes(workload: dict[str, Any]) -> set[str]:
    """The hostnames in the workload's topology assignment (every pod set, every slice)."""
    admission = (workload.get("status") or {}).get("admission") or {}
    out: set[str] = set()
    for psa in admission.get("podSetAssignments") or []:
        ta = psa.get("topologyAssignment") or {}
        levels = ta.get("levels") or []
        if HOSTNAME not in levels:
            continue
        at = levels.index(HOSTNAME)
        for sl in ta.get("slices") or []:
            values = (sl.get("valuesPerLevel") or [])[at]
            if values.get("universal") is not None:
                out.add(values["universal"])
                continue
            ind = values.get("individual") or {}
            pre, suf = ind.get("prefix") or "", ind.get("suffix") or ""
            out.update(pre + root + suf for root in ind.get("roots") or [])
    return out


class Scenario:
    """The TAS workload over three fake-kubelet nodes (see the module docstring)."""

    def __init__(self, kube: Backend, ns: str, every: float = 1.0) -> None:
        self.kube = kube
        self.ns = ns
        suffix = ns.rsplit("-", 1)[-1]
        self.flavor, self.topology, self.cq = f"tas-{suffix}", f"topo-{suffix}", f"cq-{suffix}"
        self.kubelets = Kubelets(kube, NODES, every=every)
        self.created: list[str] = []  # REST paths of the cluster objects made here

    async def nodes_up(self) -> None:
        """Register the nodes (Ready, Lease renewals) with topology labels and 2 CPUs each."""
        await self.kubelets.start()
        for name in NODES:
            code, body = await self.kube.request(
                "PATCH", rest_path("Node", "", name),
                {"metadata": {"labels": {BLOCK: "block-1", RACK: RACKS[name]}}},
                "application/merge-patch+json")
            assert code == 200, f"labelling {name}: {code} {body}"
            capacity = {"cpu": "2", "memory": "4Gi", "pods": "110"}
            code, body = await self.kube.request(
                "PATCH", rest_path("Node", "", name, "status"),
                {"status": {"capacity": capacity, "allocatable": capacity}},
                "application/merge-patch+json")
            assert code == 200, f"capacity of {name}: {code} {body}"

        async def untainted() -> bool:  # the lifecycle controller lifts not-ready once Ready
            nodes = [await self.kube.get("Node", "", n) for n in NODES]
            return all(n is not None and not n["spec"].get("taints") for n in nodes)

        assert await until(untainted, 60) is not None, "the nodes' not-ready taints stayed"

    async def queues_up(self) -> None:
        code, body = await self.kube.request("POST", "/api/v1/namespaces",
                                             {"metadata": {"name": self.ns}})
        assert code in (201, 409), f"namespace {self.ns}: {code} {body}"
        for path, obj in kueue_objects(self.ns, self.flavor, self.topology, self.cq):
            code, body = await self.kube.request("POST", path, obj)
            assert code == 201, f"creating {obj['kind']}: {code} {body}"
            self.created.append(f"{path}/{obj['metadata']['name']}")

        async def active() -> bool:
            _, cq = await self.kube.request("GET", f"{KUEUE_API}/clusterqueues/{self.cq}")
            return isinstance(cq, dict) and condition(cq, "Active")

        assert await until(active, 60) is not None, f"ClusterQueue {self.cq} never Active"

    async def submit(self, limit: float = 90) -> set[str]:
        """Create the Job; return the assigned nodes once admitted and both pods Running."""
        code, body = await self.kube.request(
            "POST", f"/apis/batch/v1/namespaces/{self.ns}/jobs", job(self.ns))
        assert code == 201, f"creating the Job: {code} {body}"

        async def running() -> bool:
            wl = await self.workload()
            if wl is None or not condition(wl, "Admitted"):
                return False
            placed = {p["spec"].get("nodeName") for p in await self.live_pods()
                      if p["status"].get("phase") == "Running"}
            return len(placed) == 2 and placed == assigned_nodes(wl)

        if await until(running, limit) is None:
            raise AssertionError(f"the Job was not admitted and Running on 2 nodes within "
                                 f"{limit:g}s: workload {await self.workload()}; pods "
                                 f"{pod_states(await self.pods())}")
        wl = await self.workload()
        assert wl is not None
        return assigned_nodes(wl)

    async def workload(self) -> dict[str, Any] | None:
        code, body = await self.kube.request("GET", f"{KUEUE_API}/namespaces/{self.ns}/workloads")
        items = body.get("items", []) if code == 200 and isinstance(body, dict) else []
        return dict(items[0]) if items else None

    async def pods(self) -> list[dict[str, Any]]:
        _, body = await self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/pods")
        return list(body.get("items", [])) if isinstance(body, dict) else []

    async def live_pods(self) -> list[dict[str, Any]]:
        return [p for p in await self.pods() if not p["metadata"].get("deletionTimestamp")]

    async def assigned(self) -> set[str]:
        wl = await self.workload()
        return assigned_nodes(wl) if wl else set()

    async def teardown(self) -> None:
        """Delete the Job (its pods and Workload with it), the namespace and the Kueue objects,
        and stop the fake kubelets."""
        await self.kubelets.stop()
        await self.kube.request(
            "DELETE", f"/apis/batch/v1/namespaces/{self.ns}/jobs/tas",
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        # No kubelet finishes the pods' deletion any more: do it, so the namespace can go.
        for p in await self.pods():
            await self.kube.request("DELETE", rest_path("Pod", self.ns, p["metadata"]["name"])
                                    + "?gracePeriodSeconds=0")
        for path in reversed(self.created):
            await self.kube.request("DELETE", path)
        await self.kube.request("DELETE", f"/api/v1/namespaces/{self.ns}")

        async def gone() -> bool:
            for path in self.created:
                code, _ = await self.kube.request("GET", path)
                if code != 404:
                    return False
            return True

        # Kueue drops its finalizers once nothing uses a queue or flavor any more.
        if await until(gone, 60) is None:
            left = [p for p in self.created if (await self.kube.request("GET", p))[0] != 404]
            raise AssertionError(f"Kueue objects not deleted within 60 s: {left}")
