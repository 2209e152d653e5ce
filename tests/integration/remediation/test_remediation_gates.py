"""Maintenance windows, the cluster freeze and the alert gate stop a cordon that would run
(issue 19 items 2 and 3), and let it run once they clear.

The real rules engine (a kubelet rule that cordons after 30 s), the gate, the stage and the
in-memory API server; the clock starts on Friday 2027-01-15 08:00 UTC. The alert gate polls an
aiohttp fake of Alertmanager's v2 API on loopback (tests/integration/test_alert_gate_prometheus.py
runs the same gate against a real Prometheus).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from agent.rules.engine import RuleEngine
from agent.rules.loader import RulesReloader
from agent.runtime.remediation import HELD_RETRY_MAX_TICKS, RemediationStage
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    ScriptedEngine,
    metric,
    node,
    pdb,
    pod,
    request,
    settings,
    snapshot,
)
from tests.polling import eventually

RULE = """
rules:
  - name: kubelet-down
    description: cordon a node whose kubelet is down
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    for: 30s
    cooldown: 10m
    actions:
      - type: cordon
"""
TICK = 10.0
FRIDAY_8 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Agent:
    """Engine + stage (with a rules reloader) on a hand-moved clock."""

    def __init__(self, kube_api: Any, rules: Path, clock: Clock, **overrides: Any) -> None:
        self.clock = clock
        self.mono: Callable[[], float] = lambda: clock.t - 1.7e9
        reloader = RulesReloader(rules)
        self.engine = RuleEngine(reloader.reload(), NODE)
        self.settings = settings(rules_dir=rules, **overrides)
        self.stage = RemediationStage(self.settings, kube_api, self.engine, clock=clock,
                                      monotonic=self.mono, reloader=reloader)

    async def tick(self, n: int = 1) -> None:
        for _ in range(n):
            await self.stage.on_snapshot(snapshot(kubelet_up=0.0, mono=self.mono()))
            self.clock.t += TICK

    def held(self) -> list[tuple[str, str, str]]:
        return [(h["action"], h["reason"], h["detail"])
                for h in self.stage.status()["remediation"]["held"]]

    def gate_status(self) -> dict[str, Any]:
        return self.stage.status()["remediation"]["gate"]  # type: ignore[no-any-return]


def write_rules(d: Path, text: str = RULE) -> Path:
    d.mkdir(exist_ok=True)
    (d / "kubelet.yaml").write_text(text)
    return d


def cordoned(server: ApiServer) -> bool:
    n = server.get("Node", "", NODE)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


def configmap(server: ApiServer, **data: str) -> None:
    server.create({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "nodemedic", "namespace": "kube-system"}, "data": data})


# --- windows -------------------------------------------------------------------------------------


async def test_a_deny_window_holds_the_cordon_until_it_ends(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """Inside --safety.deny-windows the cordon is held (reason window, next opening named);
    once the window ends it runs without anyone touching anything."""
    apiserver.create(node(NODE))
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8),
                  safety_deny_windows=("Fri 07:00-09:00 Europe/London",))
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    ((action, reason, detail),) = agent.held()
    assert (action, reason) == ("cordon", "window")
    assert "inside deny window 'Fri 07:00-09:00 Europe/London'" in detail
    assert "next opening 2027-01-15T09:00:00Z" in detail
    assert metric(agent.stage.families(), "nodemedic_actions_held", action="cordon",
                  reason="window") == 1
    assert metric(agent.stage.families(), "nodemedic_maintenance_window_open") == 0
    assert agent.gate_status()["windows"]["next_opening"] == "2027-01-15T09:00:00Z"
    agent.clock.t = FRIDAY_8 + 3600  # 09:00: the window is over
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)
    assert agent.held() == []
    assert metric(agent.stage.families(), "nodemedic_maintenance_window_open") == 1


async def test_outside_business_hours_waits_inside_them_runs(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """--safety.allow-windows: Friday 08:00 UTC is 09:00 in Berlin (inside), 03:00 in New York
    (outside)."""
    apiserver.create(node(NODE))
    rules = write_rules(tmp_path / "rules")
    agent = Agent(kube_api, rules, Clock(FRIDAY_8),
                  safety_allow_windows=("Mon-Fri 09:00-17:00 America/New_York",))
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    ((_, reason, detail),) = agent.held()
    assert reason == "window" and "next opening 2027-01-15T14:00:00Z" in detail

    apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": False}})
    berlin = Agent(kube_api, rules, Clock(FRIDAY_8),
                   safety_allow_windows=("Mon-Fri 09:00-17:00 Europe/Berlin",))
    await berlin.tick(n=6)
    assert cordoned(apiserver)
    assert berlin.held() == []


async def test_a_rule_window_holds_and_a_reload_applies_the_change(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A rule's gates.allow_windows holds its cordon on a Friday; the same rule reloaded without
    them (SIGHUP path: prepare + commit) lets the held step run."""
    apiserver.create(node(NODE))
    rules = write_rules(tmp_path / "rules", RULE + """\
    gates:
      allow_windows: ["Sat,Sun 00:00-24:00 UTC"]
""")
    agent = Agent(kube_api, rules, Clock(FRIDAY_8))
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    ((_, reason, detail),) = agent.held()
    assert reason == "window"
    assert "outside the allow windows 'Sat,Sun 00:00-24:00 UTC'" in detail
    assert "next opening 2027-01-16T00:00:00Z" in detail
    write_rules(rules, RULE)
    await agent.stage.reload(agent.settings)
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)


async def test_gates_actions_picks_which_actions_windows_hold(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A rule that lists only restart-service in gates.actions is not held by a deny window for
    its cordon; the global list (cordon included) still holds every other rule."""
    apiserver.create(node(NODE))
    rules = write_rules(tmp_path / "rules", RULE + """\
    gates:
      actions: [restart-service]
""")
    agent = Agent(kube_api, rules, Clock(FRIDAY_8),
                  safety_deny_windows=("Fri 00:00-24:00 UTC",))
    await agent.tick(n=6)
    assert cordoned(apiserver)


# --- freeze --------------------------------------------------------------------------------------


async def test_a_freeze_with_until_holds_and_ends_by_itself(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """freeze: "<until> <reason>" in the pause ConfigMap holds the cordon (reason freeze,
    reason and end in the detail, nodemedic_freeze_active 1, /status); at 'until' it runs."""
    apiserver.create(node(NODE))
    configmap(apiserver, freeze="2027-01-15T08:30:00Z release week, ask #ops")
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8))
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    ((_, reason, detail),) = agent.held()
    assert reason == "freeze"
    assert detail == ("frozen cluster-wide by kube-system/nodemedic key freeze until "
                      "2027-01-15T08:30:00Z: release week, ask #ops")
    assert metric(agent.stage.families(), "nodemedic_freeze_active") == 1
    assert agent.gate_status()["freeze"]["until"] == "2027-01-15T08:30:00Z"
    agent.clock.t = FRIDAY_8 + 1800
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)
    assert metric(agent.stage.families(), "nodemedic_freeze_active") == 0
    # Ended, but the key is still there: /status says so instead of a quiet "not frozen".
    freeze = agent.gate_status()["freeze"]
    assert (freeze["active"], freeze["expired_at"]) == (False, "2027-01-15T08:30:00Z")
    assert "which has passed: not frozen" in freeze["detail"]


async def test_a_freeze_written_with_a_past_date_is_reported_not_silently_ignored(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A freeze whose until has already passed when it is set (last year's date by mistake)
    freezes nothing — as documented — but says so: a warning log and /status expired_at."""
    apiserver.create(node(NODE))
    configmap(apiserver, freeze="2025-12-27T08:00:00Z year-end freeze")
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8))
    with structlog.testing.capture_logs() as logs:
        await agent.tick(n=6)
    assert cordoned(apiserver)
    expired = [e for e in logs if e["event"] == "freeze_expired"]
    assert len(expired) == 1 and expired[0]["ended"] == "2025-12-27T08:00:00Z"
    freeze = agent.gate_status()["freeze"]
    assert (freeze["active"], freeze["expired_at"]) == (False, "2025-12-27T08:00:00Z")


async def test_a_freeze_cannot_be_opted_out_of_and_lifting_it_releases(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """freeze: "true" holds even a rule whose gates.actions is empty; setting it to false
    releases the held cordon within the pause switch's cache time."""
    apiserver.create(node(NODE))
    configmap(apiserver, freeze="true")
    rules = write_rules(tmp_path / "rules", RULE + "    gates: {actions: []}\n")
    agent = Agent(kube_api, rules, Clock(FRIDAY_8))
    await agent.tick(n=6)
    assert not cordoned(apiserver)
    assert [r for _, r, _ in agent.held()] == ["freeze"]
    apiserver.patch("ConfigMap", "kube-system", "nodemedic", {"data": {"freeze": "false"}})
    await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
    assert cordoned(apiserver)


async def test_a_freeze_mid_drain_pauses_it_and_lifting_it_finishes_it(
    apiserver: ApiServer, kube_api: Any
) -> None:
    """A drain blocked by a PDB is in progress when the freeze starts: its further passes wait
    (no eviction although the PDB now allows one), it is not given up; unfrozen, it finishes."""
    apiserver.create(node(NODE))
    apiserver.create(node("node-b"))
    apiserver.create(pod("web-a", labels={"app": "web"}))
    apiserver.create(pod("web-b", on="node-b", labels={"app": "web"}, ready=False))
    apiserver.create(pdb("web", "shop", 1, app="web"))
    configmap(apiserver, paused="false")
    clock = Clock(FRIDAY_8)
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), kube_api, engine, clock=clock, monotonic=clock)
    engine.queue = [request("drain", {"timeout": 3600.0, "grace_period_cap": "1h"},
                            rule="node-broken")]
    await stage.on_snapshot(snapshot())
    assert len(stage.ledger.pending) == 1  # blocked by the PDB

    apiserver.patch("ConfigMap", "kube-system", "nodemedic", {"data": {"freeze": "true"}})
    apiserver.patch("Pod", "shop", "web-b",
                    {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                    subresource="status")
    for _ in range(3):
        clock.t += 60
        await stage.on_snapshot(snapshot())
    pods = {p["metadata"]["name"] for p in apiserver.list("Pod")
            if p["spec"].get("nodeName") == NODE}
    assert pods == {"web-a"}  # the freeze held the eviction the PDB would allow
    assert len(stage.ledger.pending) == 1
    assert stage.status()["remediation"]["recent_decisions"][-1]["reason"] == "freeze"

    apiserver.patch("ConfigMap", "kube-system", "nodemedic", {"data": {"freeze": None}})
    for _ in range(2):
        clock.t += 60
        await stage.on_snapshot(snapshot())
    assert not [p for p in apiserver.list("Pod") if p["spec"].get("nodeName") == NODE]
    assert stage.ledger.pending == {}


# --- alert gate (fake Alertmanager) --------------------------------------------------------------


class FakeAlertmanager:
    """GET /api/v2/alerts answering ``alerts`` (or ``status``), recording the queries."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.status = 200
        self.queries: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if self.status != 200:
            return web.Response(status=self.status, text="boom")
        return web.json_response(self.alerts)


@pytest.fixture
async def alertmanager() -> AsyncIterator[tuple[FakeAlertmanager, str]]:
    fake = FakeAlertmanager()
    app = web.Application()
    app.router.add_get("/api/v2/alerts", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def am_alert(name: str, severity: str, state: str = "active") -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, "instance": "x"},
            "status": {"state": state, "silencedBy": [], "inhibitedBy": []}}


def polls(agent: Agent, result: str) -> float:
    return metric(agent.stage.families(), "nodemedic_alert_gate_polls_total",
                  source="alertmanager", result=result) or 0.0


async def test_a_firing_alert_holds_the_cordon_until_it_resolves(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path,
    alertmanager: tuple[FakeAlertmanager, str],
) -> None:
    fake, url = alertmanager
    fake.alerts = [am_alert("NodeDown", "critical"), am_alert("Other", "critical"),
                   am_alert("NodeDown", "info")]
    apiserver.create(node(NODE))
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8),
                  safety_alert_gate_alertmanager_url=url,
                  safety_alert_gate_alerts=('{alertname="NodeDown", severity=~"critical|page"}',),
                  safety_alert_gate_interval=1.0, safety_alert_gate_timeout=0.5,
                  safety_alert_gate_stale_intervals=1000)
    await agent.stage.start()
    try:
        await eventually(lambda: polls(agent, "ok") >= 1, what="a first poll")
        assert fake.queries[0] == {"active": "true", "silenced": "false", "inhibited": "false"}
        await agent.tick(n=6)
        assert not cordoned(apiserver)
        ((_, reason, detail),) = agent.held()
        assert (reason, detail) == ("alert_gate",
                                    'alerts firing: NodeDown{instance="x",severity="critical"}')
        assert metric(agent.stage.families(), "nodemedic_alert_gate_state", state="firing") == 1
        assert agent.gate_status()["alert_gate"]["firing"] == [
            'NodeDown{instance="x",severity="critical"}']
        fake.alerts = [am_alert("Other", "critical")]
        seen = polls(agent, "ok")
        await eventually(lambda: polls(agent, "ok") > seen, what="a poll after the alert resolved")
        await agent.tick(n=HELD_RETRY_MAX_TICKS + 1)
        assert cordoned(apiserver)
        assert metric(agent.stage.families(), "nodemedic_alert_gate_state", state="clear") == 1
    finally:
        await agent.stage.close()


async def test_an_erroring_alertmanager_holds_and_says_so(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path,
    alertmanager: tuple[FakeAlertmanager, str],
) -> None:
    """Nothing fires, but Alertmanager answers 500: cannot see = hold (unreachable: ...)."""
    fake, url = alertmanager
    fake.status = 500
    apiserver.create(node(NODE))
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8),
                  safety_alert_gate_alertmanager_url=url, safety_alert_gate_alerts=("NodeDown",),
                  safety_alert_gate_interval=1.0, safety_alert_gate_timeout=0.5)
    await agent.stage.start()
    try:
        await eventually(lambda: polls(agent, "error") >= 1, what="a failed poll")
        await agent.tick(n=6)
        assert not cordoned(apiserver)
        ((_, reason, detail),) = agent.held()
        assert reason == "alert_gate"
        assert detail.startswith(f"alert gate unreachable: alertmanager {url}: HTTP 500")
        assert metric(agent.stage.families(), "nodemedic_alert_gate_state", state="unknown") == 1
        assert agent.gate_status()["alert_gate"]["state"] == "unknown"
    finally:
        await agent.stage.close()


async def test_an_unreachable_alert_source_holds(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path
) -> None:
    """A refused connection holds too; the detail carries the error."""
    from tests.loopthread import free_port

    apiserver.create(node(NODE))
    url = f"http://127.0.0.1:{free_port()}"
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8),
                  safety_alert_gate_prometheus_url=url, safety_alert_gate_alerts=("NodeDown",),
                  safety_alert_gate_interval=1.0, safety_alert_gate_timeout=0.5)
    await agent.stage.start()
    try:
        await eventually(lambda: agent.gate_status()["alert_gate"]["error"] != "",
                         what="a failed poll")
        await agent.tick(n=6)
        assert not cordoned(apiserver)
        ((_, reason, detail),) = agent.held()
        assert reason == "alert_gate"
        assert detail.startswith(f"alert gate unreachable: prometheus {url}: ")
    finally:
        await agent.stage.close()


async def test_a_stale_answer_holds(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path,
    alertmanager: tuple[FakeAlertmanager, str],
) -> None:
    """A clear answer older than --safety.alert-gate-stale-intervals intervals is unknown."""
    _, url = alertmanager
    apiserver.create(node(NODE))
    agent = Agent(kube_api, write_rules(tmp_path / "rules"), Clock(FRIDAY_8),
                  safety_alert_gate_alertmanager_url=url, safety_alert_gate_alerts=("NodeDown",),
                  safety_alert_gate_interval=5.0, safety_alert_gate_timeout=0.5,
                  safety_alert_gate_stale_intervals=2)
    await agent.stage.start()
    try:
        await eventually(lambda: polls(agent, "ok") >= 1, what="a first poll")
        await agent.stage.gate.alerts.close()  # the poller stops; its last answer ages
        await agent.tick(n=6)  # 60 s of (fake) time later: older than 2 x 5 s + 0.5 s
        assert not cordoned(apiserver)
        ((_, reason, detail),) = agent.held()
        assert reason == "alert_gate" and "stale after 10.5s" in detail
    finally:
        await agent.stage.close()
