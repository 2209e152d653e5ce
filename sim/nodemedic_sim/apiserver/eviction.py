"""The Eviction API (pods/eviction) and the PodDisruptionBudget arithmetic behind it.

Called by nodemedic_sim.apiserver.server for ``POST .../pods/NAME/eviction`` and, for PDB status,
by the server's background sweep (standing in for kube-controller-manager's disruption
controller). Healthy pods are counted as the disruption controller counts them: pods in the PDB's
namespace matching its selector, not terminating, not already disrupted, with condition
Ready=True. The server runs no workload controllers, so ``expectedPods`` is the number of matching
pods that have not finished (terminating ones included) rather than the owning controllers' scale.
"""

from __future__ import annotations

import math
from typing import Any

from nodemedic_sim.apiserver import status as st
from nodemedic_sim.apiserver.registry import Registry, rfc3339
from nodemedic_sim.apiserver.resources import BY_PATH
from nodemedic_sim.apiserver.selectors import selector_from_spec
from nodemedic_sim.apiserver.store import Obj

PDB = BY_PATH[("policy", "v1", "poddisruptionbudgets")]
POD = BY_PATH[("", "v1", "pods")]

VIOLATION = "Cannot evict pod as it would violate the pod's disruption budget."


def is_ready(pod: Obj) -> bool:
    """Whether the pod has condition Ready=True."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _scaled(value: Any, total: int) -> int:
    """intstr.GetScaledValueFromIntOrPercent with roundUp=true."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def matching_pods(reg: Registry, pdb: Obj) -> list[Obj]:
    """Pods in the PDB's namespace selected by ``spec.selector`` (an empty selector selects all)."""
    sel = selector_from_spec((pdb.get("spec") or {}).get("selector"))
    ns = pdb["metadata"]["namespace"]
    return [p for p in reg.store.items(POD.key, ns) if sel(p["metadata"].get("labels") or {})]


def compute_status(reg: Registry, pdb: Obj) -> dict[str, Any]:
    """The PDB status the disruption controller would write now."""
    spec = pdb.get("spec") or {}
    old = pdb.get("status") or {}
    pods = [
        p
        for p in matching_pods(reg, pdb)
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    live = {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}
    disrupted = {k: v for k, v in (old.get("disruptedPods") or {}).items() if k in live}
    healthy = sum(
        1
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and p["metadata"]["name"] not in disrupted
        and is_ready(p)
    )
    expected = len(pods)
    if "maxUnavailable" in spec:
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected))
    elif "minAvailable" in spec:
        desired = _scaled(spec["minAvailable"], expected)
    else:
        desired = 0
    allowed = max(0, healthy - desired)
    gen = pdb["metadata"].get("generation", 1)
    prev_cond = next(
        (c for c in old.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None
    )
    cond_status = "True" if allowed > 0 else "False"
    transition = (
        prev_cond["lastTransitionTime"]
        if prev_cond and prev_cond.get("status") == cond_status
        else rfc3339(reg.clock())
    )
    out: dict[str, Any] = {
        "observedGeneration": gen,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [
            {
                "type": "DisruptionAllowed",
                "status": cond_status,
                "reason": "SufficientPods" if allowed > 0 else "InsufficientPods",
                "message": "",
                "observedGeneration": gen,
                "lastTransitionTime": transition,
            }
        ],
    }
    if disrupted:
        out["disruptedPods"] = disrupted
    return out


def refresh_namespace(reg: Registry, namespace: str) -> None:
    """Recompute and store the status of every PDB in ``namespace`` whose status changed."""
    for pdb in reg.store.items(PDB.key, namespace):
        new = compute_status(reg, pdb)
        if new != pdb.get("status"):
            reg.replace(PDB, namespace, pdb["metadata"]["name"], {**pdb, "status": new}, "status")


def evict(reg: Registry, namespace: str, name: str, body: Obj, dry_run: bool = False) -> Obj:
    """Handle an Eviction: 404 / 429 / 500 like kube-apiserver, else delete the pod gracefully."""
    pod = reg.get(POD, namespace, name)
    if not isinstance(body, dict):
        raise st.bad_request("the body of the request was not a valid Eviction")
    body_name = (body.get("metadata") or {}).get("name")
    if body_name and body_name != name:
        raise st.bad_request("name in URL does not match name in Eviction object")
    options = body.get("deleteOptions") or {}
    success = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed", "Pending") or pod["metadata"].get("deletionTimestamp"):
        # canIgnorePDB: evicting these causes no new disruption.
        if not dry_run:
            _delete(reg, pod, options)
        return success
    labels = pod["metadata"].get("labels") or {}
    pdbs = [
        p
        for p in reg.store.items(PDB.key, namespace)
        if selector_from_spec((p.get("spec") or {}).get("selector"))(labels)
    ]
    if len(pdbs) > 1:
        raise st.ApiError(
            500,
            "InternalError",
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does "
            "not support.",
        )
    if pdbs:
        pdb = pdbs[0]
        status = compute_status(reg, pdb)
        policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
        if not is_ready(pod) and (
            policy == "AlwaysAllow" or status["currentHealthy"] >= status["desiredHealthy"]
        ):
            if not dry_run:
                _delete(reg, pod, options)
            return success
        if status["disruptionsAllowed"] <= 0:
            raise st.ApiError(
                429,
                "TooManyRequests",
                VIOLATION,
                {
                    "causes": [
                        {
                            "reason": "DisruptionBudget",
                            "message": (
                                f"The disruption budget {pdb['metadata']['name']} needs "
                                f"{status['desiredHealthy']} healthy pods and has "
                                f"{status['currentHealthy']} currently"
                            ),
                        }
                    ]
                },
            )
        if dry_run:
            return success
        status["disruptionsAllowed"] -= 1
        status["disruptedPods"] = {**status.get("disruptedPods", {}), name: rfc3339(reg.clock())}
        reg.replace(PDB, namespace, pdb["metadata"]["name"], {**pdb, "status": status}, "status")
    if not dry_run:
        _delete(reg, pod, options)
    return success


def _delete(reg: Registry, pod: Obj, options: Obj) -> None:
    """Mark the pod with the DisruptionTarget condition Kubernetes (1.31+) sets, then delete it.

    Preconditions are checked first, so a refused eviction leaves the pod untouched.
    """
    reg.check_preconditions(POD, pod, options)
    cond = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
        "lastTransitionTime": rfc3339(reg.clock()),
    }
    meta = pod["metadata"]
    marked = reg.patch(
        POD,
        meta["namespace"],
        meta["name"],
        "application/strategic-merge-patch+json",
        {"status": {"conditions": [cond]}},
        "status",
    )
    pre = options.get("preconditions") or {}
    if pre.get("resourceVersion"):  # our own status write moved it on, as kube-apiserver allows
        pre = {**pre, "resourceVersion": marked["metadata"]["resourceVersion"]}
        options = {**options, "preconditions": pre}
    reg.delete(POD, meta["namespace"], meta["name"], options)
