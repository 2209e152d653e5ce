"""The alert gate against a real Prometheus (issue 19 item 2).

Debian's /usr/bin/prometheus runs on loopback with two alerting rules evaluated every second:
``GateTestFiring`` (``vector(1)``, severity critical: always fires) and ``GateTestQuiet``
(never fires). The remediation stage, its gate and the in-memory API server get a cordon request
each tick from a scripted engine; the gate's poller reads GET /api/v1/alerts. A cordon is held
while the selected alert fires, runs when the selector names the quiet one (after a reload), and
is held again once Prometheus is stopped (unreachable = hold).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.runtime.remediation import RemediationStage
from nodemedic_sim.apiserver import ApiServer
from tests.k8s_helpers import NODE, Clock, ScriptedEngine, metric, node, request, settings, snapshot
from tests.loopthread import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
RULES = {
    "groups": [{
        "name": "gate-test",
        "interval": "1s",
        "rules": [
            {"alert": "GateTestFiring", "expr": "vector(1)", "labels": {"severity": "critical"}},
            {"alert": "GateTestQuiet", "expr": "vector(1) > 2", "labels": {"severity": "page"}},
        ],
    }],
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PROMETHEUS.exists(), reason="/usr/bin/prometheus is not installed"),
]


def _firing(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/api/v1/alerts", timeout=2) as resp:
        body = yaml.safe_load(resp.read())
    return [a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    tmp = tmp_path_factory.mktemp("alertgate-prom")
    (tmp / "rules.yml").write_text(yaml.safe_dump(RULES))
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"evaluation_interval": "1s"}, "rule_files": [str(tmp / "rules.yml")]}))
    log = (tmp / "prometheus.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    url = ""
    for attempt in range(3):  # Prometheus cannot report a port 0: pick one, retry if taken
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / f'tsdb{attempt}'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "GateTestFiring" in _firing(url):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if proc.poll() is None:
            break
    assert proc is not None and proc.poll() is None, (tmp / "prometheus.log").read_text()
    assert _firing(url) == ["GateTestFiring"]
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        log.close()


async def _until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _unschedulable(server: ApiServer) -> bool:
    n = server.get("Node", "", NODE)
    assert n is not None
    return bool(n["spec"].get("unschedulable"))


async def test_a_firing_prometheus_alert_holds_a_cordon_and_unreachable_holds_too(
    apiserver: ApiServer, kube_api: Any, prometheus: tuple[str, Any], tmp_path: Path
) -> None:
    url, proc = prometheus
    apiserver.create(node(NODE))
    clock = Clock()
    engine = ScriptedEngine()
    gate_settings = dict(rules_dir=tmp_path, safety_alert_gate_prometheus_url=url,
                         safety_alert_gate_interval=1.0,
                         safety_alert_gate_timeout=0.5, safety_alert_gate_stale_intervals=1000)
    stage = RemediationStage(
        settings(safety_alert_gate_alerts=(
            '{alertname="GateTestFiring", severity=~"critical|page"}',), **gate_settings),
        kube_api, engine, clock=clock, monotonic=clock)
    await stage.start()

    def polls(result: str) -> float:
        return metric(stage.families(), "nodemedic_alert_gate_polls_total", source="prometheus",
                      result=result) or 0.0

    async def tick(rule: str = "kubelet-down") -> dict[str, Any]:
        engine.queue = [request("cordon", rule=rule)]
        await stage.on_snapshot(snapshot())
        clock.t += 10
        recent: list[dict[str, Any]] = stage.status()["remediation"]["recent_decisions"]
        return recent[-1]

    try:
        await _until(lambda: polls("ok") >= 1, "a first poll of Prometheus")
        last = await tick()
        assert (last["decision"], last["reason"]) == ("denied", "alert_gate")
        assert last["detail"] == 'alerts firing: GateTestFiring{severity="critical"}'
        assert not _unschedulable(apiserver)
        assert metric(stage.families(), "nodemedic_alert_gate_state", state="firing") == 1

        # Selecting the alert that does not fire: the same request runs.
        await stage.reload(settings(safety_alert_gate_alerts=("GateTestQuiet",), **gate_settings))
        seen = polls("ok")
        await _until(lambda: polls("ok") > seen, "a poll after the reload")
        last = await tick()
        assert (last["decision"], last["reason"]) == ("allowed", "ok")
        assert _unschedulable(apiserver)
        assert metric(stage.families(), "nodemedic_alert_gate_state", state="clear") == 1

        # Prometheus goes away: nothing fires that we can see, and that is a hold (another
        # rule's cordon: an admin uncordoned the first rule's).
        apiserver.patch("Node", "", NODE, {"spec": {"unschedulable": False}})
        proc.terminate()
        proc.wait(timeout=10)
        await _until(lambda: polls("error") >= 1, "a failed poll")
        last = await tick("other-rule")
        assert (last["decision"], last["reason"]) == ("denied", "alert_gate")
        assert last["detail"].startswith(f"alert gate unreachable: prometheus {url}: ")
        assert not _unschedulable(apiserver)
        assert stage.status()["remediation"]["gate"]["alert_gate"]["state"] == "unknown"
    finally:
        await stage.close()
