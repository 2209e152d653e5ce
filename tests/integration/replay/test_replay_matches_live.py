"""Done when: ``nodemedic replay`` on a recorded incident makes the decisions the live agent made.

The live side is the unmodified agent path, one per node: RuleEngine + RemediationStage (its
SafetyGate, held steps, ledger) against an in-memory API server holding the four Nodes, real
cordon/uncordon on it and restart-service through a systemctl stub, fed the Snapshots the
agents took at each step (recording.snapshot) on a shared fake clock; its decisions are the
``remediation_decision`` log lines. The replay side is ``nodemedic replay`` reading the same
incident back from Prometheus. Both are reduced to (time, node, rule, action, step, what,
reason); a held step denied again for the reason it is held for counts once, as the timeline
shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from agent.rules.engine import RuleEngine
from agent.rules.loader import load_rules_dir
from agent.runtime.remediation import RemediationStage
from agent.settings import settings_for_tests
from nodemedic_sim.apiserver import ApiServer
from nodemedic_sim.replay.timeline import rfc3339
from tests.integration.replay import recording
from tests.integration.replay.conftest import Recorded
from tests.integration.replay.test_replay_prometheus import timeline

Decision = tuple[str, str, str, str, int, str, str]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _what(entry: dict[str, Any]) -> str:
    if entry["decision"] == "denied":
        return "blocked"
    return "undone" if entry["undo"] else "fired" if entry["step"] == 0 else "escalated"


async def live_decisions(rec: Recorded, apiserver: ApiServer, kube_api: Any,
                         tmp: Path) -> list[Decision]:
    systemctl = tmp / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    systemctl.chmod(0o755)
    clock = Clock(rec.t0)
    ruleset = load_rules_dir(rec.rules_dir)
    stages = {}
    for node in recording.NODES:
        apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        settings = settings_for_tests(node_name=node, rules_dir=rec.rules_dir,
                                      safety_max_cordoned="1")
        stage = RemediationStage(settings, kube_api, RuleEngine(ruleset, node), clock=clock,
                                 monotonic=clock, systemctl=str(systemctl))
        await stage.start()
        stages[node] = stage
    out: list[Decision] = []
    with structlog.testing.capture_logs() as logs:
        for i in range(recording.STEPS):
            clock.now = rec.t0 + i * recording.STEP
            for node, stage in stages.items():
                held = {(h.request.rule, h.request.action.type, h.request.step,
                         h.request.undo): h.reason for h in stage.ledger.held.values()}
                seen = len(logs)
                await stage.on_snapshot(recording.snapshot(node, rec.t0, i))
                for e in logs[seen:]:
                    if e["event"] != "remediation_decision" or e["continuing"]:
                        continue
                    if e["decision"] == "denied" and held.get(
                            (e["rule"], e["action"], e["step"], e["undo"])) == e["reason"]:
                        continue  # re-checked while held for the same reason
                    reason = e["reason"] if e["decision"] == "denied" else ""
                    out.append((rfc3339(clock.now), node, e["rule"], e["action"], e["step"],
                                _what(e), reason))
    for stage in stages.values():
        await stage.close()
    return sorted(out)


def replayed_decisions(rec: Recorded) -> list[Decision]:
    return sorted((i["time"], i["node"], i["rule"], action, i["step"], i["what"],
                   i.get("reason", ""))
                  for i in timeline(rec) if i["what"] not in ("gap", "resolved")
                  for action in i["actions"])


async def test_replay_prints_the_decisions_the_live_agents_made(
        recorded: Recorded, apiserver: ApiServer, kube_api: Any, tmp_path: Path) -> None:
    live = await live_decisions(recorded, apiserver, kube_api, tmp_path)
    replayed = replayed_decisions(recorded)
    assert live == replayed
    # The story has every kind of decision, so the comparison covers each.
    assert {d[5] for d in live} == {"fired", "escalated", "undone", "blocked"}
    assert {d[6] for d in live} == {"", "cooldown", "cluster_cap"}
    assert len(live) == 17, json.dumps(live, indent=1)
