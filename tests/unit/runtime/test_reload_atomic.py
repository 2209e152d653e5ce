"""A SIGHUP reload is all or nothing (issue 12 item 1): a broken rule file keeps dry-run on.

The scenario of the issue, end to end through the Agent: a config file with ``dry-run: true`` and
a rule restarting kubelet.service on ``nodemedic_kubelet_up == 0``; the file changes to
``dry-run: false`` and a broken rule file appears; SIGHUP. Before the fix the remediation stage
and its gate took the new settings before the rules failed to load, so ``/status.remediation
.dry_run`` said false and systemctl really ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from agent.collectors.base import Collector
from agent.runtime.daemon import Agent
from agent.runtime.pipeline import Collection
from agent.runtime.remediation import RemediationStage
from agent.settings import Settings, load_settings
from agent.structs.metrics import Family, MetricSpec
from tests.k8s_helpers import recording_systemctl

KUBELET_UP = MetricSpec("nodemedic_kubelet_up", "kubelet health", "gauge")
OFF = {"cgroup": False, "kubelet": False, "host": False, "lbskew": False, "node": False}

RULE = """\
rules:
  - name: kubelet-down
    severity: critical
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    actions:
      - type: restart-service
        unit: kubelet.service
"""
BROKEN = "rules:\n  - name: Bad_Name\n    when: {metric: nodemedic_nope}\n"


class KubeletDown(Collector):
    """The kubelet collector's one series, saying the kubelet is down."""

    name = "kubelet"
    metrics = (KUBELET_UP,)

    async def collect(self) -> list[Family]:
        fam = KUBELET_UP.family()
        fam.add((), 0)
        return [fam]


def write_config(path: Path, rules: Path, dry_run: bool) -> None:
    collectors = "".join(f"collector.{n}: false\n" for n in OFF)
    path.write_text(
        f"dry-run: {str(dry_run).lower()}\nrules.dir: {rules}\nnode-name: n1\n"
        f"web.listen-address: 127.0.0.1:0\ncollect.interval: 1h\n{collectors}"
    )


def reader(config: Path) -> Any:
    return lambda: load_settings(None, environ={"NODEMEDIC_CONFIG": str(config)},
                                 collector_names=tuple(OFF))


async def status(agent: Agent) -> dict[str, Any]:
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{agent.port}/status") as r:
        body: dict[str, Any] = await r.json()
        return body


@pytest.fixture
async def running(tmp_path: Path) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "kubelet.yaml").write_text(RULE)
    config = tmp_path / "config.yaml"
    write_config(config, rules, dry_run=True)
    agent = Agent(reader(config)(), reload_settings=reader(config))
    await agent.start()
    script, log = recording_systemctl(tmp_path)
    stage = agent._components[0]
    assert isinstance(stage, RemediationStage)
    stage.systemctl = script
    assert agent._ctx is not None
    agent._collection = Collection([KubeletDown(agent._ctx)])
    try:
        yield agent, stage, config, rules, log
    finally:
        await agent.stop()


async def test_failed_reload_keeps_dry_run_everywhere(running: Any) -> None:
    """dry-run true -> false plus a broken rule file: the reload fails and nothing of it applies:
    /status (top level and remediation), the gate and the metric still say dry-run, every problem
    of the broken file is reported, and systemctl is never run."""
    agent, stage, config, rules, log = running
    await agent.tick_once()
    assert stage.status()["remediation"]["recent_decisions"][-1]["decision"] == "dry_run"

    write_config(config, rules, dry_run=False)
    (rules / "broken.yaml").write_text(BROKEN)
    await agent.reload()
    for _ in range(3):
        await agent.tick_once()

    body = await status(agent)
    assert body["dry_run"] is True
    assert body["remediation"]["dry_run"] is True
    assert stage.gate.settings.dry_run is True
    assert body["last_reload_error"]
    problems = body["last_reload_problems"]
    assert any("rules[0].name" in p for p in problems)
    assert any("unknown metric 'nodemedic_nope'" in p for p in problems)
    exp = await agent.exposition()
    assert exp is not None
    assert b"nodemedic_config_last_reload_success 0.0" in exp.text
    assert b"nodemedic_dry_run 1.0" in exp.text
    assert not log.exists(), "systemctl ran although the reload failed"
    decisions = {d["decision"] for d in stage.status()["remediation"]["recent_decisions"]}
    assert decisions <= {"dry_run", "denied"}

    # Once the rule file is fixed the same reload applies, and then the action really runs (a
    # new rule name: the old rule's step was spent on its dry-run decision).
    (rules / "broken.yaml").unlink()
    (rules / "kubelet.yaml").write_text(RULE.replace("kubelet-down", "kubelet-down-again"))
    await agent.reload()
    assert (await status(agent))["remediation"]["dry_run"] is False
    await agent.tick_once()
    assert json.loads(log.read_text().splitlines()[0]) == ["restart", "kubelet.service"]


async def test_a_failing_component_applies_nothing_in_any_other(running: Any) -> None:
    """All or nothing across components: when the last component refuses the new settings, the
    remediation stage (prepared first) has applied none of them, and collectors stay as built."""
    agent, stage, config, rules, log = running

    class Refuses:
        async def prepare_reload(self, settings: Settings) -> Any:
            raise ValueError("refused by a later component")

    agent._components.append(Refuses())  # type: ignore[arg-type]
    collection = agent._collection
    write_config(config, rules, dry_run=False)
    config.write_text(config.read_text() + "cgroup.psi: \"off\"\n")
    await agent.reload()
    assert agent.settings.dry_run is True and stage.settings.dry_run is True
    assert stage.gate.settings.dry_run is True
    assert agent._collection is collection
    assert (await status(agent))["last_reload_error"] == "refused by a later component"
    await agent.tick_once()
    assert not log.exists()


async def test_a_rule_that_does_not_compile_fails_the_reload_before_commit(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules are compiled on a scratch engine while preparing: a compile failure is a failed
    reload (the running engine keeps every rule, dry-run stays on), never a half-installed set."""
    from agent.rules import engine as engine_mod

    agent, stage, config, rules, _log = running
    real = engine_mod.compile_rule

    def compile_or_fail(lr: Any, ids: Any) -> Any:
        if lr.rule.name == "new-rule":
            raise RuntimeError("cannot compile new-rule")
        return real(lr, ids)

    monkeypatch.setattr(engine_mod, "compile_rule", compile_or_fail)
    write_config(config, rules, dry_run=False)
    (rules / "new.yaml").write_text(RULE.replace("kubelet-down", "new-rule"))
    await agent.reload()
    assert (await status(agent))["last_reload_error"] == "cannot compile new-rule"
    assert [r["rule"] for r in stage.engine.status()] == ["kubelet-down"]
    assert stage.settings.dry_run is True and stage.gate.settings.dry_run is True


async def test_a_one_phase_component_refusing_applies_nothing_elsewhere(running: Any) -> None:
    """A component with only ``reload()`` (no prepare/commit) runs last: when it refuses, the
    two-phase components and the collectors keep everything, and the new collectors are
    discarded."""
    agent, stage, config, rules, _log = running

    class OnlyReload:
        async def reload(self, settings: Settings) -> None:
            raise ValueError("one-phase refusal")

        async def close(self) -> None:
            pass

    agent._components.append(OnlyReload())  # type: ignore[arg-type]
    collection = agent._collection
    write_config(config, rules, dry_run=False)
    config.write_text(config.read_text() + "cgroup.psi: \"off\"\n")
    await agent.reload()
    assert agent._collection is collection
    assert agent.settings.cgroup_psi == "pod"
    assert stage.settings.dry_run is True and stage.gate.settings.dry_run is True
    assert (await status(agent))["last_reload_error"] == "one-phase refusal"
