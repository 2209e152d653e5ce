"""Engine timing semantics on a fake clock: for, escalation, hysteresis, healthy delay, no data."""

from __future__ import annotations

import json
from pathlib import Path

from rules_testkit import NODE, engine, load, pod, snapshot

from agent.rules.engine import RuleEngine
from agent.structs import actionparams
from agent.structs.snapshot import Snapshot

KUBELET = """
rules:
  - name: kubelet-unhealthy
    severity: critical
    runbook: docs/runbooks/KubeletUnhealthy.md
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    for: 2m
    healthy_for: 5m
    cooldown: 10m
    max_per_hour: 3
    actions:
      - {type: restart-service, unit: kubelet.service}
    escalate:
      - after: 3m
        actions: [{type: cordon}]
        undo: [{type: uncordon}]
"""


def kubelet(t: float, up: float) -> Snapshot:
    return snapshot(t, {"nodemedic_kubelet_up": up})


def run(eng: RuleEngine, t: float, up: float) -> list[tuple[str, int, bool]]:
    """Evaluate one tick and return (action type, step, undo) of the requests."""
    return [(r.action.type, r.step, r.undo) for r in eng.evaluate(kubelet(t, up), t)]


def test_for_delays_firing_until_condition_held_long_enough() -> None:
    """A rule with for: 2m does nothing until the condition has held for 2 minutes."""
    eng = engine(KUBELET)
    assert run(eng, 0, 0) == []
    assert eng.status()[0]["state"] == "pending"
    assert run(eng, 110, 0) == []
    assert run(eng, 120, 0) == [("restart-service", 0, False)]
    assert run(eng, 130, 0) == []  # firing: the step is not repeated


def test_pending_resets_when_condition_clears() -> None:
    """A blip back to healthy restarts the for: clock."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    run(eng, 60, 1)
    assert eng.status() == []
    run(eng, 90, 0)
    assert run(eng, 200, 0) == []
    assert run(eng, 210, 0) == [("restart-service", 0, False)]


def test_escalation_ladder_runs_next_step_after_timeout() -> None:
    """Still unhealthy 3m after the restart, the node is cordoned, once."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    run(eng, 120, 0)
    assert run(eng, 299, 0) == []
    assert run(eng, 300, 0) == [("cordon", 1, False)]
    assert run(eng, 900, 0) == []  # ladder exhausted: nothing more


def test_healthy_delay_before_undo_and_flap_does_not_repeat_actions() -> None:
    """Undo (uncordon) only after healthy_for of continuous health; a flap re-arms the delay."""
    eng = engine(KUBELET)
    for t in (0, 120, 300):
        run(eng, t, 0)
    assert run(eng, 400, 1) == []
    assert eng.status()[0]["state"] == "resolving"
    assert run(eng, 600, 0) == []  # unhealthy again: back to firing, nothing re-run
    assert eng.status()[0]["state"] == "firing"
    assert run(eng, 610, 1) == []
    assert run(eng, 909, 1) == []
    assert run(eng, 910, 1) == [("uncordon", 1, True)]
    assert eng.status() == []


def test_undo_only_reverses_steps_that_were_reached() -> None:
    """Recovered before escalation: no uncordon is requested (nothing was cordoned)."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    run(eng, 120, 0)
    run(eng, 130, 1)
    assert run(eng, 430, 1) == []
    assert eng.status() == []


def test_request_carries_rule_settings_for_the_gate() -> None:
    """Cooldown, hourly cap, severity, runbook URL, target and observed values are passed on."""
    eng = engine(KUBELET.replace("max_per_hour: 3", "max_per_hour: 3\n    dry_run: true\n"
                                 "    workload_reasons: [OOMKilling, OOMStorm]"))
    eng.evaluate(kubelet(0, 0), 0)
    (req,) = eng.evaluate(kubelet(120, 0), 120)
    assert req.rule == "kubelet-unhealthy"
    assert req.cooldown_seconds == 600 and req.max_per_hour == 3 and req.dry_run
    assert req.workload_reasons == ("OOMKilling", "OOMStorm")
    assert req.severity == "critical"
    assert req.runbook == (
        "https://github.com/nodemedic/nodemedic/blob/main/docs/runbooks/KubeletUnhealthy.md")
    assert req.target.key == f"node/{NODE}"
    # The model the loader validated travels as is (typed, not re-parsed from a dict).
    assert isinstance(req.action.params, actionparams.RestartService)
    assert req.action.params.params() == {"unit": "kubelet.service"}
    assert req.observed == {"nodemedic_kubelet_up": 0.0}
    assert req.metrics == ("nodemedic_kubelet_up",)  # what the stage checks for fresh data
    assert "nodemedic_kubelet_up == 0 for 2m" in req.reason


def test_missing_data_freezes_state_and_does_not_count_time() -> None:
    """While the kubelet collector fails the rule neither fires nor resolves; the gap is not
    counted towards for:, escalation or the healthy delay."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    failed = snapshot(60, {"nodemedic_kubelet_up": 0}, failed=["kubelet"])
    for t in (60, 600, 1200):
        assert eng.evaluate(failed, t) == []
    st = eng.status()
    assert st[0]["state"] == "no data" and st[0]["missing_metrics"] == ["nodemedic_kubelet_up"]
    assert st[1]["state"] == "pending"
    # Data is back at t=1260 (gap 1200s): 60s observed so far, so it fires at 1320, not now.
    assert run(eng, 1260, 0) == []
    assert run(eng, 1320, 0) == [("restart-service", 0, False)]
    # Firing, then data missing: no resolve even though nothing says unhealthy.
    eng.evaluate(snapshot(1330, {}, failed=["kubelet"]), 1330)
    assert eng.status()[1]["state"] == "firing"
    fam = {f.name: f for f in eng.families()}
    assert fam["nodemedic_rule_no_data"].get(rule="kubelet-unhealthy") == 1


def test_restore_state_continues_the_ladder_after_restart() -> None:
    """A restarted agent restores exported state and cordons on time without restarting again."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    run(eng, 120, 0)
    saved = json.loads(json.dumps(eng.export_state()))
    fresh = engine(KUBELET)
    assert fresh.restore_state(saved) == 1
    assert run(fresh, 200, 0) == []
    assert run(fresh, 300, 0) == [("cordon", 1, False)]


def test_restore_state_skips_garbage_without_crashing() -> None:
    """Corrupt or foreign state is skipped and counted, never raised."""
    eng = engine(KUBELET)
    bad: list[object] = [None, [], {"version": 99}, {"version": 1, "rules": []},
           {"version": 1, "rules": {"kubelet-unhealthy": {"instances": {"node/node-a": {
               "target": {"kind": "node", "node": "node-a"}, "state": "firing",
               "pending_since": "yesterday"}}}}},
           {"version": 1, "rules": {"gone-rule": {"instances": {}}}},
           # An integer no float can hold (json.loads gives one for 1 and 400 zeros).
           {"version": 1, "rules": {"kubelet-unhealthy": {"instances": {"node/node-a": {
               "target": {"kind": "node", "node": "node-a"}, "state": "pending",
               "pending_since": 10**400}}}}}]
    for data in bad:
        assert eng.restore_state(data) == 0
    fam = {f.name: f for f in eng.families()}
    assert fam["nodemedic_rule_state_restore_skipped_total"].get() == len(bad)
    huge_gap = {"version": 1, "rules": {"kubelet-unhealthy": {"instances": {},
                                                              "no_data_since": 10**400}}}
    assert eng.restore_state(huge_gap) == 0  # ignored, as any other bad no_data_since
    assert run(eng, 0, 0) == []


def test_rule_state_and_evaluations_metrics() -> None:
    """nodemedic_rule_state goes 0 -> 1 -> 2 and evaluations are counted."""
    eng = engine(KUBELET)

    def state() -> float | None:
        return {f.name: f for f in eng.families()}["nodemedic_rule_state"].get(
            rule="kubelet-unhealthy")

    run(eng, 0, 1)
    assert state() == 0
    run(eng, 10, 0)
    assert state() == 1
    run(eng, 130, 0)
    assert state() == 2
    fam = {f.name: f for f in eng.families()}
    assert fam["nodemedic_rule_evaluations_total"].get(rule="kubelet-unhealthy") == 3


DISK = """
rules:
  - name: disk
    when:
      metric: nodemedic_host_filesystem_avail_bytes
      divide_by: nodemedic_host_filesystem_size_bytes
      labels: {path: "/"}
      op: "<"
      value: 0.10
      clear: 0.15
    healthy_for: 0s
    actions:
      - {type: event, reason: DiskLow, message: "{value:.0%} left"}
    undo:
      - {type: event, reason: DiskOk, message: "ok"}
"""


def disk(eng: RuleEngine, t: float, ratio: float) -> list[str]:
    snap = snapshot(t, {
        "nodemedic_host_filesystem_avail_bytes": [({"path": "/"}, ratio * 1000),
                                                  ({"path": "/data"}, 0.0)],
        "nodemedic_host_filesystem_size_bytes": [({"path": "/"}, 1000.0),
                                                 ({"path": "/data"}, 1000.0)],
    })
    return [f"{r.action.params.reason}:{r.action.params.message}"
            for r in eng.evaluate(snap, t)]


def test_hysteresis_keeps_firing_until_clear_threshold() -> None:
    """Below 10% fires; 12% is still firing (clear at 15%); 16% resolves."""
    eng = engine(DISK)
    assert disk(eng, 0, 0.08) == ["DiskLow:8% left"]
    assert disk(eng, 10, 0.12) == []
    assert eng.status()[0]["state"] == "firing"
    assert disk(eng, 20, 0.16) == ["DiskOk:ok"]


def test_separate_resolve_condition() -> None:
    """With resolve:, the rule stays firing until the resolve condition holds."""
    text = KUBELET.replace("    healthy_for: 5m", """    healthy_for: 0s
    resolve:
      metric: nodemedic_node_condition
      labels: {condition: Ready, status: "True"}
      op: "=="
      value: 1""")
    eng = engine(text)

    def tick(t: float, up: float, ready: float) -> list[str]:
        snap = snapshot(t, {"nodemedic_kubelet_up": up, "nodemedic_node_condition": [
            ({"condition": "Ready", "status": "True"}, ready)]})
        return [r.action.type for r in eng.evaluate(snap, t)]

    tick(0, 0, 0)
    assert tick(120, 0, 0) == ["restart-service"]
    assert tick(130, 1, 0) == []  # kubelet up but Node not Ready yet: still firing
    assert eng.status()[0]["state"] == "firing"
    tick(140, 1, 1)
    assert eng.status() == []


OOM = """
rules:
  - name: oom-storm
    target: pod
    when:
      metric: nodemedic_container_oom_kills_total
      labels: {container: {"!=": ""}, namespace: {"!~": "kube-.*"}}
      function: increase
      window: 10m
      aggregate: sum
      op: ">"
      value: 3
    actions:
      - {type: event, reason: OOMStorm, message: "{namespace}/{pod}: {value:.0f} OOM kills"}
      - {type: annotate, target: owner, key: nodemedic.io/oom-storm, value: "{value:.0f}"}
"""


def oom(t: float, counts: dict[tuple[str, str, str], float]) -> Snapshot:
    return snapshot(t, {"nodemedic_container_oom_kills_total": [
        (pod(ns, name, c), v) for (ns, name, c), v in counts.items()]})


def test_per_pod_instances_from_series_labels() -> None:
    """increase() over 10m summed per pod fires only for the pod with the OOM storm."""
    eng = engine(OOM)
    counts = {("shop", "a", "app"): 0.0, ("shop", "a", "side"): 0.0, ("shop", "b", "app"): 0.0,
              ("kube-system", "c", "app"): 0.0, ("shop", "a", ""): 0.0}
    assert eng.evaluate(oom(0, counts), 0) == []
    counts.update({("shop", "a", "app"): 3, ("shop", "a", "side"): 1, ("shop", "b", "app"): 3,
                   ("kube-system", "c", "app"): 9, ("shop", "a", ""): 4})
    reqs = eng.evaluate(oom(60, counts), 60)
    assert {r.target.key for r in reqs} == {"pod/shop/a"}
    event = next(r for r in reqs if r.action.type == "event")
    assert event.action.params.message == "shop/a: 4 OOM kills"
    assert event.target.namespace == "shop" and event.target.name == "a"
    assert event.target.node == NODE


def test_increase_window_forgets_old_kills_and_survives_counter_reset() -> None:
    """Kills older than the window do not count; a counter reset is not a negative increase."""
    eng = engine(OOM)
    key = ("shop", "a", "app")
    eng.evaluate(oom(0, {key: 0}), 0)
    eng.evaluate(oom(60, {key: 3}), 60)
    assert eng.evaluate(oom(700, {key: 3}), 700) == []
    # Counter reset to 2 (2 new kills, not -1), then 2 more: 4 kills within the window.
    assert eng.evaluate(oom(710, {key: 2}), 710) == []
    reqs = eng.evaluate(oom(720, {key: 4}), 720)
    assert reqs[0].action.params.message == "shop/a: 4 OOM kills"


def test_history_is_bounded_and_evictions_counted() -> None:
    """More counter series than the bound: extra series are not tracked and are counted."""
    eng = RuleEngine(load(OOM), NODE, max_history_series=5)
    counts = {("shop", f"p{i}", "app"): 0.0 for i in range(8)}
    eng.evaluate(oom(0, counts), 0)
    fam = {f.name: f for f in eng.families()}
    assert fam["nodemedic_rule_history_series"].get() == 5
    assert fam["nodemedic_rule_history_evictions_total"].get() == 3


def test_label_matchers_and_composition() -> None:
    """=, !=, =~, !~ matchers and all/any/not compose as documented."""
    text = """
rules:
  - name: combo
    when:
      all:
        - metric: nodemedic_node_condition
          labels: {condition: {"=~": "Disk.*|PID.*"}, status: "True"}
          op: "=="
          value: 1
        - not:
            metric: nodemedic_node_condition
            labels: {condition: Ready, status: {"!=": "True"}}
            op: "=="
            value: 1
    actions: [{type: cordon}]
"""
    eng = engine(text)

    def tick(t: float, conds: dict[tuple[str, str], float]) -> bool:
        snap = snapshot(t, {"nodemedic_node_condition": [
            ({"condition": c, "status": s}, v) for (c, s), v in conds.items()]})
        return bool(eng.evaluate(snap, t))

    assert not tick(0, {("MemoryPressure", "True"): 1, ("Ready", "True"): 1})
    assert not tick(10, {("PIDPressure", "True"): 1, ("Ready", "False"): 1})
    assert tick(20, {("PIDPressure", "True"): 1, ("Ready", "False"): 0})


def test_set_rules_keeps_state_of_rules_that_stay() -> None:
    """A reload (SIGHUP) keeps the state of rules whose name is unchanged."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    run(eng, 120, 0)
    eng.set_rules(load(KUBELET.replace("after: 3m", "after: 4m")))
    assert run(eng, 300, 0) == []
    assert run(eng, 360, 0) == [("cordon", 1, False)]


MEMORY = """
rules:
  - name: memory-near-limit
    target: pod
    when:
      metric: nodemedic_container_memory_working_set_bytes
      divide_by: nodemedic_container_memory_limit_bytes
      labels: {container: {"!=": ""}}
      op: ">"
      value: 0.9
    actions:
      - {type: event, reason: MemoryNearLimit, message: "{pod}/{container} {value:.0%}"}
"""


def test_ratios_follow_changing_pods_and_skip_unlimited_containers() -> None:
    """Pods coming and going (new label sets, new order) and containers without a limit are
    handled: only pods over 90% of a limit fire, each once."""
    eng = engine(MEMORY)

    def tick(t: float, pods: dict[str, tuple[float, float | None]]) -> list[str]:
        ws = [(pod("shop", name), w) for name, (w, _) in pods.items()]
        limits = [(pod("shop", name), lim) for name, (_, lim) in reversed(pods.items())
                  if lim is not None]
        snap = snapshot(t, {"nodemedic_container_memory_working_set_bytes": ws,
                            "nodemedic_container_memory_limit_bytes": limits})
        return sorted(r.action.params.message for r in eng.evaluate(snap, t))

    assert tick(0, {"a": (95, 100), "b": (50, 100), "u": (10**12, None)}) == ["a/app 95%"]
    assert tick(10, {"c": (99, 100), "b": (50, 100), "a": (95, 100)}) == ["c/app 99%"]
    assert tick(20, {"b": (91, 100), "c": (99, 100)}) == ["b/app 91%"]
    assert {s["target"] for s in eng.status()} == {"pod/shop/b", "pod/shop/c", "pod/shop/a"}


def test_full_ladder_then_undo_in_reverse_order() -> None:
    """Restart+webhook, then cordon+taint after 3m, drain 10m later; on recovery only the
    reached steps' undo lists run, newest step first."""
    text = (Path(__file__).resolve().parents[2] / "fixtures" / "rules" / "valid"
            / "everything.yaml").read_text()
    eng = RuleEngine([lr for lr in load(text) if lr.rule.name == "kubelet-unhealthy"], NODE)

    def tick(t: float, up: float) -> list[tuple[str, int, bool]]:
        return [(r.action.type, r.step, r.undo) for r in eng.evaluate(kubelet(t, up), t)]

    assert tick(0, 0) == []
    assert tick(120, 0) == [("restart-service", 0, False), ("webhook", 0, False)]
    assert tick(300, 0) == [("cordon", 1, False), ("taint", 1, False)]
    assert tick(899, 0) == []
    assert tick(900, 0) == [("drain", 2, False)]
    assert tick(1000, 1) == []
    assert tick(1599, 1) == []
    assert tick(1600, 1) == [("untaint", 1, True), ("uncordon", 1, True)]


def test_reload_that_changes_a_rules_target_starts_it_afresh() -> None:
    """A rule whose target kind changes on reload does not inherit node-level state."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    assert eng.status()[0]["state"] == "pending"
    eng.set_rules(load(OOM.replace("oom-storm", "kubelet-unhealthy")))
    assert eng.status() == []


def test_wants_tells_whether_a_held_step_is_still_asked_for() -> None:
    """RuleEngine.wants: a step is wanted while its target fires at that step or beyond; an
    undo while the target is not tracked again; nothing of a rule that is not loaded."""
    from dataclasses import replace

    eng = engine("""
rules:
  - name: k
    when: {metric: nodemedic_kubelet_up, op: "==", value: 0}
    for: 10s
    healthy_for: 10s
    actions: [{type: cordon}]
    undo: [{type: uncordon}]
""")
    down = {"nodemedic_kubelet_up": 0}
    (cordon,) = [r for t in (0, 10) for r in eng.evaluate(snapshot(t, down), t)]
    assert eng.wants(cordon)
    assert not eng.wants(replace(cordon, step=1))
    assert not eng.wants(replace(cordon, rule="gone"))
    eng.evaluate(snapshot(20, {"nodemedic_kubelet_up": 1}), 20)  # resolving: not wanted
    assert not eng.wants(cordon)
    (undo,) = eng.evaluate(snapshot(30, {"nodemedic_kubelet_up": 1}), 30)
    assert undo.undo and eng.wants(undo)
    eng.evaluate(snapshot(40, {"nodemedic_kubelet_up": 0}), 40)  # the condition is back
    assert not eng.wants(undo)


def test_pending_rule_shows_what_it_observes() -> None:
    """While `for:` runs, /status shows the values the rule sees (issue 16 item 7), each tick's."""
    eng = engine(KUBELET)
    run(eng, 0, 0)
    entry = eng.status()[0]
    assert entry["state"] == "pending"
    assert entry["observed"] == {"nodemedic_kubelet_up": 0.0}
