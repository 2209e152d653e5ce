"""Least privilege on a real control plane: the agent acts with the ServiceAccount, ClusterRole
and bindings of deploy/rbac.yaml, authenticated by a TokenRequest token (not as admin).

Every action the shipped rules and the failover path take goes through the real stage and gate
and must succeed under that role; a verb removed from the role must surface as a clear failure
(the decision's message, /status, the actions metric and the log), never as a crash, a silent
no-op or a retry storm. Real tier only: the in-memory server has no authorizer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import structlog
import yaml

from agent.kube.conditions import patch_conditions, read_conditions
from agent.runtime.remediation import RemediationStage
from agent.structs.remediation import ActionRequest, ActionSpec, Target
from tests.k8s_helpers import NODE, Clock, ScriptedEngine, metric, node, pdb, settings, snapshot
from tests.real_cluster import RBAC, Backend, Heartbeats, RealCluster, kubectl

pytestmark = [pytest.mark.backends, pytest.mark.real_only]

@pytest_asyncio.fixture
async def sa_api(kube: Backend, sa_token: str) -> AsyncIterator[Any]:
    """A kubernetes_asyncio client holding a token of the nodemedic ServiceAccount."""
    from kubernetes_asyncio import client

    assert kube.creds is not None
    cfg = client.Configuration(host=kube.creds.server)
    cfg.ssl_ca_cert = kube.creds.ca
    cfg.api_key = {"BearerToken": sa_token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        await api.close()


def bare_pod(name: str, on: str = NODE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": on, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def outcomes(stage: RemediationStage) -> list[tuple[str, str, str]]:
    return [(d["action"], d["outcome"], d.get("message", ""))
            for d in stage.status()["remediation"]["recent_decisions"]]


async def run(stage: RemediationStage, engine: ScriptedEngine, clock: Clock,
              reqs: list[ActionRequest]) -> list[tuple[str, str, str]]:
    engine.queue = reqs
    now = clock.t
    await stage.on_snapshot(snapshot())
    clock.t += 1  # decisions carry the stage clock's time: this tick's are those at ``now``
    return [(d["action"], d["outcome"], d.get("message", ""))
            for d in stage.status()["remediation"]["recent_decisions"] if d["time"] == now]


def req(action: str, params: dict[str, Any] | None = None, *, target: Target | None = None,
        undo: bool = False, rule: str = "node-broken", cooldown: float = 0.0) -> ActionRequest:
    return ActionRequest(rule=rule, action=ActionSpec.of(action, params or {}),
                         target=target or Target("node", NODE), undo=undo,
                         observed={"nodemedic_kubelet_up": 0.0}, cooldown_seconds=cooldown)


async def test_every_shipped_action_succeeds_under_the_shipped_role(
    kube: Backend, sa_api: Any
) -> None:
    """cordon, taint, annotate (node, pod, owner), event, evict-pod honouring a PDB, drain,
    untaint, uncordon, node conditions and the cordon lock: all allowed to the ServiceAccount."""
    await kube.seed(node(NODE))
    await kube.seed(node("node-b"))
    async with Heartbeats(kube, [NODE, "node-b"]):
        await _every_action(kube, sa_api)


async def _every_action(kube: Backend, sa_api: Any) -> None:
    for name in ("web-a", "web-b", "web-c"):
        await kube.seed(bare_pod(name, on=NODE if name != "web-c" else "node-b"))
    await kube.seed(pdb("web", "shop", 1, app="web"))
    # A ReplicaSet (pods it makes stay Pending: no node fits them) as the owner to annotate.
    await kube.seed({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                     "metadata": {"name": "api", "namespace": "shop"},
                     "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                              "template": {"metadata": {"labels": {"app": "api"}},
                                           "spec": {"containers": [{"name": "c",
                                                                    "image": "busybox"}]}}}})
    owned = await _first_pod(kube, "app=api")

    clock = Clock()
    engine = ScriptedEngine()
    stage = RemediationStage(settings(safety_max_cordoned="2"),
                             sa_api, engine, clock=clock, monotonic=clock)
    got = await run(stage, engine, clock, [
        req("cordon"),
        req("taint", {"key": "nodemedic.io/unhealthy", "effect": "NoSchedule"}),
        req("annotate", {"key": "nodemedic.io/note", "value": "checked"}),
        req("annotate", {"key": "nodemedic.io/note", "value": "pod", "target": "pod"},
            target=Target("pod", NODE, "shop", owned)),
        req("annotate", {"key": "nodemedic.io/note", "value": "owner", "target": "owner"},
            target=Target("pod", NODE, "shop", owned), rule="oom-storm"),
        req("event", {"reason": "NodemedicCheck", "message": "checked by the RBAC test"}),
        req("evict-pod", {"grace_period_cap": "0s"}, target=Target("pod", NODE, "shop", "web-a")),
    ])
    # Seven requests, seven executions, every one a success (a noop would hide a refused
    # write behind "nothing to do").
    assert [g[1] for g in got] == ["success"] * 7, got
    pod = await kube.get("Pod", "shop", owned)
    assert pod is not None and pod["metadata"]["annotations"]["nodemedic.io/note"] == "pod"
    code, evs = await kube.request(
        "GET", "/api/v1/namespaces/default/events?fieldSelector=reason%3DNodemedicCheck")
    assert code == 200 and evs["items"], evs
    code, lock = await kube.request(  # the gate took the cordon Lease before cordoning
        "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/nodemedic-cordon")
    assert code == 200, lock
    n = await kube.get("Node", "", NODE)
    assert n is not None and n["spec"]["unschedulable"] is True
    assert ("nodemedic.io/unhealthy", "NoSchedule") in {
        (t["key"], t["effect"]) for t in n["spec"].get("taints", [])}
    rs = await kube.get("ReplicaSet", "shop", "api")
    assert rs is not None and rs["metadata"]["annotations"]["nodemedic.io/note"] == "owner"
    web_a = await kube.get("Pod", "shop", "web-a")
    assert web_a is None or web_a["metadata"].get("deletionTimestamp")

    got = await run(stage, engine, clock, [req("drain", {"timeout": "60s",
                                                          "grace_period_cap": "1h",
                                                          "evict_unmanaged": True})])
    for _ in range(60):  # over later ticks, as the disruption controller recounts the budget
        if got and got[-1][1] not in ("retry", "started", "progress"):
            break
        await asyncio.sleep(0.5)
        got = await run(stage, engine, clock, [req("drain", {"timeout": "60s",
                                                              "grace_period_cap": "1h",
                                                              "evict_unmanaged": True})])
    assert got[-1][1] == "success", got
    got = await run(stage, engine, clock, [
        req("untaint", {"key": "nodemedic.io/unhealthy"}, undo=True),  # every effect of the key
        req("uncordon", undo=True),
    ])
    assert [g[1] for g in got] == ["success", "success"], got

    # Node problem conditions (agent.problems) go through nodes/status.
    cond = {"type": "NodemedicReadonlyFilesystem", "status": "True", "reason": "FilesystemIsRO",
            "message": "test", "lastHeartbeatTime": "2026-12-03T00:00:00Z",
            "lastTransitionTime": "2026-12-03T00:00:00Z"}
    await patch_conditions(sa_api, NODE, [cond])
    assert "NodemedicReadonlyFilesystem" in {c["type"] for c in
                                             await read_conditions(sa_api, NODE)}
    await stage.close()


async def _first_pod(kube: Backend, selector: str) -> str:
    for _ in range(300):
        code, body = await kube.request(
            "GET", f"/api/v1/namespaces/shop/pods?labelSelector={selector}")
        if code == 200 and body["items"]:
            return str(body["items"][0]["metadata"]["name"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"the ReplicaSet controller made no pod for {selector}")


async def test_a_removed_verb_is_a_clear_failure(
    kube: Backend, sa_api: Any, real_cluster: RealCluster
) -> None:
    """Without 'update' on nodes a cordon fails with the server's 403 in the decision, /status,
    the actions metric and the log; later ticks do not hammer the API with the same call."""
    role = next(d for d in yaml.safe_load_all(RBAC.read_text())
                if d and d["kind"] == "ClusterRole" and d["metadata"]["name"] == "nodemedic-node")
    cut = [r for r in role["rules"] if not (r["resources"] == ["nodes"]
                                            and r["verbs"] == ["update"])]
    assert len(cut) == len(role["rules"]) - 1
    await asyncio.to_thread(kubectl, real_cluster, kube, "apply", "-f", "-",
                            stdin=yaml.safe_dump({**role, "rules": cut}))
    try:
        await kube.seed(node(NODE))
        clock = Clock()
        engine = ScriptedEngine()
        stage = RemediationStage(settings(), sa_api, engine, clock=clock, monotonic=clock)
        with structlog.testing.capture_logs() as logs:
            got = await _until_forbidden(stage, engine, clock)
        assert metric(stage.families(), "nodemedic_state_writes_total", result="error") == 1
        action, outcome, message = got
        assert (action, outcome) == ("cordon", "failure")
        assert "403" in message and "cannot update resource \"nodes\"" in message, message
        status = stage.status()["remediation"]["recent_decisions"][-1]
        assert "403" in status["message"]
        assert metric(stage.families(), "nodemedic_actions_total", action="cordon",
                      decision="allowed", outcome="failure") == 1
        assert any("403" in str(e.get("message", e.get("detail", ""))) for e in logs), logs
        n = await kube.get("Node", "", NODE)
        assert n is not None and not n["spec"].get("unschedulable")
        # The failed cordon is in the ledger: the next ticks are held by the rule's cooldown
        # (rules/kubelet.yaml: 10m) instead of repeating the forbidden write every tick, and the
        # state annotation (also an update of the node) backs off too.
        with structlog.testing.capture_logs() as later:
            for _ in range(5):
                await run(stage, engine, clock, [req("cordon", cooldown=600)])
        assert metric(stage.families(), "nodemedic_actions_total", action="cordon",
                      decision="allowed", outcome="failure") == 1
        assert metric(stage.families(), "nodemedic_actions_total", action="cordon",
                      decision="denied", outcome="none") == 5
        writes = [e for e in later if e["event"] == "state_write_failed"]
        assert len(writes) <= 1, writes
        await stage.close()
    finally:
        await asyncio.to_thread(kubectl, real_cluster, kube, "apply", "-f", str(RBAC))


async def _until_forbidden(stage: RemediationStage, engine: ScriptedEngine,
                           clock: Clock) -> tuple[str, str, str]:
    # RBAC changes reach the authorizer's cache within a second or so.
    for _ in range(50):
        got = await run(stage, engine, clock, [req("cordon", cooldown=600)])
        if got and got[-1][1] == "failure":
            return got[-1]
        if got and got[-1][1] == "success":
            raise AssertionError("the cordon succeeded without 'update' on nodes")
        await asyncio.sleep(0.1)
    raise AssertionError(f"no failure surfaced: {outcomes(stage)}")
