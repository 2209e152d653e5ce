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
"""

from __future__ import annotations

import heapq
import math
import operator
import re
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.structs.durations import format_duration
from agent.structs.metrics import Family, MetricSpec
from agent.structs.remediation import ActionRequest, ActionSpec, Target
from agent.structs.snapshot import Snapshot

from .loader import LoadedRule, RuleSet
from .schema import (
    AllOf,
    AnyOf,
    MetricCondition,
    NotOf,
    Rule,
    render_template,
)

STATE_VERSION = 1
MAX_INSTANCES_PER_RULE = 1000
MAX_HISTORY_SERIES = 100_000
MAX_CHANGES_PER_SERIES = 1024
MAX_MEMO_ENTRIES = 4096  # distinct (selection, source) pairs

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
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


# ----------------------------------------------------------------------------- compilation

Matcher = tuple[str, str, Any]  # (label, op, value or compiled regex)


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A compiled MetricCondition."""

    metric: str
    matchers: tuple[Matcher, ...]
    function: str
    window: float
    divide_by: str | None
    aggregate: str
    op: str
    value: float
    clear: float | None
    display: str
    # Memo keys (regexes by pattern), precomputed: they are looked up thousands of times a tick.
    matchers_key: tuple[tuple[str, str, str], ...] = ()
    select_key: tuple[Any, ...] = ()


def _compile_leaf(c: MetricCondition) -> _Leaf:
    matchers: list[Matcher] = []
    shown: list[str] = []
    for label, m in sorted(c.labels.items()):
        if isinstance(m, str):
            op, val = "=", m
        else:
            op, val = m.op_value()
        shown.append(f'{label}{op}"{val}"')
        # Regexes are fully anchored, as in PromQL.
        matchers.append((label, op, re.compile(f"(?:{val})\\Z") if "~" in op else val))
    sel = c.metric + ("{" + ",".join(shown) + "}" if shown else "")
    if c.function != "value":
        sel = f"{c.function}({sel}[{format_duration(c.window or 0)}])"
    if c.divide_by:
        sel = f"{sel} / {c.divide_by}"
    if c.aggregate != "none":
        sel = f"{c.aggregate}({sel})"
    display = f"{sel} {c.op} {c.value:g}"
    mkey = tuple((lbl, op, v.pattern if isinstance(v, re.Pattern) else v)
                 for lbl, op, v in matchers)
    window = float(c.window or 0.0)
    return _Leaf(c.metric, tuple(matchers), c.function, window, c.divide_by, c.aggregate, c.op,
                 c.value, c.clear, display, mkey,
                 (c.metric, mkey, c.function, window, c.divide_by, c.aggregate))


@dataclass(frozen=True, slots=True, eq=False)
class Tree:
    """A compiled condition: ``kind`` "leaf" (``arg`` a _Leaf), "all"/"any" (a tuple of trees)
    or "not" (one tree). Equal conditions in different rules get the same ``nid`` (interned per
    rule set) so a tick evaluates each distinct subtree once for all the rules sharing it."""

    kind: str
    arg: Any
    nid: int
    hyst: bool  # some leaf below has a ``clear`` threshold (hold differs from fire)
    neg: bool  # some ``not`` below (the result depends on the rule's universe)


def _compile(cond: Any, ids: dict[Any, int]) -> Tree:
    """Compile a condition; ``ids`` interns structural keys to node ids (see Tree)."""
    if isinstance(cond, MetricCondition):
        leaf = _compile_leaf(cond)
        skey: Any = ("leaf", leaf.op, leaf.value, leaf.clear, leaf.select_key)
        return Tree("leaf", leaf, ids.setdefault(skey, len(ids)), leaf.clear is not None,
                    False)
    if isinstance(cond, (AllOf, AnyOf)):
        kind = "all" if isinstance(cond, AllOf) else "any"
        subs = tuple(_compile(c, ids) for c in (cond.all if isinstance(cond, AllOf) else
                                                cond.any))
        skey = (kind, tuple(s.nid for s in subs))
        return Tree(kind, subs, ids.setdefault(skey, len(ids)), any(s.hyst for s in subs),
                    any(s.neg for s in subs))
    if isinstance(cond, NotOf):
        sub = _compile(cond.not_, ids)
        return Tree("not", sub, ids.setdefault(("not", sub.nid), len(ids)), sub.hyst, True)
    raise TypeError(f"not a condition: {cond!r}")


def _leaves(tree: Tree) -> Iterable[_Leaf]:
    kind, arg = tree.kind, tree.arg
    if kind == "leaf":
        yield arg
    elif kind == "not":
        yield from _leaves(arg)
    else:
        for sub in arg:
            yield from _leaves(sub)


@dataclass(slots=True)
class _Step:
    after: float
    actions: tuple[ActionSpec, ...]
    undo: tuple[ActionSpec, ...]


@dataclass(slots=True)
class _Compiled:
    rule: Rule
    runbook: str
    when: Tree
    resolve: Tree | None
    leaves: tuple[_Leaf, ...]
    metrics: tuple[str, ...]
    steps: tuple[_Step, ...]
    expr: str


def _spec(action: Any) -> ActionSpec:
    return ActionSpec(type=action.type, params=action)  # the validated model, typed


def _compile_rule(lr: LoadedRule, ids: dict[Any, int]) -> _Compiled:
    rule = lr.rule
    when = _compile(rule.when, ids)
    resolve = _compile(rule.resolve, ids) if rule.resolve is not None else None
    leaves = list(_leaves(when)) + (list(_leaves(resolve)) if resolve else [])
    metrics = sorted({lf.metric for lf in leaves} | {lf.divide_by for lf in leaves
                                                     if lf.divide_by})
    steps = [_Step(0.0, tuple(map(_spec, rule.actions)), tuple(map(_spec, rule.undo)))]
    steps += [_Step(s.after, tuple(map(_spec, s.actions)), tuple(map(_spec, s.undo)))
              for s in rule.escalate]
    return _Compiled(rule, lr.runbook_url, when, resolve, tuple(leaves), tuple(metrics),
                     tuple(steps), _describe(when, top=True))


def _describe(tree: Tree, top: bool = False) -> str:
    """The condition as one readable line for reasons and logs (PromQL-like)."""
    kind, arg = tree.kind, tree.arg
    if kind == "leaf":
        text: str = arg.display
        return text
    if kind == "not":
        return f"not ({_describe(arg, top=True)})"
    joined = f" {'and' if kind == 'all' else 'or'} ".join(_describe(sub) for sub in arg)
    return joined if top or len(arg) == 1 else f"({joined})"


# ----------------------------------------------------------------------------- history


class _Counter:
    """Change points of one counter series, reset-corrected, for increase/rate over windows.

    Only changes are stored (most counters, e.g. OOM kills, never move), so an idle series costs
    one comparison per tick.
    """

    __slots__ = ("changes", "cursors", "first_seen", "last_raw", "offset", "popped", "seen")

    def __init__(self, now: float, raw: float, tick: int) -> None:
        self.popped = 0  # change points dropped from the left so far (cursor base)
        self.cursors: dict[float, int] = {}  # window -> absolute index of its base change
        self.first_seen = now
        self.last_raw = raw
        self.offset = 0.0
        self.changes: deque[tuple[float, float]] = deque([(now, raw)])
        self.seen = tick

    def update(self, now: float, raw: float, horizon: float) -> int:
        """Record a new raw value; return how many old change points were dropped."""
        if raw < self.last_raw:  # counter reset (process restart): keep counting upwards
            self.offset += self.last_raw
        self.last_raw = raw
        self.changes.append((now, raw + self.offset))
        dropped = 0
        ch = self.changes
        while len(ch) >= 2 and ch[1][0] <= now - horizon:
            ch.popleft()
            self.popped += 1
        while len(ch) > MAX_CHANGES_PER_SERIES:
            ch.popleft()
            self.popped += 1
            dropped += 1
        return dropped

    def since(self, start: float, window: float) -> tuple[float, float]:
        """The increase from ``start`` to now, and the window start from which that value is
        stale (a change point leaves the window; inf: only a new change point alters it)."""
        ch = self.changes
        last_t, last = ch[-1]
        if last_t <= start:
            return 0.0, math.inf  # unchanged for the whole window (most counters, most ticks)
        first_t, first = ch[0]
        if first_t > start:
            # Seen for less than the window: count what we saw (never guessed).
            return last - first, first_t
        # The change in effect at the window start: a per-window cursor that only moves
        # forward (amortised O(1) per tick instead of a search).
        popped = self.popped
        cur = self.cursors.get(window, popped)
        i = (cur if cur > popped else popped) - popped
        end = len(ch) - 1
        while i < end and ch[i + 1][0] <= start:
            i += 1
        self.cursors[window] = i + popped
        return last - ch[i][1], ch[i + 1][0]  # i < end: the last change is after start


class _Windowed:
    """rate() or increase() of every series of one counter over one window, kept from tick to
    tick: only series that changed, or whose window start passed one of their change points
    (``due``, a heap of (window start, position)), are recomputed. Rebuilt from scratch when
    series come or go, after a tick it was not asked for, or when ``due`` grows past its bound.
    """

    __slots__ = ("counters", "due", "gen", "lvs", "out", "pos", "tick")

    def __init__(self) -> None:
        self.gen = -1
        self.tick = -1
        self.lvs: list[tuple[str, ...]] = []
        self.counters: list[_Counter] = []
        self.pos: dict[tuple[str, ...], int] = {}
        self.out: list[tuple[tuple[str, ...], float]] = []
        self.due: list[tuple[float, int]] = []

    def value(self, i: int, start: float, window: float, now: float,
              rate: bool) -> float | None:
        """Recompute position ``i`` (None: no rate yet) and schedule when it goes stale."""
        c = self.counters[i]
        inc, stale = c.since(start, window)
        if rate:
            age = now - c.first_seen
            span = window if window <= age else age
            if span <= 0:
                return None
            inc /= span
            if age < window:
                stale = start  # the span still grows: recompute next tick
        if stale != math.inf:
            heapq.heappush(self.due, (stale, i))
        return inc

    def compute(self, hist: dict[tuple[str, ...], _Counter], changed: Sequence[tuple[str, ...]],
                *, gen: int, tick: int, now: float, function: str,
                window: float) -> list[tuple[tuple[str, ...], float]]:
        start = now - window
        rate = function == "rate"
        if (self.gen == gen and self.tick == tick - 1
                and len(self.due) <= 4 * len(self.out) + 64):
            dirty = {self.pos[lv] for lv in changed}
            due = self.due
            while due and due[0][0] <= start:
                dirty.add(heapq.heappop(due)[1])
            out, lvs = self.out, self.lvs
            for i in dirty:
                v = self.value(i, start, window, now, rate)
                if v is None:  # cannot happen while no series is new: start afresh
                    break
                out[i] = (lvs[i], v)
            else:
                self.tick = tick
                return list(out)
        self.lvs, self.counters = list(hist), list(hist.values())
        self.due = []
        out = []
        complete = True
        for i, lv in enumerate(self.lvs):
            v = self.value(i, start, window, now, rate)
            if v is None:
                complete = False  # positions would shift once it has a rate: not reusable
                continue
            out.append((lv, v))
        self.out, self.pos = out, {lv: i for i, lv in enumerate(self.lvs)}
        self.gen, self.tick = (gen, tick) if complete else (-1, -1)
        return list(out)


# ----------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Instance:
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
    def from_json(cls, d: Mapping[str, Any], max_step: int) -> _Instance:
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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
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
            inst.observed = {str(k): float(v) for k, v in obs.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)
                             and math.isfinite(v)}
        return inst


@dataclass(slots=True)
class _RuleState:
    compiled: _Compiled
    instances: dict[str, _Instance] = field(default_factory=dict)
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

    def put(self, key: str, inst: _Instance) -> None:
        if key in self.instances:
            self.drop(key)
        self.instances[key] = inst
        self.by_state[inst.state].add(key)

    def move(self, key: str, inst: _Instance, state: str) -> None:
        self.by_state[inst.state].discard(key)
        inst.state = state
        self.by_state[state].add(key)

    def drop(self, key: str) -> _Instance:
        inst = self.instances.pop(key)
        self.by_state[inst.state].discard(key)
        return inst


# ----------------------------------------------------------------------------- per-tick view


class _Extremes:
    """One selection grouped per target instance, with instances sorted by their largest and
    smallest value so a threshold test is a bisect instead of a scan (200 rules x 250 pods).

    Built either from a dict of instance -> series, or (the common case of one series per
    target) from parallel lists, in which case the dict is only built if someone asks for it.
    """

    __slots__ = ("_by_inst", "_max", "_min", "_unique")

    def __init__(self, by_inst: dict[str, list[tuple[float, tuple[str, ...]]]] | None = None,
                 unique: tuple[list[str], list[tuple[tuple[str, ...], float]]] | None = None
                 ) -> None:
        self._by_inst = by_inst
        self._unique = unique
        self._max: tuple[list[float], list[str]] | None = None
        self._min: tuple[list[float], list[str]] | None = None

    @property
    def by_inst(self) -> dict[str, list[tuple[float, tuple[str, ...]]]]:
        if self._by_inst is None:
            insts, samples = self._unique or ([], [])
            self._by_inst = {i: [(v, lv)] for i, (lv, v) in zip(insts, samples, strict=True)}
        return self._by_inst

    def _sorted(self, pick: Callable[[Iterable[float]], float]) -> tuple[list[float], list[str]]:
        isnan = math.isnan
        if self._unique is not None:
            insts, samples = self._unique
            values = [sm[1] for sm in samples]
            if any(map(isnan, values)):  # NaN never compares true, and would break the order
                pairs = sorted((v, i) for v, i in zip(values, insts, strict=True)
                               if not isnan(v))
            else:
                pairs = sorted(zip(values, insts, strict=True))
        else:
            pairs = []
            for inst, vals in self.by_inst.items():
                finite = [v for v, _ in vals if not isnan(v)]
                if finite:
                    pairs.append((pick(finite), inst))
            pairs.sort()
        return [v for v, _ in pairs], [i for _, i in pairs]

    def holds(self, op: str, thr: float) -> frozenset[str]:
        if op in (">", ">="):
            if self._max is None:
                self._max = self._sorted(max)
            vals, insts = self._max
            cut = bisect_right(vals, thr) if op == ">" else bisect_left(vals, thr)
            return frozenset(insts[cut:])
        if op in ("<", "<="):
            if self._min is None:
                self._min = self._sorted(min)
            vals, insts = self._min
            cut = bisect_left(vals, thr) if op == "<" else bisect_right(vals, thr)
            return frozenset(insts[:cut])
        cmp = _OPS[op]
        return frozenset(inst for inst, vals in self.by_inst.items()
                         if any(cmp(v, thr) for v, _ in vals))


_EMPTY: frozenset[str] = frozenset()


class _Tick:
    """Selections and leaf results for one evaluation, shared by all rules (memoised)."""

    def __init__(self, engine: RuleEngine, snapshot: Snapshot, now: float) -> None:
        self.engine = engine
        self.snapshot = snapshot
        self.now = now
        self.node_key = f"node/{engine.node_name}"
        self.node_set = frozenset({self.node_key})
        # Condition subtree -> instances where it holds (see _eval).
        self.trees: dict[tuple[Any, ...], frozenset[str]] = {}
        self._series: dict[tuple[Any, ...], list[tuple[tuple[str, ...], float]]] = {}
        self._groups: dict[tuple[Any, ...], _Extremes] = {}
        self._truth: dict[tuple[Any, ...], frozenset[str]] = {}
        self._universe: dict[tuple[str, ...], frozenset[str]] = {}
        self._lvs: dict[tuple[Any, ...], list[tuple[str, ...]]] = {}
        self._selected: dict[tuple[Any, ...], tuple[list[tuple[tuple[str, ...], float]],
                                                    list[str]]] = {}

    def labelnames(self, metric: str) -> tuple[str, ...]:
        fam = self.snapshot.family(metric)
        return fam.spec.labelnames if fam is not None else ()

    def _function(self, metric: str, function: str,
                  window: float) -> list[tuple[tuple[str, ...], float]]:
        """All series of ``metric`` after ``function`` (value, rate or increase over window)."""
        fam = self.snapshot.family(metric)
        if function == "value":
            return fam.samples if fam is not None else []
        key = (metric, function, window)
        got = self._series.get(key)
        if got is not None:
            return got
        out = self.engine._windowed(metric, function, window, self.now)
        self._series[key] = out
        return out

    def _labels(self, src: tuple[Any, ...],
                samples: list[tuple[tuple[str, ...], float]]) -> list[tuple[str, ...]]:
        got = self._lvs.get(src)
        if got is None:
            got = self._lvs[src] = [sm[0] for sm in samples]
        return got

    def _index(self, leaf: _Leaf, src: tuple[Any, ...],
               lvs: list[tuple[str, ...]]) -> tuple[list[int], list[str]]:
        """Positions of the series passing the leaf's matchers, and their pod keys. Label sets
        rarely change between ticks, so this is remembered and reused while the list of label
        values is equal to last tick's (one C-level list comparison)."""
        ikey = (src, leaf.matchers_key)
        memo = self.engine._indexes.get(ikey)
        if memo is not None and memo[0] == lvs:
            return memo[1], memo[2]
        names = self.labelnames(leaf.metric)
        checks = [(names.index(lbl) if lbl in names else -1, op, val)
                  for lbl, op, val in leaf.matchers]
        idx = [i for i, lv in enumerate(lvs) if not checks or _matches(lv, checks)]
        if "namespace" in names and "pod" in names:
            ni, pi = names.index("namespace"), names.index("pod")
            insts = [f"pod/{lvs[i][ni]}/{lvs[i][pi]}" if lvs[i][pi] else "" for i in idx]
        else:
            insts = [""] * len(idx)
        self.engine._remember(self.engine._indexes, ikey, (lvs, idx, insts))
        return idx, insts

    def _align(self, num: tuple[Any, ...], num_lvs: list[tuple[str, ...]],
               den: tuple[Any, ...], den_lvs: list[tuple[str, ...]]) -> list[int]:
        """For each numerator series, the position of the denominator with equal labels (-1)."""
        akey = (num, den)
        memo = self.engine._alignments.get(akey)
        if memo is not None and memo[0] == num_lvs and memo[1] == den_lvs:
            cached: list[int] = memo[2]
            return cached
        names, den_names = self.labelnames(num[0]), self.labelnames(den[0])
        if den_names == names:
            pos = {lv: i for i, lv in enumerate(den_lvs)}
        elif set(den_names) == set(names):  # same label set, different order
            order = [den_names.index(n) for n in names]
            pos = {tuple(lv[i] for i in order): j for j, lv in enumerate(den_lvs)}
        else:
            pos = {}
        aligned = [pos.get(lv, -1) for lv in num_lvs]
        self.engine._remember(self.engine._alignments, akey, (num_lvs, den_lvs, aligned))
        return aligned

    def select(self, leaf: _Leaf) -> tuple[list[tuple[tuple[str, ...], float]], list[str]]:
        """Matching series of a leaf (after function and division) as (labelvalues, value), and
        the pod key of each (empty when the metric has no pod labels)."""
        key = ("sel", *leaf.select_key)
        got = self._selected.get(key)
        if got is not None:
            return got
        src = (leaf.metric, leaf.function, leaf.window)
        samples = self._function(*src)
        lvs = self._labels(src, samples)
        idx, insts = self._index(leaf, src, lvs)
        if len(idx) != len(samples):
            samples = [samples[i] for i in idx]
        if leaf.divide_by:
            dsrc = (leaf.divide_by, leaf.function, leaf.window)
            den_samples = self._function(*dsrc)
            aligned = self._align(src, lvs, dsrc, self._labels(dsrc, den_samples))
            divided: list[tuple[tuple[str, ...], float]] = []
            kept: list[str] = []
            for (lv, v), i, inst in zip(samples, idx, insts, strict=True):
                j = aligned[i]
                if j >= 0:
                    d = den_samples[j][1]
                    if d:  # absent (e.g. unlimited) or zero: no ratio for this series
                        divided.append((lv, v / d))
                        kept.append(inst)
            samples, insts = divided, kept
        got = (samples, insts)
        self._selected[key] = got
        return got

    def groups(self, leaf: _Leaf, target: str) -> _Extremes:
        """The leaf's series per target instance."""
        key = (target, *leaf.select_key)
        got = self._groups.get(key)
        if got is not None:
            return got
        samples, insts = self.select(leaf)
        out: dict[str, list[tuple[float, tuple[str, ...]]]] = {}
        if (target == "pod" and leaf.aggregate != "count" and all(insts)
                and len(set(insts)) == len(insts)):
            # One series per pod (the usual shape after a container!="" matcher or with an
            # aggregate): no grouping needed, and any aggregate of one value is that value.
            ext = _Extremes(unique=(insts, samples))
            self._groups[key] = ext
            return ext
        if target == "node":
            if samples:
                out[self.node_key] = [(v, lv) for lv, v in samples]
        else:
            for (lv, v), inst in zip(samples, insts, strict=True):
                if inst:
                    if inst in out:
                        out[inst].append((v, lv))
                    else:
                        out[inst] = [(v, lv)]
        if leaf.aggregate != "none":
            how = leaf.aggregate
            for k, vals in out.items():
                if len(vals) > 1 or how == "count":
                    out[k] = [(_aggregate(how, [v for v, _ in vals]), vals[0][1])]
        ext = _Extremes(out)
        self._groups[key] = ext
        return ext

    def truth(self, leaf: _Leaf, target: str, threshold: float) -> frozenset[str]:
        """Instances where the leaf holds at ``threshold``."""
        key = (target, leaf.op, threshold, *leaf.select_key)
        got = self._truth.get(key)
        if got is None:
            got = self.groups(leaf, target).holds(leaf.op, threshold)
            self._truth[key] = got
        return got

    def hit(self, leaf: _Leaf, target: str, inst: str) -> tuple[float, tuple[str, ...]] | None:
        """The value (and its series) that decides the leaf for one instance."""
        vals = self.groups(leaf, target).by_inst.get(inst)
        if not vals:
            return None
        finite = [x for x in vals if not math.isnan(x[0])] or vals
        if leaf.op in (">", ">="):
            return max(finite, key=_first)
        if leaf.op in ("<", "<="):
            return min(finite, key=_first)
        cmp = _OPS[leaf.op]
        return next((x for x in vals if cmp(x[0], leaf.value)), vals[0])

    def universe(self, target: str, metrics: tuple[str, ...]) -> frozenset[str]:
        """The instances a ``not`` over ``metrics`` can be true for (before the rule's own)."""
        return self.node_set if target == "node" else self.pod_universe(metrics)

    def pod_universe(self, metrics: tuple[str, ...]) -> frozenset[str]:
        """Every pod with at least one series in any of ``metrics`` (what ``not`` negates)."""
        got = self._universe.get(metrics)
        if got is not None:
            return got
        got = frozenset().union(*[self._pods(m) for m in metrics])
        self._universe[metrics] = got
        return got

    def _pods(self, metric: str) -> frozenset[str]:
        """Pod keys of one metric's series; reused from last tick while its label values are
        unchanged (as in :meth:`_index`)."""
        fam = self.snapshot.family(metric)
        if fam is None:
            return _EMPTY
        names = fam.spec.labelnames
        if "namespace" not in names or "pod" not in names:
            return _EMPTY
        lvs = self._labels((metric, "value", 0.0), fam.samples)
        mkey = ("pods", metric)
        memo = self.engine._indexes.get(mkey)
        if memo is not None and memo[0] == lvs:
            cached: frozenset[str] = memo[1]
            return cached
        ni, pi = names.index("namespace"), names.index("pod")
        got = frozenset(f"pod/{lv[ni]}/{lv[pi]}" for lv in lvs if lv[pi])
        self.engine._remember(self.engine._indexes, mkey, (lvs, got))
        return got


def _first(x: tuple[float, tuple[str, ...]]) -> float:
    return x[0]


def _matches(lv: tuple[str, ...], checks: Sequence[tuple[int, str, Any]]) -> bool:
    for idx, op, val in checks:
        have = lv[idx] if idx >= 0 else ""
        if op == "=":
            if have != val:
                return False
        elif op == "!=":
            if have == val:
                return False
        elif op == "=~":
            if val.match(have) is None:
                return False
        elif val.match(have) is not None:
            return False
    return True


def _aggregate(how: str, values: list[float]) -> float:
    if how == "sum":
        return math.fsum(values)
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    if how == "avg":
        return math.fsum(values) / len(values)
    return float(len(values))  # count


def _eval(tree: Tree, tick: _Tick, target: str, metrics: tuple[str, ...],
          hold: bool) -> frozenset[str]:
    """Instances for which the condition holds. ``hold`` uses hysteresis (``clear``) thresholds,
    used to decide whether an already firing instance is still unhealthy. ``not`` negates
    within the base universe of ``metrics`` (:meth:`_Tick.universe`); the caller adds the
    rule's own extra instances (:func:`_holds_at`). Results are memoised per tick by subtree,
    so rules sharing a condition (or its hold form, when nothing in it has ``clear``) share
    the work."""
    kind = tree.kind
    if kind == "leaf":
        leaf: _Leaf = tree.arg
        thr = leaf.clear if hold and leaf.clear is not None else leaf.value
        return tick.truth(leaf, target, thr)
    hold = hold and tree.hyst
    key = (tree.nid, target, hold, metrics if tree.neg else None)
    got = tick.trees.get(key)
    if got is not None:
        return got
    if kind == "not":
        got = tick.universe(target, metrics) - _eval(tree.arg, tick, target, metrics, hold)
    elif kind == "all":
        acc: frozenset[str] | None = None
        for sub in tree.arg:
            part = _eval(sub, tick, target, metrics, hold)
            acc = part if acc is None else acc & part
            if not acc:
                break  # nothing left to intersect: skip the remaining conditions
        got = acc or _EMPTY
    else:
        got = frozenset.union(*[_eval(sub, tick, target, metrics, hold) for sub in tree.arg])
    tick.trees[key] = got
    return got


def _holds_at(tree: Tree, tick: _Tick, target: str, inst: str, hold: bool) -> bool:
    """Whether the condition holds for one instance that is in the rule's universe but not in
    the base universe (a tracked target whose series are gone): ``not`` is true there unless
    its operand holds."""
    kind = tree.kind
    if kind == "leaf":
        leaf: _Leaf = tree.arg
        thr = leaf.clear if hold and leaf.clear is not None else leaf.value
        return inst in tick.truth(leaf, target, thr)
    if kind == "not":
        return not _holds_at(tree.arg, tick, target, inst, hold)
    parts = (_holds_at(sub, tick, target, inst, hold) for sub in tree.arg)
    return all(parts) if kind == "all" else any(parts)


# ----------------------------------------------------------------------------- engine


class RuleEngine:
    """Evaluates rules tick by tick and keeps their state (see module docstring)."""

    def __init__(self, ruleset: RuleSet | Sequence[LoadedRule], node_name: str,
                 *, max_instances_per_rule: int = MAX_INSTANCES_PER_RULE,
                 max_history_series: int = MAX_HISTORY_SERIES) -> None:
        self.node_name = node_name
        self.max_instances = max_instances_per_rule
        self.max_history_series = max_history_series
        self._rules: dict[str, _RuleState] = {}
        self._history: dict[str, dict[tuple[str, ...], _Counter]] = {}
        # Per counter: series updated this tick, and a generation bumped when series come or
        # go (or the metric is frozen); with them, windowed results carry over between ticks.
        # One _Windowed per (metric, function, window) some rule reads: bounded by the rules.
        self._changed: dict[str, list[tuple[str, ...]]] = {}
        self._hist_gen: dict[str, int] = {}
        self._windows: dict[tuple[str, str, float], _Windowed] = {}
        self._horizons: dict[str, float] = {}
        self._tick_no = 0
        self.history_evictions = 0
        self.restore_skipped = 0
        self.last_eval_seconds = 0.0
        # Wall minus monotonic time at the last tick (None before the first); restored state
        # holds wall times until a tick tells us this offset.
        self._offset: float | None = None
        self._unconverted: list[_Instance] = []
        self._unconverted_rules: list[_RuleState] = []
        # Selections by label that do not change between ticks (positions, pod keys, ratio
        # alignments), reused while the label values are the same as last tick.
        self._indexes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._alignments: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.set_rules(ruleset)

    @staticmethod
    def _remember(memo: dict[tuple[Any, ...], tuple[Any, ...]], key: tuple[Any, ...],
                  value: tuple[Any, ...]) -> None:
        if len(memo) >= MAX_MEMO_ENTRIES and key not in memo:  # bounded: start afresh
            memo.clear()
        memo[key] = value

    # -- rule set ---------------------------------------------------------------------------

    def set_rules(self, ruleset: RuleSet | Sequence[LoadedRule]) -> None:
        """Install a (re)loaded rule set; rules that keep their name keep their state."""
        loaded = ruleset.rules if isinstance(ruleset, RuleSet) else tuple(ruleset)
        new: dict[str, _RuleState] = {}
        ids: dict[Any, int] = {}  # fresh per rule set: ids only mean something within one
        for lr in loaded:
            if not lr.rule.enabled:
                continue
            compiled = _compile_rule(lr, ids)
            old = self._rules.get(lr.rule.name)
            if old is not None and old.compiled.rule.target == lr.rule.target:
                old.compiled = compiled
                for inst in old.instances.values():
                    inst.step = min(inst.step, len(compiled.steps) - 1)
                new[lr.rule.name] = old
            else:
                new[lr.rule.name] = _RuleState(compiled)
        self._rules = new
        horizons: dict[str, float] = {}
        for rs in new.values():
            for leaf in rs.compiled.leaves:
                if leaf.function != "value":
                    for m in (leaf.metric, leaf.divide_by):
                        if m:
                            horizons[m] = max(horizons.get(m, 0.0), leaf.window)
        self._horizons = horizons
        self._history = {m: h for m, h in self._history.items() if m in horizons}
        self._changed = {m: c for m, c in self._changed.items() if m in horizons}
        self._hist_gen = {m: g for m, g in self._hist_gen.items() if m in horizons}
        self._windows.clear()  # rebuilt on the next tick for the windows the new rules read

    @property
    def rule_names(self) -> list[str]:
        return list(self._rules)

    def rule(self, name: str) -> Rule | None:
        """The loaded rule called ``name`` (the safety gate reads its ``gates:``)."""
        rs = self._rules.get(name)
        return rs.compiled.rule if rs is not None else None

    # -- evaluation -------------------------------------------------------------------------

    def _update_history(self, snapshot: Snapshot, now: float) -> None:
        tick = self._tick_no
        total = sum(len(h) for h in self._history.values())
        for metric, horizon in self._horizons.items():
            if not snapshot.has_data_for(metric):
                self._hist_gen[metric] = self._hist_gen.get(metric, 0) + 1
                continue  # frozen: keep the history as it was
            fam = snapshot.family(metric)
            hist = self._history.setdefault(metric, {})
            samples = fam.samples if fam is not None else []
            seen = 0
            added = False
            changed: list[tuple[str, ...]] = []
            for lv, raw in samples:
                c = hist.get(lv)
                if c is None:
                    if total >= self.max_history_series:
                        self.history_evictions += 1
                        continue
                    hist[lv] = _Counter(now, raw, tick)
                    total += 1
                    seen += 1
                    added = True
                    continue
                if c.seen != tick:
                    seen += 1
                c.seen = tick
                if raw != c.last_raw:
                    self.history_evictions += c.update(now, raw, horizon)
                    changed.append(lv)
            self._changed[metric] = changed
            if seen < len(hist):  # vanished series (pod gone): forget them
                kept = {lv: c for lv, c in hist.items() if c.seen == tick}
                total -= len(hist) - len(kept)
                self._history[metric] = kept
                added = True
            if added:  # positions moved: windowed results are rebuilt
                self._hist_gen[metric] = self._hist_gen.get(metric, 0) + 1

    def _windowed(self, metric: str, function: str, window: float,
                  now: float) -> list[tuple[tuple[str, ...], float]]:
        """rate()/increase() of every series of ``metric`` this tick (see _Windowed)."""
        key = (metric, function, window)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Windowed()
        return w.compute(self._history.get(metric, {}), self._changed.get(metric, ()),
                         gen=self._hist_gen.get(metric, 0), tick=self._tick_no, now=now,
                         function=function, window=window)

    def evaluate(self, snapshot: Snapshot, now: float) -> list[ActionRequest]:
        """Advance every rule by one tick; return the actions to hand to the safety gate.
        ``now`` is the wall time; durations use ``snapshot.monotonic`` (module docstring)."""
        started = time.process_time()
        self._tick_no += 1
        self._set_offset(now - snapshot.monotonic)
        now = snapshot.monotonic
        self._update_history(snapshot, now)
        tick = _Tick(self, snapshot, now)
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

    def _step_rule(self, rs: _RuleState, tick: _Tick, now: float) -> list[ActionRequest]:
        c = rs.compiled
        rule = c.rule
        target = rule.target
        # ``not`` is true for every target the rule could name: those with a series of any of
        # its metrics (the shared base universe) plus the targets it tracks. Tracked targets
        # outside the base (their series are gone) are rare and decided one by one.
        extras: set[str] | frozenset[str] = _EMPTY
        if rs.instances and (c.when.neg or (c.resolve is not None and c.resolve.neg)):
            base = tick.universe(target, c.metrics)
            if not rs.instances.keys() <= base:  # a check allocates nothing; usually true
                extras = rs.instances.keys() - base

        def ev(tree: Tree, hold: bool) -> frozenset[str]:
            got = _eval(tree, tick, target, c.metrics, hold)
            if extras and tree.neg:
                got = got.difference(extras).union(
                    k for k in extras if _holds_at(tree, tick, target, k, hold))
            return got

        fire = ev(c.when, hold=False)
        firing, resolving = rs.by_state["firing"], rs.by_state["resolving"]
        if not firing and not resolving:
            healthy: frozenset[str] = _EMPTY
        elif c.resolve is not None:
            healthy = ev(c.resolve, hold=False)
        else:
            hold = ev(c.when, hold=True)
            # A storm keeps its firing targets unhealthy: test that before building sets.
            healthy = (_EMPTY if not resolving and firing <= hold
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
            rs.put(key, _Instance(self._target(key, target), "pending", now))
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

    def _maybe_done(self, rs: _RuleState, key: str, inst: _Instance, tick: _Tick,
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

    def _observe(self, inst: _Instance, c: _Compiled, tick: _Tick, key: str) -> None:
        """Record the values behind a decision (for Events, logs and /status). Done only when
        requests are made: a steady firing rule costs no per-tick bookkeeping."""
        observed: dict[str, float] = {}
        primary: tuple[_Leaf, float, tuple[str, ...]] | None = None
        fallback: tuple[_Leaf, float, tuple[str, ...]] | None = None
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

    def _requests(self, rs: _RuleState, inst: _Instance, tick: _Tick, step: int, now: float,
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
                rule=rule.name, action=_render(spec, fields), target=inst.target, step=step,
                severity=rule.severity, dry_run=rule.dry_run, undo=undo,
                observed=dict(inst.observed), reason=reason, runbook=c.runbook,
                cooldown_seconds=rule.cooldown, max_per_hour=rule.max_per_hour,
                workload_reasons=tuple(rule.workload_reasons),
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

    def _set_offset(self, offset: float) -> None:
        """Remember wall minus monotonic time; map restored wall times to monotonic ones."""
        self._offset = offset
        for inst in self._unconverted:
            inst.rebase(-offset)
        for rs in self._unconverted_rules:
            if rs.no_data_since is not None:
                rs.no_data_since -= offset
        self._unconverted.clear()
        self._unconverted_rules.clear()

    def _wall(self, t: float | None) -> float | None:
        return None if t is None else t + (self._offset or 0.0)

    def export_state(self) -> dict[str, Any]:
        """JSON-able state of every rule with a pending/firing/resolving target."""
        rules: dict[str, Any] = {}
        for name, rs in self._rules.items():
            if not rs.instances and rs.no_data_since is None:
                continue
            offset = self._offset or 0.0  # before the first tick everything is wall time
            rules[name] = {
                "no_data_since": self._wall(rs.no_data_since),
                "instances": {k: i.to_json(offset) for k, i in rs.instances.items()},
            }
        return {"version": STATE_VERSION, "node": self.node_name, "rules": rules}

    def restore_state(self, data: Any) -> int:
        """Restore what :meth:`export_state` produced (e.g. after a restart); invalid entries
        and rules no longer loaded are skipped and counted. Returns targets restored."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            self.restore_skipped += 1
            return 0
        rules = data.get("rules")
        if not isinstance(rules, dict):
            self.restore_skipped += 1
            return 0
        restored = 0
        for name, entry in rules.items():
            rs = self._rules.get(name)
            if rs is None or not isinstance(entry, dict):
                self.restore_skipped += 1
                continue
            instances = entry.get("instances")
            if not isinstance(instances, dict):
                self.restore_skipped += 1
                continue
            for key, raw in instances.items():
                try:
                    inst = _Instance.from_json(raw, len(rs.compiled.steps) - 1)
                except (KeyError, TypeError, ValueError, AttributeError):
                    self.restore_skipped += 1
                    continue
                if (inst.target.kind != rs.compiled.rule.target or inst.target.key != key
                        or inst.target.node != self.node_name):
                    self.restore_skipped += 1
                    continue
                if len(rs.instances) >= self.max_instances and key not in rs.instances:
                    rs.dropped += 1
                    continue
                if self._offset is None:
                    self._unconverted.append(inst)
                else:
                    inst.rebase(-self._offset)
                rs.put(key, inst)
                restored += 1
            nds = entry.get("no_data_since")
            if isinstance(nds, (int, float)) and not isinstance(nds, bool) and math.isfinite(nds):
                rs.no_data_since = float(nds)
                if self._offset is None:
                    self._unconverted_rules.append(rs)
                else:
                    rs.no_data_since -= self._offset
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
                            "since": self._wall(rs.no_data_since),
                            "frozen_targets": sorted(rs.instances)})
            for key, inst in sorted(rs.instances.items()):
                out.append({
                    "rule": name, "state": inst.state, "severity": rule.severity,
                    "target": key, "pending_since": self._wall(inst.pending_since),
                    "firing_since": self._wall(inst.firing_since),
                    "resolved_since": self._wall(inst.resolved_since),
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
        hs.add((), sum(len(h) for h in self._history.values()))
        he.add((), self.history_evictions)
        es.add((), self.last_eval_seconds)
        rsk.add((), self.restore_skipped)
        return [state, evals, nodata, nodata_t, inst_f, req, dropped, hs, he, es, rsk]


def _render(spec: ActionSpec, fields: Mapping[str, object]) -> ActionSpec:
    """Fill event messages / annotation values from the observed fields (no code runs)."""
    key = {"event": "message", "annotate": "value"}.get(spec.type)
    if key is None or key not in spec.params:
        return spec
    return spec.with_params(**{key: render_template(str(spec.params[key]), dict(fields))})
