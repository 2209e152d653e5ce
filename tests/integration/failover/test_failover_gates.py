"""The leader's failover of a dead node honours the cluster freeze but not the rules' alert gate
and windows (issue 19 items 2, 3): a freeze is the admin's "no changes", while a failed node's own
alerts fire by definition and a node dies outside business hours too."""

from __future__ import annotations

import json
from typing import Any

from agent.peers.fencing import FAILED_TAINT, OUT_OF_SERVICE
from agent.peers.remedy import STATE_ANNOTATION, Remedy
from nodemedic_sim.apiserver import ApiServer
from tests.k8s_helpers import node, settings


def unschedulable(server: ApiServer, name: str) -> bool:
    n = server.get("Node", "", name)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


def isolated_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-x", "annotations": {
            STATE_ANNOTATION: json.dumps({"phase": "evicted", "since": 1.0, "leader": "node-l"}),
            "nodemedic.io/cordoned-by": json.dumps({"rules": ["failed-node"], "at": "x"})}},
        "spec": {"unschedulable": True,
                 "taints": [{"key": FAILED_TAINT["key"], "effect": "NoSchedule"}]},
    }


async def test_a_freeze_holds_isolation_and_fencing_until_lifted(
    apiserver: ApiServer, kube_api: Any
) -> None:
    apiserver.create(node("node-x"))
    apiserver.create(isolated_node() | {"metadata": {**isolated_node()["metadata"],
                                                      "name": "node-y"}})
    apiserver.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "nodemedic", "namespace": "kube-system"},
                      "data": {"freeze": "true"}})
    remedy = Remedy(settings(node_name="node-l", safety_max_cordoned="5"), kube_api, "node-l")
    assert await remedy.isolate("node-x", "no peer reached it") is False
    assert not unschedulable(apiserver, "node-x")
    assert remedy.actions[("cordon", "denied", "none")] == 1
    assert await remedy.fence("node-y", "no peer reached it") is False
    y = apiserver.get("Node", "", "node-y")
    assert y is not None
    assert OUT_OF_SERVICE["key"] not in {t["key"] for t in y["spec"]["taints"]}

    apiserver.patch("ConfigMap", "kube-system", "nodemedic", {"data": {"freeze": None}})
    # a new leader: no cached pause view
    remedy = Remedy(settings(node_name="node-l", safety_max_cordoned="5"), kube_api, "node-l")
    assert await remedy.isolate("node-x", "no peer reached it") is True
    assert unschedulable(apiserver, "node-x")
    assert await remedy.fence("node-y", "no peer reached it") is True


async def test_alert_gate_and_windows_do_not_hold_failover(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """An unreachable alert source and a deny window covering the whole week would hold every
    rule's cordon; the failover cordon of a dead node still runs."""
    apiserver.create(node("node-x"))
    s = settings(node_name="node-l", safety_alert_gate_prometheus_url="http://127.0.0.1:9",
                 safety_alert_gate_alerts=("NodeDown",),
                 safety_deny_windows=("daily 00:00-24:00 UTC",))
    remedy = Remedy(s, kube_api, "node-l")
    assert await remedy.isolate("node-x", "no peer reached it") is True
    assert unschedulable(apiserver, "node-x")
