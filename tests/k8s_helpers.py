"""Kubernetes object builders, a scripted rules engine and a hand-moved clock, shared by the
remediation scenarios (tests/integration/remediation), the stress tests (tests/stress) and the
offline stage unit tests (tests/unit/safety).

Imported as ``tests.k8s_helpers``: pytest puts the repository root on sys.path
(``pythonpath = ["."]``); tests/stress/stress_k8s.py adds it for its SIGKILL child process."""

from __future__ import annotations

import copy
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.settings import Settings, settings_for_tests
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, ActionSpec, Target
from agent.structs.snapshot import CollectorStatus, Snapshot
from tests.action_params import params_for

NODE = "node-a"
KUBELET_UP = MetricSpec("nodemedic_kubelet_up", "kubelet health", "gauge")


class Clock:
    """Wall clock the tests move by hand (the stage and gate never read real time)."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"node_name": NODE, "safety_drain_grace_cap": 0.0}
    base.update(overrides)
    return settings_for_tests(**base)


def node(name: str, unschedulable: bool = False, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": dict(annotations)},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(
    name: str,
    on: str = NODE,
    *,
    namespace: str = "shop",
    owner: str | None = "ReplicaSet",
    ready: bool = True,
    labels: dict[str, str] | None = None,
    mirror: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner, "name": f"{name}-owner", "uid": f"u-{name}",
             "controller": True}
        ]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": on, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "busybox"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pdb(name: str, namespace: str, min_available: int, **match: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": match}},
    }


def request(
    action: str, params: dict[str, Any] | None = None, *, rule: str = "kubelet-down",
    node_name: str = NODE, step: int = 0, **kw: Any,
) -> ActionRequest:
    kw.setdefault("observed", {"nodemedic_kubelet_up": 0.0})
    kw.setdefault("metrics", ("nodemedic_kubelet_up",))  # what a kubelet rule reads
    return ActionRequest(
        rule=rule, action=ActionSpec.of(action, params_for(action, params)),
        target=Target("node", node_name),
        step=step, **kw,
    )


def snapshot(kubelet_ok: bool = True, kubelet_up: float = 0.0, mono: float = 0.0) -> Snapshot:
    """One tick in which the kubelet collector succeeded (with ``kubelet_up``) or failed;
    ``mono`` is the snapshot's monotonic time (what the rules engine measures durations with)."""
    fams: dict[str, Family] = {}
    if kubelet_ok:
        fam = KUBELET_UP.family()
        fam.add((), kubelet_up)
        fams[fam.name] = fam
    return Snapshot(
        taken_at=0.0, monotonic=mono, families=MappingProxyType(fams),
        collectors=MappingProxyType(
            {"kubelet": CollectorStatus("kubelet", kubelet_ok, 0.1, None if kubelet_ok else "down")}
        ),
        owners=MappingProxyType({"nodemedic_kubelet_up": "kubelet"}),
    )


class ScriptedEngine:
    """Returns whatever the test queued for the next evaluation. ``state`` is what export_state
    returns and ``status`` what status() returns (copied on each call); both default to the
    remediation scenarios' None and {}."""

    def __init__(self, *, state: Any = None, status: dict[str, Any] | None = None) -> None:
        self.queue: list[ActionRequest] = []
        self._state = state
        self._status = status or {}

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]:
        out, self.queue = self.queue, []
        return out

    def export_state(self) -> Any:
        return copy.deepcopy(self._state)

    def restore_state(self, state: Any) -> None:
        pass

    def families(self) -> list[Family]:
        return []

    def status(self) -> dict[str, Any]:
        return copy.deepcopy(self._status)

    def rule(self, name: str) -> None:
        return None  # no loaded rules: no per-rule gates

    def set_rules(self, ruleset: Any) -> None:
        pass

    def wants(self, req: ActionRequest) -> bool:
        return True  # a held step stays held until the gate decides it


def recording_systemctl(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in systemctl (PID 1 here is not systemd) that logs each argv as a JSON line."""
    log = tmp_path / "systemctl.argv"
    script = tmp_path / "systemctl"
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def metric(families: list[Family], name: str, **labels: str) -> float | None:
    for fam in families:
        if fam.name == name:
            return fam.get(**labels)
    return None
