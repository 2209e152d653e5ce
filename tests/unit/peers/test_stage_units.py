"""Failover stage pieces without a cluster: inert when disabled, agent URLs tied to the node."""

from __future__ import annotations

import asyncio

from agent.peers.cluster import ClusterView, reduce_node
from agent.peers.stage import FailoverStage
from agent.settings import settings_for_tests


async def test_without_api_the_stage_is_inert_but_says_it_does_not_lead() -> None:
    """Enabled without a cluster: nothing starts, nodemedic_leader is exported as 0."""
    stage = FailoverStage(settings_for_tests(failover_enabled=True), None)
    await stage.start()
    fams = {f.name: f for f in stage.families()}
    assert fams["nodemedic_leader"].get() == 0
    assert stage.status() == {"failover": {"enabled": False}}
    await stage.close()


def node(name: str, *addresses: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def test_agent_url_must_point_at_the_node_itself() -> None:
    """A heartbeat URL naming another machine is ignored (never probed, never trusted)."""
    view = ClusterView(None, "kube-system")
    view.nodes.items["n1"] = reduce_node(node("n1", "10.0.0.1"))
    view.urls["n1"] = "http://10.0.0.1:9678/ignored/path"
    assert view.agent_url("n1") == "http://10.0.0.1:9678"
    view.urls["n1"] = "http://169.254.169.254:80"
    assert view.agent_url("n1") == ""
    view.urls["n1"] = "file:///etc/passwd"
    assert view.agent_url("n1") == ""
    assert view.agent_url("unknown-node") == ""


def test_reduce_node_keeps_only_what_the_leader_reads() -> None:
    """Zone, Ready, taints, nodemedic annotations and addresses survive; the rest is dropped."""
    obj = node("n1", "10.0.0.1")
    obj["metadata"] = {**obj["metadata"], "annotations": {  # type: ignore[dict-item]
        "nodemedic.io/failover": "{}", "other.io/x": "y"}}
    info = reduce_node(obj)
    assert info.zone == "z1" and info.ready is True
    assert info.annotations == (("nodemedic.io/failover", "{}"),)
    assert info.addresses == ("10.0.0.1",)


async def test_peers_are_given_the_plain_probe_address() -> None:
    """With --web.probe-address (required with TLS and failover) peers are told to probe it,
    not the main listener, which may speak TLS or ask for credentials."""
    settings = settings_for_tests(web_listen_address="10.0.0.1:9678",
                                  web_probe_address="10.0.0.1:9679")
    assert await FailoverStage(settings, None)._advertise_url() == "http://10.0.0.1:9679"
    plain = settings_for_tests(web_listen_address="10.0.0.1:9678")
    assert await FailoverStage(plain, None)._advertise_url() == "http://10.0.0.1:9678"


async def test_node_churn_does_not_grow_the_leaders_memory() -> None:
    """Per-node memory is pruned once nodes are deleted: 500 nodes that came and went
    (autoscaling) leave nothing behind but the live one and the one whose failover still runs.
    Before, five per-node maps kept every name."""
    stage = FailoverStage(settings_for_tests(failover_enabled=True), None)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    done.set_result(None)
    running: asyncio.Future[None] = loop.create_future()
    gone = [f"churn-{i}" for i in range(500)]
    for name in [*gone, "live", "running"]:
        ep = stage.episodes.get(name)
        ep.announced, ep.healthy_since, ep.failed_since, ep.not_before = "failed", 1.0, 1.0, 1.0
        ep.stopped = "an admin uncordoned it"
        ep.cordon_noted = ep.capped_noted = ep.settled = True
        ep.work = done  # type: ignore[assignment]  # a finished failover
    stage.episodes.get("running").work = running  # type: ignore[assignment]
    stage._prune({"live"})
    assert sorted(name for name, _ in stage.episodes) == ["live", "running"]
    assert stage.episodes.get("live").stopped == "an admin uncordoned it"  # live nodes keep all
    counters = {"_probe_counts"}  # fixed keys (reachable, unreachable), not per node
    sizes = {k: len(v) for k, v in vars(stage).items()
             if k.startswith("_") and isinstance(v, dict | set) and k not in counters}
    assert {k: n for k, n in sizes.items() if n} == {}  # no per-node map beside the records
    running.set_result(None)
