"""Object builders, scripted rules engines and a fake clock for the remediation scenarios.

The builders, Clock and ScriptedEngine live in tests/k8s_helpers.py (shared with tests/stress
and tests/unit/safety); this module re-exports them and adds what only these scenarios use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.structs.remediation import ActionRequest
from agent.structs.snapshot import Snapshot
from tests.k8s_helpers import (
    KUBELET_UP,
    NODE,
    Clock,
    ScriptedEngine,
    metric,
    node,
    pdb,
    pod,
    recording_systemctl,
    request,
    settings,
    snapshot,
)

__all__ = [
    "KUBELET_UP",
    "NODE",
    "Clock",
    "LadderEngine",
    "ScriptedEngine",
    "argv_log",
    "metric",
    "node",
    "pdb",
    "pod",
    "recording_systemctl",
    "request",
    "settings",
    "snapshot",
]


class LadderEngine(ScriptedEngine):
    """A firing rule with an escalation ladder: step i is requested ``i * every`` seconds after
    it started firing. Its progress is what export_state/restore_state carry across restarts."""

    def __init__(self, ladder: list[ActionRequest], every: float = 60.0) -> None:
        super().__init__()
        self.ladder = ladder
        self.every = every
        self.since: float | None = None
        self.next_step = 0

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]:
        if self.since is None:
            self.since = now
        out = []
        while self.next_step < len(self.ladder) and now - self.since >= self.next_step * self.every:
            out.append(self.ladder[self.next_step])
            self.next_step += 1
        return out

    def export_state(self) -> Any:
        return {"since": self.since, "next_step": self.next_step}

    def restore_state(self, state: Any) -> None:
        self.since = state["since"]
        self.next_step = state["next_step"]


def argv_log(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
