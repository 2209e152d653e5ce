"""Kubernetes object builders, a scripted rules engine and a hand-moved clock for the stress
tests: re-exported from tests/k8s_helpers.py (the copy shared with the remediation scenarios).

The SIGKILL child (stress_drain_child.py) runs as a plain script, without pytest's
``pythonpath = ["."]``, so the repository root is appended to sys.path here for it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))

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
    "ScriptedEngine",
    "metric",
    "node",
    "pdb",
    "pod",
    "recording_systemctl",
    "request",
    "settings",
    "snapshot",
]
