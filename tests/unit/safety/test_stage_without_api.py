"""The remediation stage in standalone mode (no API): stale data, dry-run, execution, status."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from helpers_safety import request, settings

from agent.runtime.remediation import RemediationStage
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest
from agent.structs.snapshot import CollectorStatus, Snapshot
from tests.k8s_helpers import ScriptedEngine as SharedScriptedEngine
from tests.k8s_helpers import recording_systemctl

KUBELET_UP = MetricSpec("nodemedic_kubelet_up", "kubelet health", "gauge")


class ScriptedEngine(SharedScriptedEngine):
    """Returns the requests queued for the next evaluate() call; exports {} as its state and
    reports nothing firing."""

    def __init__(self) -> None:
        super().__init__(state={}, status={"firing": []})


def snapshot(kubelet_ok: bool) -> Snapshot:
    fams = {}
    if kubelet_ok:
        fam = KUBELET_UP.family()
        fam.add((), 0)
        fams[fam.name] = fam
    return Snapshot(
        taken_at=1000.0,
        monotonic=1.0,
        families=MappingProxyType(fams),
        collectors=MappingProxyType(
            {"kubelet": CollectorStatus("kubelet", kubelet_ok, 0.1, None if kubelet_ok else "x")}
        ),
        owners=MappingProxyType({"nodemedic_kubelet_up": "kubelet"}),
    )


RESTART = request(
    "restart-service", {"unit": "kubelet.service"}, observed={"nodemedic_kubelet_up": 0.0},
    metrics=("nodemedic_kubelet_up",),
)


def actions_total(stage: RemediationStage) -> Family:
    return {f.name: f for f in stage.families()}["nodemedic_actions_total"]


async def test_restart_runs_once_on_fresh_data(tmp_path: Path) -> None:
    """A restart request on a fresh snapshot runs systemctl and is counted as success."""
    script, log = recording_systemctl(tmp_path)
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), None, engine, systemctl=script)
    await stage.start()
    engine.queue = [RESTART]
    await stage.on_snapshot(snapshot(kubelet_ok=True))
    assert json.loads(log.read_text()) == ["restart", "kubelet.service"]
    assert actions_total(stage).get(decision="allowed", outcome="success") == 1
    recent = stage.status()["remediation"]["recent_decisions"]
    assert recent[-1]["observed"] == {"nodemedic_kubelet_up": 0.0}
    await stage.close()


async def test_no_action_when_the_rules_collector_failed(tmp_path: Path) -> None:
    """If the kubelet collector failed this tick, a kubelet rule's restart is missing_data."""
    script, log = recording_systemctl(tmp_path)
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), None, engine, systemctl=script)
    engine.queue = [RESTART]
    await stage.on_snapshot(snapshot(kubelet_ok=False))
    assert not log.exists()
    fam = {f.name: f for f in stage.families()}["nodemedic_actions_denied_total"]
    assert fam.get(reason="missing_data") == 1


async def test_a_request_waits_only_for_the_metrics_it_reads(tmp_path: Path) -> None:
    """The stage checks the metrics a request says its rule reads: a request reading nothing
    (made in code) is not held back by an unrelated failed collector; one whose metrics are
    unknown (restored from an older state) is, by any failed collector (fail safe)."""
    script, log = recording_systemctl(tmp_path)
    engine = ScriptedEngine()
    stage = RemediationStage(settings(), None, engine, systemctl=script)
    engine.queue = [replace(RESTART, metrics=None)]
    await stage.on_snapshot(snapshot(kubelet_ok=False))
    assert not log.exists()
    assert actions_total(stage).get(decision="denied", outcome="none") == 1
    engine.queue = [replace(RESTART, rule="reads-nothing", metrics=())]
    await stage.on_snapshot(snapshot(kubelet_ok=False))
    assert json.loads(log.read_text()) == ["restart", "kubelet.service"]


async def test_dry_run_records_but_executes_nothing(tmp_path: Path) -> None:
    """--dry-run logs and counts the decision, and systemctl is never run."""
    script, log = recording_systemctl(tmp_path)
    engine = ScriptedEngine()
    stage = RemediationStage(settings(dry_run=True), None, engine, systemctl=script)
    engine.queue = [RESTART]
    await stage.on_snapshot(snapshot(kubelet_ok=True))
    assert not log.exists()
    assert actions_total(stage).get(decision="dry_run", outcome="none") == 1
    last = stage.status()["remediation"]["recent_decisions"][-1]
    assert last["dry_run"] is True
    assert "would systemctl restart kubelet.service" in last["detail"]


async def test_a_crashing_engine_does_not_break_the_tick() -> None:
    """An exception in rule evaluation is logged; the stage keeps serving status."""

    class Broken(ScriptedEngine):
        def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]:
            raise RuntimeError("bug")

    stage = RemediationStage(settings(), None, Broken())
    await stage.on_snapshot(snapshot(kubelet_ok=True))
    assert stage.status()["rules"] == {"firing": []}
