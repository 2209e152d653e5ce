"""A collector that serves the same Family objects again (the cgroup collector between reads
under --cgroup.min-interval) lets the engine carry last tick's results over by identity
(agent.rules.evaluate.SelectionMemo.carry, History skipping a family it already recorded,
Windowed returning its unchanged list). That is only a saving if it decides exactly what
evaluating fresh, equal families decides: two engines, one fed the re-served objects and one fed
copies of them, must produce the same requests, states and observed values on every tick."""

from __future__ import annotations

import copy
import random
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rules_testkit import CATALOGUE, NODE, OWNER, SPEC, load, pod
from test_rules_fuzz import VALID

from agent.rules.engine import RuleEngine
from agent.structs.metrics import Family
from agent.structs.snapshot import CollectorStatus, Snapshot

# What the shipped-like rules read, per pod: counters and gauges of a few pods, some of them
# OOM-looping and throttled, plus node-level series.
EXTRA = """
rules:
  - name: throttled
    target: pod
    when:
      metric: nodemedic_container_cpu_cfs_throttled_periods_total
      divide_by: nodemedic_container_cpu_cfs_periods_total
      function: rate
      window: 1m
      aggregate: max
      op: ">"
      value: 0.25
      clear: 0.1
    for: 30s
    actions: [{type: event, reason: Throttled, message: "{pod} {value:.2f}"}]
  - name: near-limit
    target: pod
    when:
      metric: nodemedic_container_memory_working_set_bytes
      labels: {container: {"!=": ""}}
      divide_by: nodemedic_container_memory_limit_bytes
      op: ">"
      value: 0.9
    for: 20s
    healthy_for: 30s
    actions: [{type: event, reason: NearLimit, message: "{pod} {value:.2f}"}]
  - name: oom-young
    target: pod
    when:
      metric: nodemedic_container_oom_kills_total
      function: increase
      window: 2m
      op: ">="
      value: 1
    actions: [{type: event, reason: OOM, message: "{pod} {value:.0f}"}]
"""
PODS = [pod("default", f"p{i}") for i in range(6)] + [pod("kube-system", "dns")]
GAUGES = ("nodemedic_container_memory_working_set_bytes", "nodemedic_container_memory_limit_bytes")
COUNTERS = ("nodemedic_container_oom_kills_total", "nodemedic_container_cpu_cfs_periods_total",
            "nodemedic_container_cpu_cfs_throttled_periods_total")


class Node:
    """Per-pod values that move when the node is 'read'."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counters = {(m, i): 0.0 for m in COUNTERS for i in range(len(PODS))}
        self.gauges = {(m, i): 100.0 for m in GAUGES for i in range(len(PODS))}

    def read(self, present: list[bool]) -> dict[str, Family]:
        rng = self.rng
        for (m, i) in self.counters:
            if rng.random() < 0.4:
                step = {"nodemedic_container_oom_kills_total": rng.choice((0, 1, 1, 3)),
                        "nodemedic_container_cpu_cfs_periods_total": 100,
                        "nodemedic_container_cpu_cfs_throttled_periods_total":
                            rng.choice((0, 10, 60, 100))}[m]
                self.counters[(m, i)] += step
                if m == "nodemedic_container_cpu_cfs_periods_total":
                    self.counters[("nodemedic_container_cpu_cfs_throttled_periods_total", i)] = min(
                        self.counters[("nodemedic_container_cpu_cfs_throttled_periods_total", i)],
                        self.counters[(m, i)])
            if rng.random() < 0.03:  # a restart: the counter resets
                self.counters[(m, i)] = 0.0
        for (m, i) in self.gauges:
            if m.endswith("working_set_bytes"):
                self.gauges[(m, i)] = rng.choice((10.0, 50.0, 91.0, 95.0, 99.0))
        fams: dict[str, Family] = {}
        for m in (*COUNTERS, *GAUGES):
            spec = SPEC[m]
            fam = spec.family()
            values = self.counters if m in COUNTERS else self.gauges
            for i, labels in enumerate(PODS):
                if present[i]:
                    fam.add(tuple(labels.get(n, "") for n in spec.labelnames), values[(m, i)])
            fams[m] = fam
        up = SPEC["nodemedic_kubelet_up"].family()
        up.add((), rng.choice((0.0, 1.0, 1.0)))
        fams["nodemedic_kubelet_up"] = up
        return fams


def snap(t: float, fams: dict[str, Family], failed: bool) -> Snapshot:
    bad = {"container"} if failed else set()
    shown = {m: f for m, f in fams.items() if OWNER[m] not in bad}
    collectors = {c: CollectorStatus(c, c not in bad, 0.01, "boom" if c in bad else None)
                  for c in set(OWNER.values())}
    return Snapshot(taken_at=t, monotonic=t, families=MappingProxyType(shown),
                    collectors=MappingProxyType(collectors), owners=MappingProxyType(OWNER))


def decided(reqs: list[Any]) -> list[str]:
    return sorted(map(repr, reqs))  # repr: NaN observed values compare equal


def engines() -> tuple[RuleEngine, RuleEngine]:
    """The engine as shipped, and a reference that carries nothing over (no memo carry-over,
    windowed results rebuilt from the change points and every family recorded, every tick: see
    :func:`reference_tick`)."""
    rules = [*load(VALID, CATALOGUE), *load(EXTRA, CATALOGUE)]
    reference = RuleEngine(rules, NODE)
    reference._memo.carry = lambda key, inputs: None  # type: ignore[method-assign]
    return RuleEngine(rules, NODE), reference


def reference_tick(eng: RuleEngine, t: float, fams: dict[str, Family],
                   failed: bool) -> list[Any]:
    eng._history._windows.clear()  # every rate/increase computed afresh from change points
    eng._history._recorded.clear()  # and every family walked
    return eng.evaluate(snap(t, copy.deepcopy(fams), failed), t)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6),
       plan=st.lists(st.tuples(st.sampled_from(["read", "again", "again", "fail"]),
                               st.floats(1.0, 40.0), st.integers(0, 2**len(PODS) - 1)),
                     min_size=5, max_size=60))
def test_reserved_families_decide_like_fresh_copies(
        seed: int, plan: list[tuple[str, float, int]]) -> None:
    reused, fresh = engines()
    node = Node(seed)
    fams = node.read([True] * len(PODS))
    t = 0.0
    for what, step, mask in plan:
        t += step
        if what == "read":  # a new read, with pods coming and going
            fams = node.read([bool(mask >> i & 1) or i == 0 for i in range(len(PODS))])
        a = reused.evaluate(snap(t, fams, what == "fail"), t)
        b = reference_tick(fresh, t, fams, what == "fail")
        assert decided(a) == decided(b), (t, what)
        assert reused.status() == fresh.status(), (t, what)
    assert reused.export_state() == fresh.export_state()


def test_a_reserved_tick_reuses_results() -> None:
    """The saving is real: a tick that gets last tick's objects again carries its leaf results
    over instead of selecting anew (the reference never does)."""
    reused, fresh = engines()
    fams = Node(1).read([True] * len(PODS))
    for t in (10.0, 20.0, 30.0):
        reused.evaluate(snap(t, fams, False), t)
        fresh.evaluate(snap(t, copy.deepcopy(fams), False), t)
    assert reused._memo.reused > 0
    assert fresh._memo.reused == 0
