"""rate()/increase() results carried over between ticks (agent.rules.history.Windowed) never go
stale: a window passing an old change, a pod that goes and comes back, a frozen tick, a reload."""

from __future__ import annotations

from rules_testkit import engine, load, pod, snapshot

from agent.rules.engine import RuleEngine
from agent.structs.snapshot import Snapshot

THR = "nodemedic_container_cpu_cfs_throttled_periods_total"
RULE = """
rules:
  - name: throttled
    target: pod
    when:
      metric: nodemedic_container_cpu_cfs_throttled_periods_total
      labels: {{container: {{"!=": ""}}}}
      function: increase
      window: {window}
      op: ">"
      value: 50
    healthy_for: 0s
    actions:
      - {{type: event, reason: Throttled, message: "{{namespace}}/{{pod}} {{value:.0f}}"}}
"""


def snap(t: float, counts: dict[str, float], failed: tuple[str, ...] = ()) -> Snapshot:
    return snapshot(t, {THR: [(pod("shop", name), v) for name, v in counts.items()]}, failed)


def states(eng: RuleEngine) -> dict[str, str]:
    return {s["target"]: s["state"] for s in eng.status() if "target" in s}


def test_firing_ends_when_the_window_passes_a_burst_of_an_idle_counter() -> None:
    """One burst, then the counter never moves: the target resolves exactly one window later."""
    eng = engine(RULE.format(window="1m"))
    counts = {"a": 0.0, "b": 0.0}
    eng.evaluate(snap(0, counts), 0)
    counts["a"] = 100.0
    t = 10.0
    reqs = eng.evaluate(snap(t, counts), t)
    assert [r.action.params.message for r in reqs] == ["shop/a 100"]
    while t < 60:  # other series keep moving, "a" stays at 100
        t += 10
        counts["b"] += 1
        eng.evaluate(snap(t, counts), t)
        assert states(eng) == {"pod/shop/a": "firing"}
    t += 10  # window start now at the burst: no increase left
    eng.evaluate(snap(t, counts), t)
    assert states(eng) == {}


def test_pod_that_goes_and_comes_back_starts_from_its_new_counter() -> None:
    """A pod's series vanish and return reset: the old burst is not reported again."""
    eng = engine(RULE.format(window="10m"))
    eng.evaluate(snap(0, {"a": 0.0, "b": 0.0}), 0)
    assert len(eng.evaluate(snap(10, {"a": 100.0, "b": 0.0}), 10)) == 1
    eng.evaluate(snap(20, {"b": 0.0}), 20)  # pod a gone
    assert states(eng) == {}
    for t in (30.0, 40.0, 50.0):  # back with a fresh counter that does not move
        assert eng.evaluate(snap(t, {"a": 0.0, "b": 0.0}), t) == []
    assert states(eng) == {}


def test_frozen_tick_and_reload_do_not_serve_old_results() -> None:
    """After a tick without data, and after a reload to another window, increases are current."""
    eng = engine(RULE.format(window="1m"))
    eng.evaluate(snap(0, {"a": 0.0}), 0)
    eng.evaluate(snap(10, {"a": 10.0}), 10)
    eng.evaluate(snap(20, {"a": 20.0}, failed=("container",)), 20)  # frozen: nothing read
    assert len(eng.evaluate(snap(30, {"a": 100.0}), 30)) == 1  # 100 within the minute
    eng.set_rules(load(RULE.format(window="10m").replace("name: throttled", "name: long")))
    assert len(eng.evaluate(snap(40, {"a": 100.0}), 40)) == 1  # fresh rule, 10m window
    eng.set_rules(load(RULE.format(window="1m")))
    for t in (50.0, 60.0, 70.0, 80.0):  # the rise to 100 (at t=30) is within the minute
        eng.evaluate(snap(t, {"a": 100.0}), t)
        assert states(eng) == {"pod/shop/a": "firing"}
    eng.evaluate(snap(90, {"a": 100.0}), 90)  # ... and now it is not
    assert states(eng) == {}
