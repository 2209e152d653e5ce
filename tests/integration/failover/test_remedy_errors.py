"""An action that raises something other than a Kubernetes error during failover is contained:
the leader records it as a failure (metric, warning log with the exception, Warning Event on
the node) exactly as the remediation stage does for rule actions, and its stage goes on.
Before issue 16 only KubeError was caught there: a ValueError or OSError escaped ``Remedy.run``
and took the leader's failover tick down."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from agent.actions.base import ActionContext
from agent.actions.cordon import Cordon
from agent.actions.drain import Drain
from agent.kube.events import InvolvedObject, event_name
from agent.peers.remedy import Remedy
from agent.structs.remediation import Decision, Outcome
from tests.k8s_helpers import metric, settings
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}


@pytest.mark.parametrize("error", [OSError("No space left on device"), ValueError("bad value")])
async def test_a_crashing_action_is_a_recorded_failure_not_a_crash(
    kube: Backend, kube_api: Any, monkeypatch: pytest.MonkeyPatch, error: Exception,
) -> None:
    async def boom(self: Cordon, decision: Decision, ctx: ActionContext) -> Outcome:
        raise error

    monkeypatch.setattr(Cordon, "execute", boom)
    await kube.seed(node("node-x"))
    remedy = Remedy(settings(node_name="node-l"), kube_api, "node-l")
    with structlog.testing.capture_logs() as logs:
        isolated = await remedy.isolate("node-x", "no peer reached it")  # must not raise

    assert isolated is False  # the cordon failed: the node is not isolated
    assert remedy.actions[("cordon", "allowed", "failure")] == 1
    assert remedy.actions[("taint", "allowed", "success")] == 1  # the next step still ran
    gate = remedy.target("node-x").gate
    assert metric(gate.families(), "nodemedic_actions_total", action="cordon",
                  rule="failed-node", decision="allowed", outcome="failure") == 1
    crashed = [e for e in logs if e["event"] == "action_crashed"]
    assert [(e["action"], e["log_level"]) for e in crashed] == [("cordon", "error")]
    said = [e for e in logs if e["event"] == "failover_action" and e["action"] == "cordon"]
    assert [(e["outcome"], e["message"], e["log_level"]) for e in said] == [
        ("failure", f"{type(error).__name__}: {error}", "warning")]
    obj = InvolvedObject("Node", "node-x")
    code, ev = await kube.request(
        "GET", f"/api/v1/namespaces/{obj.event_namespace}/events/"
        f"{event_name(obj, 'NodemedicCordon', 'Warning')}")
    assert code == 200
    assert ev["message"].startswith(f"cordon failure: {type(error).__name__}: {error}. "
                                    "rule failed-node")
    stored = await kube.get("Node", "", "node-x")
    assert stored is not None and not stored["spec"].get("unschedulable")


async def test_a_crashing_drain_pass_is_a_failure_and_the_ladder_goes_on(
    kube: Backend, kube_api: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def boom(self: Drain, decision: Decision, ctx: ActionContext) -> Outcome:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(Drain, "execute", boom)
    await kube.seed(node("node-x"))
    remedy = Remedy(settings(node_name="node-l"), kube_api, "node-l")
    assert await remedy.isolate("node-x", "no peer reached it") is True
    done, _left = await remedy.evict_pass("node-x", "no peer reached it")  # must not raise
    assert remedy.actions[("drain", "allowed", "failure")] == 1
    assert isinstance(done, bool)
