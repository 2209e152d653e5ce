"""The shipped kubelet rule (rules/kubelet.yaml) driven by the real rules engine, through the
gate and the real client: restart, then cordon, across an agent restart; then undo."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.collectors.base import CollectorContext
from agent.rules.engine import RuleEngine
from agent.rules.loader import RulesError, load_rules_dir
from agent.runtime.remediation import RemediationStage, build_stage
from agent.settings import SettingsError
from nodemedic_sim.apiserver import ApiServer
from tests.integration.remediation.helpers_remediation import (
    NODE,
    Clock,
    argv_log,
    node,
    recording_systemctl,
    settings,
    snapshot,
)

RULES = Path(__file__).parents[3] / "rules"


@pytest.fixture
def kubelet_rules(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    shutil.copy(RULES / "kubelet.yaml", d / "kubelet.yaml")
    return d


def count(server: ApiServer, reason: str) -> int:
    return sum(int(e.get("count") or 1) for e in server.list("Event") if e["reason"] == reason)


async def test_kubelet_ladder_survives_an_agent_restart(
    apiserver: ApiServer, kube_api: Any, tmp_path: Path, kubelet_rules: Path
) -> None:
    """kubelet down 2m -> Event + restart; agent killed; the new agent cordons 3m later without
    restarting the kubelet again; 10m healthy -> uncordon and a KubeletRecovered Event."""
    apiserver.create(node(NODE))
    systemctl, log = recording_systemctl(tmp_path)
    clock = Clock()
    s = settings(rules_dir=kubelet_rules)

    # Each process has its own monotonic clock (a different boot-relative base): the restarted
    # agent must map the persisted wall times onto its own.
    def stage(base: float) -> tuple[RemediationStage, Callable[[], float]]:
        def mono() -> float:
            return clock.t - base

        engine = RuleEngine(load_rules_dir(kubelet_rules), NODE)
        return RemediationStage(s, kube_api, engine, clock=clock, monotonic=mono,
                                systemctl=systemctl), mono

    first, mono = stage(1_799_000_000.0)
    await first.start()
    for _ in range(14):  # 0 .. 130 s of kubelet_up == 0
        await first.on_snapshot(snapshot(kubelet_up=0, mono=mono()))
        clock.t += 10
    assert argv_log(log) == [["restart", "kubelet.service"]]
    assert count(apiserver, "KubeletUnhealthy") == 1
    del first  # killed

    second, mono = stage(1_799_999_000.0)
    await second.start()
    for _ in range(20):  # 140 .. 330 s
        await second.on_snapshot(snapshot(kubelet_up=0, mono=mono()))
        clock.t += 10
    assert argv_log(log) == [["restart", "kubelet.service"]]
    assert apiserver.get("Node", "", NODE)["spec"]["unschedulable"] is True  # type: ignore[index]
    assert count(apiserver, "KubeletStillUnhealthy") == 1
    assert count(apiserver, "NodemedicCordon") == 1

    for _ in range(62):  # healthy for 10m+
        await second.on_snapshot(snapshot(kubelet_up=1, mono=mono()))
        clock.t += 10
    assert not apiserver.get("Node", "", NODE)["spec"].get("unschedulable")  # type: ignore[index]
    assert count(apiserver, "KubeletRecovered") == 1
    assert argv_log(log) == [["restart", "kubelet.service"]]


async def test_build_stage_loads_rules_or_refuses(tmp_path: Path, kubelet_rules: Path) -> None:
    """build_stage loads --rules.dir; an invalid rule file or a missing directory refuses to
    start; an empty directory = no rules."""
    stage = await build_stage(
        settings(rules_dir=kubelet_rules), CollectorContext(settings(), api=None)
    )
    names = {f.name for f in stage.families()}
    assert {"nodemedic_rules_loaded", "nodemedic_actions_total"} <= names
    await stage.close()

    # A missing directory is refused (issue 12 item 6: it used to start with no rules).
    with pytest.raises(SettingsError, match=r"--rules\.dir=.*does not exist"):
        await build_stage(
            settings(rules_dir=tmp_path / "absent"), CollectorContext(settings(), api=None)
        )
    (tmp_path / "empty").mkdir()
    empty = await build_stage(
        settings(rules_dir=tmp_path / "empty"), CollectorContext(settings(), api=None)
    )
    assert empty.status()["rules"] == []
    assert empty.status()["remediation"]["rules_loaded"] == 0

    (kubelet_rules / "bad.yaml").write_text("rules:\n  - name: Bad Name\n")
    with pytest.raises(RulesError):
        await build_stage(
            settings(rules_dir=kubelet_rules), CollectorContext(settings(), api=None)
        )
