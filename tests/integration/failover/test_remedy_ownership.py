"""The leader's escalation re-checks, in the write itself, that its isolation still exists:
an admin's uncordon or removal of nodemedic's taint, even one the leader's watch has not shown
yet, stops the out-of-service taint (issue 12 item 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.peers.fencing import FAILED_TAINT, OUT_OF_SERVICE
from agent.peers.remedy import STATE_ANNOTATION, Remedy
from tests.k8s_helpers import settings
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends

OOS_KEY = OUT_OF_SERVICE["key"]


def failed_node(unschedulable: bool, tainted: bool) -> dict[str, Any]:
    state = {"phase": "evicted", "since": 1.0, "leader": "node-l"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-x", "annotations": {
            STATE_ANNOTATION: json.dumps(state),
            "nodemedic.io/cordoned-by": json.dumps({"rules": ["failed-node"], "at": "x"})}},
        "spec": {"unschedulable": unschedulable,
                 "taints": [{"key": FAILED_TAINT["key"], "effect": "NoSchedule"}] if tainted
                 else []},
    }


@pytest.mark.parametrize(("unschedulable", "tainted", "why"), [
    (False, True, "an admin uncordoned the node"),
    (True, False, "an admin removed the taint nodemedic.io/node-failed:NoSchedule"),
])
async def test_fence_refuses_when_an_admin_undid_the_isolation(
    kube: Backend, kube_api: Any, unschedulable: bool, tainted: bool, why: str,
) -> None:
    await kube.seed(failed_node(unschedulable, tainted))
    remedy = Remedy(settings(node_name="node-l"), kube_api, "node-l")
    assert await remedy.fence("node-x", "no peer reached it") is False
    node = await kube.get("Node", "", "node-x")
    assert node is not None
    assert OOS_KEY not in {t["key"] for t in node["spec"].get("taints") or []}
    assert remedy.reversed["node-x"] == why
    assert remedy.actions[("out-of-service", "denied", "none")] == 1


async def test_fence_applies_while_the_isolation_is_intact(
    kube: Backend, kube_api: Any
) -> None:
    await kube.seed(failed_node(True, True))
    remedy = Remedy(settings(node_name="node-l"), kube_api, "node-l")
    assert await remedy.fence("node-x", "no peer reached it") is True
    node = await kube.get("Node", "", "node-x")
    assert node is not None
    assert OOS_KEY in {t["key"] for t in node["spec"]["taints"]}
