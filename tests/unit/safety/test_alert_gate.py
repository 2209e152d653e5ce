"""What the alert gate takes from Prometheus' and Alertmanager's answers, and when its cached
answer stops counting (issue 19 item 2). The end-to-end holds are in
tests/integration/remediation/test_remediation_gates.py and test_alert_gate_prometheus.py."""

from __future__ import annotations

from typing import Any

import pytest

from agent.safety.alertgate import AlertGate, PollError, parse_alerts
from agent.settings import settings_for_tests
from agent.structs.gatespec import parse_selector

PROM = "http://prometheus:9090"


def test_only_firing_prometheus_alerts_count() -> None:
    body = {"status": "success", "data": {"alerts": [
        {"labels": {"alertname": "A"}, "state": "firing"},
        {"labels": {"alertname": "B"}, "state": "pending"},  # not yet for its `for:`
    ]}}
    assert parse_alerts("prometheus", body) == [{"alertname": "A"}]


def test_only_active_alertmanager_alerts_count() -> None:
    body = [{"labels": {"alertname": "A"}, "status": {"state": "active"}},
            {"labels": {"alertname": "S"}, "status": {"state": "suppressed"}}]
    assert parse_alerts("alertmanager", body) == [{"alertname": "A"}]


@pytest.mark.parametrize(("kind", "body", "says"), [
    ("prometheus", {"status": "error", "error": "boom"}, "status is not success boom"),
    ("prometheus", {"status": "success", "data": {}}, "no data.alerts list"),
    ("prometheus", {"status": "success", "data": {"alerts": [{"state": "firing"}]}},
     "without a labels mapping"),
    ("alertmanager", {"alerts": []}, "not a list of alerts"),
])
def test_an_unexpected_answer_is_an_error(kind: str, body: Any, says: str) -> None:
    """An answer we cannot read is not "nothing fires": it fails the poll (and holds)."""
    with pytest.raises(PollError, match=says):
        parse_alerts(kind, body)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def answered(gate: AlertGate, clock: Clock, *alerts: dict[str, str]) -> None:
    """Put an answer in the cache as a successful poll would."""
    gate._alerts, gate._answered, gate._error = alerts, clock(), ""
    gate._memo.clear()


def test_the_answer_ages_into_unknown_and_a_new_source_forgets_it() -> None:
    clock = Clock()
    s = settings_for_tests(safety_alert_gate_prometheus_url=PROM, safety_alert_gate_alerts=("A",),
                           safety_alert_gate_interval=10.0, safety_alert_gate_stale_intervals=3)
    gate = AlertGate(s, monotonic=clock)
    sel = [parse_selector("A")]
    assert gate.check(sel) == "alert gate unknown: no answer from the alert sources yet"
    answered(gate, clock, {"alertname": "B"})
    assert gate.check(sel) is None and gate.state() == "clear"
    answered(gate, clock, {"alertname": "A", "severity": "page"})
    assert gate.check(sel) == 'alerts firing: A{severity="page"}'
    assert gate.state() == "firing"
    clock.t += 36  # 3 intervals of 10 s + the 5 s one poll may take
    assert gate.check(sel) == "alert gate unknown: the last answer is 36s old (stale after 35s)"
    assert gate.state() == "unknown"
    answered(gate, clock)
    gate.reconfigure(s.model_copy(update={"safety_alert_gate_prometheus_url": "http://other"}))
    assert gate.check(sel) == "alert gate unknown: no answer from the alert sources yet"
    assert gate.check([]) is None  # nothing selected: nothing to hold for


def test_one_stale_interval_does_not_flap_while_the_next_poll_is_in_flight() -> None:
    """stale-intervals=1: the next answer lands an interval plus the poll's time later; until
    then the gate keeps the last answer (it used to turn unknown and hold for that moment)."""
    clock = Clock()
    s = settings_for_tests(safety_alert_gate_prometheus_url=PROM,
                           safety_alert_gate_alertmanager_url="http://am:9093",
                           safety_alert_gate_alerts=("A",), safety_alert_gate_interval=15.0,
                           safety_alert_gate_timeout=5.0, safety_alert_gate_stale_intervals=1)
    gate = AlertGate(s, monotonic=clock)
    sel = [parse_selector("A")]
    answered(gate, clock, {"alertname": "B"})
    clock.t += 15 + 2 * 5  # both sources took their whole timeout: still the last answer
    assert gate.check(sel) is None and gate.state() == "clear"
    clock.t += 1
    assert gate.state() == "unknown"


async def test_an_answer_sent_in_many_pieces_is_read_whole() -> None:
    """3,000 firing alerts streamed in 8 KiB pieces (as a busy Prometheus sends them) are one
    answer; before, only the first piece was read and every poll was 'not JSON' (all held)."""
    import asyncio
    import json

    import aiohttp
    from aiohttp import web

    from tests.loopthread import free_port

    alerts = [{"labels": {"alertname": f"A{i}", "severity": "page"}, "state": "firing"}
              for i in range(3000)]
    body = json.dumps({"status": "success", "data": {"alerts": alerts}}).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for i in range(0, len(body), 8192):
            await resp.write(body[i:i + 8192])
            await asyncio.sleep(0)  # let each piece leave separately
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/alerts", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        gate = AlertGate(settings_for_tests(safety_alert_gate_prometheus_url=f"http://127.0.0.1:{port}",
                                            safety_alert_gate_alerts=("A2999",)))
        async with aiohttp.ClientSession() as session:
            await gate.poll(session)
        assert gate.status()["error"] in ("", None), gate.status()
        assert [a["alertname"] for a in gate.firing([parse_selector("A2999")])] == ["A2999"]
    finally:
        await runner.cleanup()
