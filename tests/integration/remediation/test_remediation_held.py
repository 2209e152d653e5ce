"""A step denied for a reason that clears by itself is held and retried (issue 12 item 7).

The real rules engine (a kubelet rule that cordons after 30 s, and the shipped ladder), the gate,
the stage and the in-memory API server. Before the fix a cordon denied during an API outage, a
pause, a full cluster cap or a held cordon Lease was never retried: the rule stayed "firing" with
its step marked done and the node stayed schedulable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from agent.rules.engine import RuleEngine
from agent.rules.loader import load_rules_dir
from agent.runtime.remediation import HELD_RETRY_MAX_TICKS, RemediationStage
from agent.structs.metrics import MetricSpec
from agent.structs.snapshot import CollectorStatus, Snapshot
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    metric,
    node,
    settings,
    snapshot,
)
from tests.real_cluster import Backend

pytestmark = pytest.mark.backends

RULE = """
rules:
  - name: kubelet-down
    description: cordon a node whose kubelet is down
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    for: 30s
    healthy_for: 30s
    cooldown: 10m
    max_per_hour: 3
    actions:
      - type: cordon
    undo:
      - type: uncordon
"""
TICK = 10.0


class Agent:
    """One agent: engine + stage on a hand-moved clock; ``tick`` feeds one kubelet_up value."""

    def __init__(self, kube_api: Any, rules: Path, clock: Clock, base: float = 1.7e9,
                 **overrides: Any) -> None:
        self.clock = clock
        self.mono: Callable[[], float] = lambda: clock.t - base
        self.engine = RuleEngine(load_rules_dir(rules), NODE)
        self.stage = RemediationStage(settings(rules_dir=rules, **overrides), kube_api,
                                      self.engine, clock=clock, monotonic=self.mono)

    async def tick(self, kubelet_up: float = 0.0, n: int = 1) -> None:
        for _ in range(n):
            await self.stage.on_snapshot(snapshot(kubelet_up=kubelet_up, mono=self.mono()))
            self.clock.t += TICK

    def held(self) -> list[dict[str, Any]]:
        return self.stage.status()["remediation"]["held"]  # type: ignore[no-any-return]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "kubelet.yaml").write_text(RULE)
    return d


def set_paused(server: ApiServer, agent: Agent, paused: bool) -> None:
    value = "true" if paused else None
    server.patch("Node", "", NODE, {"metadata": {"annotations": {"nodemedic.io/paused": value}}})
    agent.stage.gate.pause.invalidate()  # type: ignore[union-attr]


def cordoned(server: ApiServer, name: str = NODE) -> bool:
    n = server.get("Node", "", name)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


def held_reasons(agent: Agent) -> list[tuple[str, str]]:
    return [(h["action"], h["reason"]) for h in agent.held()]


async def test_cordon_denied_during_an_api_outage_is_retried(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """The API is down when the rule fires: the cordon is held (missing_data, shown in /status
    and nodemedic_actions_held); the API comes back and the node is cordoned."""
    apiserver.create(node(NODE))
    agent = Agent(kube_api, rules, Clock())
    await agent.tick(n=3)  # 0..20 s: pending
    await apiserver.stop()
    await agent.tick(n=4)  # 30..60 s: fires while the API is down (33 s outage)
    assert held_reasons(agent) == [("cordon", "missing_data")]
    assert metric(agent.stage.families(), "nodemedic_actions_held", action="cordon",
                  reason="missing_data") == 1
    await apiserver.start()
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)  # retried on a later tick (backoff)
    assert cordoned(apiserver)
    assert agent.held() == []
    assert metric(agent.stage.families(), "nodemedic_actions_held", action="cordon",
                  reason="missing_data") is None


async def test_cordon_denied_while_paused_is_retried_after_unpause(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """Paused by the node annotation when the rule fires: held (paused); unpaused: cordoned."""
    apiserver.create(node(NODE, **{"nodemedic.io/paused": "true"}))
    agent = Agent(kube_api, rules, Clock())
    await agent.tick(n=10)
    assert not cordoned(apiserver)
    assert held_reasons(agent) == [("cordon", "paused")]
    assert "node annotation" in agent.held()[0]["detail"]
    (rule,) = agent.stage.status()["rules"]
    assert (rule["state"], rule["held"]) == ("firing", ["cordon (step 0): paused"])
    set_paused(apiserver, agent, False)
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)
    assert agent.held() == []


async def test_cordon_denied_by_the_cluster_cap_is_retried_when_it_frees_up(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """--safety.max-cordoned=3 with three nodes already cordoned: held (cluster_cap); an admin
    uncordons one of them and this node is cordoned, within the cap."""
    apiserver.create(node(NODE))
    for i in range(9):
        apiserver.create(node(f"other-{i}", unschedulable=i < 3))
    agent = Agent(kube_api, rules, Clock(), safety_max_cordoned="3")
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    assert held_reasons(agent) == [("cordon", "cluster_cap")]
    apiserver.patch("Node", "", "other-0", {"spec": {"unschedulable": False}})
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)
    assert sum(cordoned(apiserver, f"other-{i}") for i in range(9)) == 2  # cap of 3 kept


async def test_cordon_denied_by_the_cordon_lock_is_retried(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """Another node holds the cordon Lease (it died mid-cordon): held (cordon_lock); once the
    Lease expires the node is cordoned."""
    apiserver.create(node(NODE))
    clock = Clock()
    apiserver.create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "nodemedic-cordon", "namespace": "kube-system"},
        # Renewed 25 s after the clock's start: still held when the rule fires at 30 s.
        "spec": {"holderIdentity": "node-dead", "leaseDurationSeconds": 15,
                 "renewTime": "2027-01-15T08:00:25.000000Z"},
    })
    agent = Agent(kube_api, rules, clock)
    await agent.tick(n=4)
    assert not cordoned(apiserver)
    assert held_reasons(agent) == [("cordon", "cordon_lock")]
    await agent.tick(n=3)
    assert cordoned(apiserver)


async def test_a_held_step_is_dropped_when_the_rule_resolves(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """Paused while firing, then the kubelet recovers: the held cordon is dropped, and
    unpausing afterwards cordons nothing (no late action on a healthy node)."""
    apiserver.create(node(NODE, **{"nodemedic.io/paused": "true"}))
    agent = Agent(kube_api, rules, Clock())
    await agent.tick(n=6)
    assert held_reasons(agent) == [("cordon", "paused")]
    await agent.tick(kubelet_up=1, n=2)
    assert agent.held() == []
    set_paused(apiserver, agent, False)
    await agent.tick(kubelet_up=1, n=10)
    assert not cordoned(apiserver)
    assert metric(agent.stage.families(), "nodemedic_actions_held_dropped_total",
                  reason="resolved") == 1


async def test_a_held_step_survives_an_agent_restart(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """Held (paused), the agent is restarted, then unpaused: the new agent cordons (the held
    step and its caps are in the state annotation)."""
    apiserver.create(node(NODE, **{"nodemedic.io/paused": "true"}))
    clock = Clock()
    first = Agent(kube_api, rules, clock)
    await first.tick(n=6)
    assert held_reasons(first) == [("cordon", "paused")]
    await first.stage.close()
    second = Agent(kube_api, rules, clock, base=1.6e9)
    await second.stage.start()
    assert held_reasons(second) == [("cordon", "paused")]
    set_paused(apiserver, second, False)
    await second.tick(n=3)
    assert cordoned(apiserver)


async def test_held_retries_back_off(kube: Backend, kube_api: Any, rules: Path) -> None:
    """A step held for 5 minutes is re-gated with backoff, not every tick: at most one gate
    decision per HELD_RETRY_MAX_TICKS ticks once the backoff is full."""
    await kube.seed(node(NODE, **{"nodemedic.io/paused": "true"}))
    agent = Agent(kube_api, rules, Clock())
    await agent.tick(n=34)  # fires at 30 s, then 30 ticks held
    denied = metric(agent.stage.families(), "nodemedic_actions_denied_total", action="cordon",
                    rule="kubelet-down", reason="paused")
    assert denied is not None and 4 <= denied <= 3 + 30 / HELD_RETRY_MAX_TICKS + 1


async def test_an_undo_denied_while_paused_is_retried(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """The kubelet recovered while remediation was paused: the uncordon is held, and done
    once unpaused (the node does not stay cordoned forever)."""
    apiserver.create(node(NODE))
    agent = Agent(kube_api, rules, Clock())
    await agent.tick(n=5)
    assert cordoned(apiserver)
    set_paused(apiserver, agent, True)
    await agent.tick(kubelet_up=1, n=6)
    assert cordoned(apiserver)
    assert held_reasons(agent) == [("uncordon", "paused")]
    set_paused(apiserver, agent, False)
    await agent.tick(kubelet_up=1, n=HELD_RETRY_MAX_TICKS + 1)
    assert not cordoned(apiserver)
    assert agent.held() == []


async def test_pause_switch_refused_by_rbac_is_missing_data_not_unpaused(
    apiserver: ApiServer, kube_api: Any, rules: Path
) -> None:
    """The gate's own reads: RBAC refuses the pause ConfigMap (403). That is not "not paused":
    the cordon is held as missing_data, naming the 403, and done once the read works again."""
    apiserver.create(node(NODE))
    apiserver.faults.fail(1000, 403, verb="get", resource="configmaps")
    agent = Agent(kube_api, rules, Clock())
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    assert held_reasons(agent) == [("cordon", "missing_data")]
    assert "HTTP 403" in agent.held()[0]["detail"]
    apiserver.faults.clear()
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)


# kubelet_up fires the rule; the lease age (no series on this node, so never among the values a
# request records) is the rule's second metric, read from another collector.
TWO_SOURCES = """
rules:
  - name: kubelet-down
    when:
      any:
        - {metric: nodemedic_kubelet_up, op: "==", value: 0}
        - {metric: nodemedic_node_lease_age_seconds, op: ">", value: 600}
    for: 30s
    cooldown: 10m
    actions:
      - type: cordon
"""


def two_sources(mono: float, lease_ok: bool) -> Snapshot:
    up = MetricSpec("nodemedic_kubelet_up", "kubelet health", "gauge").family()
    up.add((), 0.0)
    fams = {up.name: up}
    if lease_ok:
        lease = MetricSpec("nodemedic_node_lease_age_seconds", "lease age", "gauge").family()
        fams[lease.name] = lease
    return Snapshot(
        taken_at=0.0, monotonic=mono, families=MappingProxyType(fams),
        collectors=MappingProxyType({
            "kubelet": CollectorStatus("kubelet", True, 0.1, None),
            "node": CollectorStatus("node", lease_ok, 0.1, None if lease_ok else "down")}),
        owners=MappingProxyType({"nodemedic_kubelet_up": "kubelet",
                                 "nodemedic_node_lease_age_seconds": "node"}),
    )


async def test_a_held_step_waits_while_any_metric_of_its_rule_has_no_data(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A cordon held while paused is not taken while the rule is frozen, even when the metric
    without data is not among the request's observed values: the request carries every metric
    its rule reads, through an agent restart too (the held step comes back from the state
    annotation). Once that metric's collector is back, the node is cordoned."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "kubelet.yaml").write_text(TWO_SOURCES)
    apiserver.create(node(NODE, **{"nodemedic.io/paused": "true"}))
    agent = Agent(kube_api, rules, Clock())

    async def tick(lease_ok: bool, n: int) -> None:
        for _ in range(n):
            await agent.stage.on_snapshot(two_sources(agent.mono(), lease_ok))
            agent.clock.t += TICK

    await tick(lease_ok=True, n=5)  # fires at 30 s while paused: held
    assert held_reasons(agent) == [("cordon", "paused")]
    (rule,) = agent.stage.status()["rules"]
    assert list(rule["observed"]) == ["nodemedic_kubelet_up"]  # what the cordon request carries
    await agent.stage.close()
    agent = Agent(kube_api, rules, agent.clock, base=1.6e9)  # restarted: state from the API
    await agent.stage.start()
    assert held_reasons(agent) == [("cordon", "paused")]
    await tick(lease_ok=False, n=1)  # the lease collector fails: the rule is frozen
    set_paused(apiserver, agent, False)
    await tick(lease_ok=False, n=HELD_RETRY_MAX_TICKS + 1)
    assert not cordoned(apiserver)
    assert held_reasons(agent) == [("cordon", "missing_data")]
    assert "nodemedic_node_lease_age_seconds has no fresh data" in agent.held()[0]["detail"]
    await tick(lease_ok=True, n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)
    assert agent.held() == []
