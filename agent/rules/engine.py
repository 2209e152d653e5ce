"""The rules engine: pure evaluation of a Snapshot against the loaded rules, with per-rule state.

Called once per tick by agent.runtime (``evaluate(snapshot, now)``), which hands the returned
``ActionRequest``s to the safety gate. No I/O: the only inputs are the snapshot,
the clock value passed in and the state kept here; ``export_state()``/``restore_state()`` let the
actions side persist the state in node annotations so a restarted agent continues a ladder.

Every duration (``for:``, ladder ``after``, ``healthy_for``, rate windows) is measured with
``Snapshot.monotonic``, so a wall-clock step (NTP) neither fires nor delays anything. The wall
time ``now`` only maps those timestamps to wall time for the persisted state and /status
(wall = mono + (now - snapshot.monotonic)); restored wall times are mapped back on the next tick.

Per rule and target instance (the node, or one namespace/pod for ``target: pod``) the state is
inactive -> pending (``for:`` running) -> firing (ladder steps run, one per ``after``) ->
resolving (``healthy_for`` running) -> inactive (undo actions emitted). When any metric a rule
reads has no data this tick (its collector failed or is disabled), the rule is frozen: nothing
fires, resolves or escalates, and the time without data does not count towards any timer.

This module holds the state machine and the public interface (:class:`RuleEngine`: ``evaluate``,
``set_rules``, ``rule``, ``wants``, ``export_state``/``restore_state``, ``status``,
``families``); the parts live beside it: agent.rules.compile (rules to condition trees),
agent.rules.history (counter history for rate/increase), agent.rules.evaluate (which targets a
condition holds for, per tick) and agent.rules.state (per-target state and its persisted form).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from agent.structs.durations import format_duration
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, Target
from agent.structs.snapshot import Snapshot

from . import state
from .compile import CompiledRule, Leaf, Tree, compile_rule, render_action
from .evaluate import EMPTY, SelectionMemo, Tick, eval_tree, holds_at
from .history import MAX_HISTORY_SERIES, History
from .loader import LoadedRule, RuleSet
from .schema import Rule
from .state import Instance, RuleState, TimeBase

MAX_INSTANCES_PER_RULE = 1000
STATE_CODE = {"inactive": 0, "pending": 1, "firing": 2, "resolving": 2}

# ----------------------------------------------------------------------------- metrics
_STATE = MetricSpec(
    "nodemedic_rule_state",
    "Rule state: 0 inactive, 1 pending, 2 firing (actions in effect, including while waiting "
    "for healthy_for before undo). The worst instance wins.", "gauge", ("rule",))
_EVALS = MetricSpec("nodemedic_rule_evaluations_total",
                    "Evaluations of each rule (ticks with data for all its metrics).", "counter",
                    ("rule",))
_NO_DATA = MetricSpec("nodemedic_rule_no_data",
                      "1 while a metric the rule reads has no data (the rule is frozen).",
                      "gauge", ("rule",))
_NO_DATA_TOTAL = MetricSpec("nodemedic_rule_no_data_ticks_total",
                            "Ticks a rule was frozen because a metric it reads had no data.",
                            "counter", ("rule",))
_INSTANCES = MetricSpec("nodemedic_rule_instances",
                        "Targets of each rule by state (pending, firing, resolving).", "gauge",
                        ("rule", "state"))
_REQUESTS = MetricSpec("nodemedic_rule_action_requests_total",
                       "Action requests the engine handed to the safety gate.", "counter",
                       ("rule", "undo"))
_DROPPED = MetricSpec("nodemedic_rule_instances_dropped_total",
                      "New targets not tracked because the rule already tracks the maximum.",
                      "counter", ("rule",))
_HIST_SERIES = MetricSpec("nodemedic_rule_history_series",
                          "Counter series whose history the engine keeps for rate/increase.",
                          "gauge")
_HIST_EVICT = MetricSpec("nodemedic_rule_history_evictions_total",
                         "Series or samples dropped from the rate/increase history (bounds).",
                         "counter")
_EVAL_SECONDS = MetricSpec("nodemedic_rules_evaluation_seconds",
                           "CPU-clock duration of the last evaluation of all rules.", "gauge")
_RESTORE_SKIPPED = MetricSpec("nodemedic_rule_state_restore_skipped_total",
                              "Entries of restored state that were invalid or for unknown rules.",
                              "counter")
ENGINE_METRICS = (_STATE, _EVALS, _NO_DATA, _NO_DATA_TOTAL, _INSTANCES, _REQUESTS, _DROPPED,
                  _HIST_SERIES, _HIST_EVICT, _EVAL_SECONDS, _RESTORE_SKIPPED)


class RuleEngine:
    """Evaluates rules tick by tick and keeps their state (see module docstring)."""

    def __init__(self, ruleset: RuleSet | Sequence[LoadedRule], node_name: str,
                 *, max_instances_per_rule: int = MAX_INSTANCES_PER_RULE,
                 max_history_series: int = MAX_HISTORY_SERIES) -> None:
        self.node_name = node_name
        self.max_instances = max_instances_per_rule
        self._rules: dict[str, RuleState] = {}
        self._history = History(max_history_series)
        self._memo = SelectionMemo()
        self._clock = TimeBase()
        self.restore_skipped = 0
        self.last_eval_seconds = 0.0
        self.set_rules(ruleset)

    # -- rule set ---------------------------------------------------------------------------

    def set_rules(self, ruleset: RuleSet | Sequence[LoadedRule]) -> None:
        """Install a (re)loaded rule set; rules that keep their name keep their state."""
        loaded = ruleset.rules if isinstance(ruleset, RuleSet) else tuple(ruleset)
        new: dict[str, RuleState] = {}
        ids: dict[Any, int] = {}  # fresh per rule set: ids only mean something within one
        for lr in loaded:
            if not lr.rule.enabled:
                continue
            compiled = compile_rule(lr, ids)
            old = self._rules.get(lr.rule.name)
            if old is not None and old.compiled.rule.target == lr.rule.target:
                old.compiled = compiled
                for inst in old.instances.values():
                    inst.step = min(inst.step, len(compiled.steps) - 1)
                new[lr.rule.name] = old
            else:
                new[lr.rule.name] = RuleState(compiled)
        self._rules = new
        self._history.set_horizons(leaf for rs in new.values() for leaf in rs.compiled.leaves)

    @property
    def rule_names(self) -> list[str]:
        return list(self._rules)

    def rule(self, name: str) -> Rule | None:
        """The loaded rule called ``name`` (the safety gate reads its ``gates:``)."""
        rs = self._rules.get(name)
        return rs.compiled.rule if rs is not None else None

    def rule_metrics(self, name: str) -> tuple[str, ...]:
        """Every metric rule ``name`` reads, ``divide_by`` ones included (empty when it is not
        loaded): while one of them has no data the rule is frozen. Each request carries the
        same tuple (``ActionRequest.metrics``), which the stage checks before acting."""
        rs = self._rules.get(name)
        return rs.compiled.metrics if rs is not None else ()

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]:
        """Advance every rule by one tick; return the actions to hand to the safety gate.
        ``now`` is the wall time; durations use ``snapshot.monotonic`` (module docstring)."""
        started = time.process_time()
        self._clock.set_offset(now - snapshot.monotonic)
        now = snapshot.monotonic
        self._history.update(snapshot, now)
        self._memo.next_tick()
        tick = Tick(self.node_name, self._history, self._memo, snapshot, now)
        out: list[ActionRequest] = []
        # Rules share metric sets: look each set up once per tick, not once per rule.
        missing_of: dict[tuple[str, ...], tuple[str, ...]] = {}
        for rs in self._rules.values():
            metrics = rs.compiled.metrics
            missing = missing_of.get(metrics)
            if missing is None:
                missing = missing_of[metrics] = tuple(
                    m for m in metrics if not snapshot.has_data_for(m))
            rs.missing = missing
            if missing:
                if rs.no_data_since is None:
                    rs.no_data_since = now
                rs.no_data_ticks += 1
                continue
            if rs.no_data_since is not None:
                gap = max(0.0, now - rs.no_data_since)
                for inst in rs.instances.values():
                    inst.shift(gap)
                rs.no_data_since = None
            rs.evaluations += 1
            out.extend(self._step_rule(rs, tick, now))
        self.last_eval_seconds = time.process_time() - started
        return out

    def _step_rule(self, rs: RuleState, tick: Tick, now: float) -> list[ActionRequest]:
        c = rs.compiled
        rule = c.rule
        target = rule.target
        # ``not`` is true for every target the rule could name: those with a series of any of
        # its metrics (the shared base universe) plus the targets it tracks. Tracked targets
        # outside the base (their series are gone) are rare and decided one by one.
        extras: set[str] | frozenset[str] = EMPTY
        if rs.instances and (c.when.neg or (c.resolve is not None and c.resolve.neg)):
            base = tick.universe(target, c.metrics)
            if not rs.instances.keys() <= base:  # a check allocates nothing; usually true
                extras = rs.instances.keys() - base

        def ev(tree: Tree, hold: bool) -> frozenset[str]:
            got = eval_tree(tree, tick, target, c.metrics, hold)
            if extras and tree.neg:
                got = got.difference(extras).union(
                    k for k in extras if holds_at(tree, tick, target, k, hold))
            return got

        fire = ev(c.when, hold=False)
        firing, resolving = rs.by_state["firing"], rs.by_state["resolving"]
        if not firing and not resolving:
            healthy: frozenset[str] = EMPTY
        elif c.resolve is not None:
            healthy = ev(c.resolve, hold=False)
        else:
            hold = ev(c.when, hold=True)
            # A storm keeps its firing targets unhealthy: test that before building sets.
            healthy = (EMPTY if not resolving and firing <= hold
                       else frozenset((firing | resolving) - hold))
        out: list[ActionRequest] = []
        # Firing: healthy -> resolving; otherwise maybe the next ladder step.
        for key in list(firing & healthy):
            inst = rs.instances[key]
            rs.move(key, inst, "resolving")
            inst.resolved_since = now
        if len(c.steps) > 1:
            for key in list(firing):
                inst = rs.instances[key]
                nxt = inst.step + 1
                if (nxt < len(c.steps) and inst.step_since is not None
                        and now - inst.step_since >= c.steps[nxt].after):
                    inst.step, inst.step_since = nxt, now
                    out.extend(self._requests(rs, inst, tick, nxt, now, undo=False))
        # Resolving: unhealthy again -> firing (nothing re-run); healthy long enough -> undo.
        for key in list(resolving - healthy):
            inst = rs.instances[key]
            rs.move(key, inst, "firing")
            inst.resolved_since = None
        for key in list(resolving):
            out.extend(self._maybe_done(rs, key, rs.instances[key], tick, now))
        # Pending: condition gone -> forget; held for `for:` -> fire step 0.
        pending = rs.by_state["pending"]
        for key in list(pending - fire):
            rs.drop(key)
        for key in fire.difference(rs.instances):
            if len(rs.instances) >= self.max_instances:
                rs.dropped += 1
                continue
            rs.put(key, Instance(self._target(key, target), "pending", now))
        for key in list(pending):
            inst = rs.instances[key]
            if now - inst.pending_since >= rule.for_:
                rs.move(key, inst, "firing")
                inst.firing_since, inst.step, inst.step_since = now, 0, now
                out.extend(self._requests(rs, inst, tick, 0, now, undo=False))
            else:  # /status shows what a pending rule sees while its `for:` runs
                inst.observed = {leaf.display.rsplit(" ", 2)[0]: found[0]
                                 for leaf in c.leaves
                                 if (found := tick.hit(leaf, rule.target, key)) is not None}
        return out

    def _maybe_done(self, rs: RuleState, key: str, inst: Instance, tick: Tick,
                    now: float) -> list[ActionRequest]:
        if inst.resolved_since is None or now - inst.resolved_since < rs.compiled.rule.healthy_for:
            return []
        rs.drop(key)
        out: list[ActionRequest] = []
        for step in range(inst.step, -1, -1):  # undo in reverse ladder order
            out.extend(self._requests(rs, inst, tick, step, now, undo=True))
        return out

    def _target(self, key: str, kind: str) -> Target:
        if kind == "node":
            return Target(kind="node", node=self.node_name)
        _, namespace, name = key.split("/", 2)
        return Target(kind="pod", node=self.node_name, namespace=namespace, name=name,
                      labels={"namespace": namespace, "pod": name})

    def _observe(self, inst: Instance, c: CompiledRule, tick: Tick, key: str) -> None:
        """Record the values behind a decision (for Events, logs and /status). Done only when
        requests are made: a steady firing rule costs no per-tick bookkeeping."""
        observed: dict[str, float] = {}
        primary: tuple[Leaf, float, tuple[str, ...]] | None = None
        fallback: tuple[Leaf, float, tuple[str, ...]] | None = None
        for leaf in c.leaves:
            found = tick.hit(leaf, c.rule.target, key)
            if found is None:
                continue
            value, lv = found
            observed[leaf.display.rsplit(" ", 2)[0]] = value
            if primary is None and key in tick.truth(leaf, c.rule.target, leaf.value):
                primary = (leaf, value, lv)
            if fallback is None:
                fallback = (leaf, value, lv)
        primary = primary or fallback
        inst.observed = observed
        fields: dict[str, object] = {
            "rule": c.rule.name, "severity": c.rule.severity, "node": self.node_name,
            "target": inst.target.key, "namespace": inst.target.namespace,
            "pod": inst.target.name, "container": "", "metric": "", "value": math.nan,
            "runbook": c.runbook, "description": c.rule.description,
        }
        if primary is not None:
            leaf, value, lv = primary
            names = tick.labelnames(leaf.metric)
            fields["metric"], fields["value"] = leaf.metric, value
            if "container" in names and leaf.aggregate == "none":
                fields["container"] = lv[names.index("container")]
        inst.fields = fields

    def _requests(self, rs: RuleState, inst: Instance, tick: Tick, step: int, now: float,
                  *, undo: bool) -> list[ActionRequest]:
        c = rs.compiled
        rule = c.rule
        specs = c.steps[step].undo if undo else c.steps[step].actions
        if not specs:
            return []
        self._observe(inst, c, tick, inst.target.key)
        fields = dict(inst.fields, step=step)
        if undo:
            reason = (f"{rule.name}: healthy for {format_duration(rule.healthy_for)}, undoing "
                      f"step {step}")
        elif step == 0:
            reason = f"{rule.name}: {c.expr} for {format_duration(now - inst.pending_since)}"
        else:
            reason = (f"{rule.name}: still firing {format_duration(c.steps[step].after)} after "
                      f"step {step - 1}, escalating to step {step}")
        out = []
        for spec in specs:
            out.append(ActionRequest(
                rule=rule.name, action=render_action(spec, fields), target=inst.target, step=step,
                severity=rule.severity, dry_run=rule.dry_run, undo=undo,
                observed=dict(inst.observed), reason=reason, runbook=c.runbook,
                cooldown_seconds=rule.cooldown, max_per_hour=rule.max_per_hour,
                workload_reasons=tuple(rule.workload_reasons), metrics=c.metrics,
            ))
        if undo:
            rs.undo_requests += len(out)
        else:
            rs.requests += len(out)
        return out

    def wants(self, req: ActionRequest) -> bool:
        """Whether the rules still ask for ``req`` (a step the gate held back): the rule is
        loaded and its target is firing at that step or beyond; for an undo, the target is no
        longer tracked (the condition did not come back). The stage drops held steps for which
        this turns False, so a resolved or removed rule never acts late."""
        rs = self._rules.get(req.rule)
        if rs is None:
            return False
        inst = rs.instances.get(req.target.key)
        if req.undo:
            return inst is None
        return inst is not None and inst.state == "firing" and inst.step >= req.step

    # -- state persistence -------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """JSON-able state of every rule with a pending/firing/resolving target."""
        return state.export_state(self._rules, self.node_name, self._clock)

    def restore_state(self, data: Any) -> int:
        """Restore what :meth:`export_state` produced (e.g. after a restart); invalid entries
        and rules no longer loaded are skipped and counted. Returns targets restored."""
        restored, skipped = state.restore_state(data, self._rules, self.node_name, self._clock,
                                                self.max_instances)
        self.restore_skipped += skipped
        return restored

    # -- observability -----------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Rules that are pending, firing, resolving or without data, for /status."""
        out: list[dict[str, Any]] = []
        for name, rs in self._rules.items():
            rule = rs.compiled.rule
            if rs.missing:
                out.append({"rule": name, "state": "no data", "severity": rule.severity,
                            "missing_metrics": list(rs.missing),
                            "since": self._clock.wall(rs.no_data_since),
                            "frozen_targets": sorted(rs.instances)})
            for key, inst in sorted(rs.instances.items()):
                out.append({
                    "rule": name, "state": inst.state, "severity": rule.severity,
                    "target": key, "pending_since": self._clock.wall(inst.pending_since),
                    "firing_since": self._clock.wall(inst.firing_since),
                    "resolved_since": self._clock.wall(inst.resolved_since),
                    "step": inst.step, "steps": len(rs.compiled.steps),
                    "observed": dict(inst.observed), "runbook": rs.compiled.runbook,
                    "dry_run": rule.dry_run, "no_data": bool(rs.missing),
                })
        return out

    def families(self) -> list[Family]:
        state, evals, nodata, nodata_t = (_STATE.family(), _EVALS.family(), _NO_DATA.family(),
                                          _NO_DATA_TOTAL.family())
        inst_f, req, dropped = _INSTANCES.family(), _REQUESTS.family(), _DROPPED.family()
        for name, rs in self._rules.items():
            counts = {"pending": 0, "firing": 0, "resolving": 0}
            for inst in rs.instances.values():
                counts[inst.state] += 1
            state.add((name,), max((STATE_CODE[s] for s, n in counts.items() if n), default=0))
            evals.add((name,), rs.evaluations)
            nodata.add((name,), 1.0 if rs.missing else 0.0)
            nodata_t.add((name,), rs.no_data_ticks)
            for s, n in counts.items():
                inst_f.add((name, s), n)
            req.add((name, "false"), rs.requests)
            req.add((name, "true"), rs.undo_requests)
            dropped.add((name,), rs.dropped)
        hs, he, es, rsk = (_HIST_SERIES.family(), _HIST_EVICT.family(), _EVAL_SECONDS.family(),
                           _RESTORE_SKIPPED.family())
        hs.add((), self._history.series_count)
        he.add((), self._history.evictions)
        es.add((), self.last_eval_seconds)
        rsk.add((), self.restore_skipped)
        return [state, evals, nodata, nodata_t, inst_f, req, dropped, hs, he, es, rsk]

