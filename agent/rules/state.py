"""Per-rule state: the targets a rule tracks, their timers, and its persisted form.

Per rule and target instance (the node, or one namespace/pod for ``target: pod``) an
:class:`Instance` is pending (``for:`` running), firing (ladder steps run) or resolving
(``healthy_for`` running); :class:`RuleState` holds a rule's instances, indexed by state, and its
counters. Timers are monotonic; :class:`TimeBase` maps them to wall time, which is what
:func:`export_state` writes (JSON for the node annotation) and :func:`restore_state` reads back
after a restart (wall times restored before the first tick are rebased on it). No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from agent.structs.remediation import Target

from .compile import CompiledRule

STATE_VERSION = 1


def _finite(v: object) -> TypeGuard[int | float]:
    """A JSON number that is a finite float (an integer too large for a float is not one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


@dataclass(slots=True)
class Instance:
    """One target a rule tracks, with its timers (monotonic) and what was last observed."""

    target: Target
    state: str  # pending | firing | resolving
    pending_since: float
    firing_since: float | None = None
    resolved_since: float | None = None
    step: int = 0
    step_since: float | None = None
    observed: dict[str, float] = field(default_factory=dict)
    fields: dict[str, object] = field(default_factory=dict)

    def rebase(self, delta: float) -> None:
        """Move every timestamp by ``delta`` (between the monotonic and wall time bases)."""
        self.shift(delta)
        if self.firing_since is not None:
            self.firing_since += delta

    def shift(self, gap: float) -> None:
        """Move timers forward by a no-data gap: unobserved time counts for nothing."""
        self.pending_since += gap
        if self.step_since is not None:
            self.step_since += gap
        if self.resolved_since is not None:
            self.resolved_since += gap

    def to_json(self, offset: float = 0.0) -> dict[str, Any]:
        """JSON with wall times: ``offset`` is wall minus monotonic time."""
        t = self.target

        def wall(v: float | None) -> float | None:
            return None if v is None else v + offset

        return {
            "target": {"kind": t.kind, "node": t.node, "namespace": t.namespace, "name": t.name},
            "state": self.state, "pending_since": wall(self.pending_since),
            "firing_since": wall(self.firing_since), "resolved_since": wall(self.resolved_since),
            "step": self.step, "step_since": wall(self.step_since),
            # Strict JSON (annotations): NaN/inf observed values are left out.
            "observed": {k: v for k, v in self.observed.items() if math.isfinite(v)},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], max_step: int) -> Instance:
        t = d["target"]
        kind = t["kind"]
        if kind not in ("node", "pod"):
            raise ValueError("bad target kind")
        target = Target(kind=kind, node=str(t["node"]), namespace=str(t.get("namespace", "")),
                        name=str(t.get("name", "")))
        state = d["state"]
        if state not in ("pending", "firing", "resolving"):
            raise ValueError("bad state")

        def num(key: str, optional: bool = True) -> float | None:
            v = d.get(key)
            if v is None and optional:
                return None
            if not _finite(v):
                raise ValueError(f"bad {key}")
            return float(v)

        step = d.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError("bad step")
        pending = num("pending_since", optional=False)
        assert pending is not None
        inst = cls(target, state, pending, num("firing_since"), num("resolved_since"),
                   min(step, max_step), num("step_since"))
        if state != "pending" and (inst.firing_since is None or inst.step_since is None):
            raise ValueError("firing state without firing_since/step_since")
        if state == "resolving" and inst.resolved_since is None:
            raise ValueError("resolving state without resolved_since")
        obs = d.get("observed") or {}
        if isinstance(obs, dict):
            inst.observed = {str(k): float(v) for k, v in obs.items() if _finite(v)}
        return inst


@dataclass(slots=True)
class RuleState:
    """A rule's compiled form, the targets it tracks and its counters (for /metrics)."""

    compiled: CompiledRule
    instances: dict[str, Instance] = field(default_factory=dict)
    evaluations: int = 0
    no_data_since: float | None = None
    no_data_ticks: int = 0
    requests: int = 0
    undo_requests: int = 0
    dropped: int = 0
    missing: tuple[str, ...] = ()
    # Keys by state, kept in step with ``instances`` so a tick only visits targets whose state
    # can change (set operations instead of a walk over hundreds of firing pods).
    by_state: dict[str, set[str]] = field(
        default_factory=lambda: {"pending": set(), "firing": set(), "resolving": set()})

    def put(self, key: str, inst: Instance) -> None:
        if key in self.instances:
            self.drop(key)
        self.instances[key] = inst
        self.by_state[inst.state].add(key)

    def move(self, key: str, inst: Instance, state: str) -> None:
        self.by_state[inst.state].discard(key)
        inst.state = state
        self.by_state[state].add(key)

    def drop(self, key: str) -> Instance:
        inst = self.instances.pop(key)
        self.by_state[inst.state].discard(key)
        return inst


class TimeBase:
    """Wall minus monotonic time at the last tick (None before the first). Restored state holds
    wall times until a tick tells us this offset; then it is moved to monotonic time."""

    def __init__(self) -> None:
        self.offset: float | None = None
        self._instances: list[Instance] = []
        self._rules: list[RuleState] = []

    def set_offset(self, offset: float) -> None:
        """Remember wall minus monotonic time; map restored wall times to monotonic ones."""
        self.offset = offset
        for inst in self._instances:
            inst.rebase(-offset)
        for rs in self._rules:
            if rs.no_data_since is not None:
                rs.no_data_since -= offset
        self._instances.clear()
        self._rules.clear()

    def restored(self, inst: Instance) -> None:
        """Move a restored instance's wall times to monotonic time (now, or at the first tick
        when the offset is not known yet)."""
        if self.offset is None:
            self._instances.append(inst)
        else:
            inst.rebase(-self.offset)

    def restored_no_data(self, rs: RuleState, since: float) -> None:
        """Set a restored ``no_data_since`` wall time, moved to monotonic time as in
        :meth:`restored`."""
        rs.no_data_since = since
        if self.offset is None:
            self._rules.append(rs)
        else:
            rs.no_data_since -= self.offset

    def wall(self, t: float | None) -> float | None:
        """A monotonic time as wall time (None stays None)."""
        return None if t is None else t + (self.offset or 0.0)


def export_state(rules: Mapping[str, RuleState], node: str, clock: TimeBase) -> dict[str, Any]:
    """JSON-able state of every rule with a pending/firing/resolving target."""
    out: dict[str, Any] = {}
    for name, rs in rules.items():
        if not rs.instances and rs.no_data_since is None:
            continue
        offset = clock.offset or 0.0  # before the first tick everything is wall time
        out[name] = {
            "no_data_since": clock.wall(rs.no_data_since),
            "instances": {k: i.to_json(offset) for k, i in rs.instances.items()},
        }
    return {"version": STATE_VERSION, "node": node, "rules": out}


def restore_state(data: Any, rules: Mapping[str, RuleState], node: str, clock: TimeBase,
                  max_instances: int) -> tuple[int, int]:
    """Restore what :func:`export_state` produced into ``rules``; invalid entries and rules no
    longer loaded are skipped. Returns (targets restored, entries skipped)."""
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return 0, 1
    entries = data.get("rules")
    if not isinstance(entries, dict):
        return 0, 1
    restored = skipped = 0
    for name, entry in entries.items():
        rs = rules.get(name)
        if rs is None or not isinstance(entry, dict):
            skipped += 1
            continue
        instances = entry.get("instances")
        if not isinstance(instances, dict):
            skipped += 1
            continue
        for key, raw in instances.items():
            try:
                inst = Instance.from_json(raw, len(rs.compiled.steps) - 1)
            except (KeyError, TypeError, ValueError, AttributeError):
                skipped += 1
                continue
            if (inst.target.kind != rs.compiled.rule.target or inst.target.key != key
                    or inst.target.node != node):
                skipped += 1
                continue
            if len(rs.instances) >= max_instances and key not in rs.instances:
                rs.dropped += 1
                continue
            clock.restored(inst)
            rs.put(key, inst)
            restored += 1
        nds = entry.get("no_data_since")
        if _finite(nds):
            clock.restored_no_data(rs, float(nds))
    return restored, skipped
