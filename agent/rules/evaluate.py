"""Condition evaluation for one tick: which targets each compiled condition holds for.

A :class:`Tick` is the per-tick view shared by all rules: each leaf's selection (matchers,
function via :class:`agent.rules.history.History`, division, grouping per target, aggregate) is
computed once and memoised, and :func:`eval_tree` / :func:`holds_at` combine leaf results by
``all``/``any``/``not``. Selections by label that do not change between ticks are kept in a
:class:`SelectionMemo` across ticks, and so is a leaf's whole result while its inputs are the
very objects of last tick: a collector serving the same family again (the cgroup collector under
``--cgroup.min-interval``: two ticks of three at the defaults) and a windowed result that did
not move (:meth:`agent.rules.history.Windowed.compute` returns the same list then) cost one
identity test per leaf instead of a selection over every series. Pure: no I/O, reads only the
snapshot and the history.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.structs.snapshot import Snapshot

from .compile import Leaf, Tree
from .history import History, Series

MAX_MEMO_ENTRIES = 4096  # distinct (selection, source) pairs

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}


class SelectionMemo:
    """Selections by label that do not change between ticks (positions, pod keys, ratio
    alignments), reused while the label values are the same as last tick. Bounded.

    ``carried`` holds last tick's results (selection, grouping, truth, pod keys) with the
    objects they were computed from; a tick that finds the same objects (``is``) reuses the
    result, and stores what it used in ``kept`` (:meth:`next_tick` swaps them, so only what the
    last tick used is held: bounded by the rules' leaves, and an input no longer read is
    released)."""

    def __init__(self) -> None:
        self.indexes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.alignments: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.carried: dict[tuple[Any, ...], tuple[tuple[object, ...], Any]] = {}
        self.kept: dict[tuple[Any, ...], tuple[tuple[object, ...], Any]] = {}
        self.reused = 0  # results carried over (tests, the bench)

    def next_tick(self) -> None:
        self.carried, self.kept = self.kept, {}

    def carry(self, key: tuple[Any, ...], inputs: tuple[object, ...]) -> Any:
        """Last tick's result for ``key`` if it was computed from these very objects."""
        got = self.carried.get(key)
        if got is None:
            return None
        old = got[0]
        if len(old) != len(inputs) or any(a is not b for a, b in zip(old, inputs, strict=True)):
            return None
        self.kept[key] = got
        self.reused += 1
        return got[1]

    def keep(self, key: tuple[Any, ...], inputs: tuple[object, ...], result: Any) -> None:
        self.kept[key] = (inputs, result)

    @staticmethod
    def remember(memo: dict[tuple[Any, ...], tuple[Any, ...]], key: tuple[Any, ...],
                 value: tuple[Any, ...]) -> None:
        if len(memo) >= MAX_MEMO_ENTRIES and key not in memo:  # bounded: start afresh
            memo.clear()
        memo[key] = value


class Extremes:
    """One selection grouped per target instance, with instances sorted by their largest and
    smallest value so a threshold test is a bisect instead of a scan (200 rules x 250 pods).

    Built either from a dict of instance -> series, or (the common case of one series per
    target) from parallel lists, in which case the dict is only built if someone asks for it.
    """

    __slots__ = ("_by_inst", "_max", "_min", "_unique")

    def __init__(self, by_inst: dict[str, list[tuple[float, tuple[str, ...]]]] | None = None,
                 unique: tuple[list[str], Series] | None = None
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
        cmp = OPS[op]
        return frozenset(inst for inst, vals in self.by_inst.items()
                         if any(cmp(v, thr) for v, _ in vals))


EMPTY: frozenset[str] = frozenset()


class Tick:
    """Selections and leaf results for one evaluation, shared by all rules (memoised)."""

    def __init__(self, node_name: str, history: History, memo: SelectionMemo,
                 snapshot: Snapshot, now: float) -> None:
        self.history = history
        self.memo = memo
        self.snapshot = snapshot
        self.now = now
        self.node_key = f"node/{node_name}"
        self.node_set = frozenset({self.node_key})
        # Condition subtree -> instances where it holds (see eval_tree).
        self.trees: dict[tuple[Any, ...], frozenset[str]] = {}
        self._series: dict[tuple[Any, ...], Series] = {}
        self._groups: dict[tuple[Any, ...], Extremes] = {}
        self._truth: dict[tuple[Any, ...], frozenset[str]] = {}
        self._universe: dict[tuple[str, ...], frozenset[str]] = {}
        self._lvs: dict[tuple[Any, ...], list[tuple[str, ...]]] = {}
        self._selected: dict[tuple[Any, ...], tuple[Series, list[str]]] = {}

    def labelnames(self, metric: str) -> tuple[str, ...]:
        fam = self.snapshot.family(metric)
        return fam.spec.labelnames if fam is not None else ()

    def _function(self, metric: str, function: str,
                  window: float) -> Series:
        """All series of ``metric`` after ``function`` (value, rate or increase over window)."""
        fam = self.snapshot.family(metric)
        if function == "value":
            return fam.samples if fam is not None else []
        key = (metric, function, window)
        got = self._series.get(key)
        if got is not None:
            return got
        out = self.history.windowed(metric, function, window, self.now)
        self._series[key] = out
        return out

    def _labels(self, src: tuple[Any, ...],
                samples: Series) -> list[tuple[str, ...]]:
        got = self._lvs.get(src)
        if got is None:
            got = self._lvs[src] = [sm[0] for sm in samples]
        return got

    def _index(self, leaf: Leaf, src: tuple[Any, ...],
               lvs: list[tuple[str, ...]]) -> tuple[list[int], list[str]]:
        """Positions of the series passing the leaf's matchers, and their pod keys. Label sets
        rarely change between ticks, so this is remembered and reused while the list of label
        values is equal to last tick's (one C-level list comparison)."""
        ikey = (src, leaf.matchers_key)
        memo = self.memo.indexes.get(ikey)
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
        self.memo.remember(self.memo.indexes, ikey, (lvs, idx, insts))
        return idx, insts

    def _align(self, num: tuple[Any, ...], num_lvs: list[tuple[str, ...]],
               den: tuple[Any, ...], den_lvs: list[tuple[str, ...]]) -> list[int]:
        """For each numerator series, the position of the denominator with equal labels (-1)."""
        akey = (num, den)
        memo = self.memo.alignments.get(akey)
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
        self.memo.remember(self.memo.alignments, akey, (num_lvs, den_lvs, aligned))
        return aligned

    def select(self, leaf: Leaf) -> tuple[Series, list[str]]:
        """Matching series of a leaf (after function and division) as (labelvalues, value), and
        the pod key of each (empty when the metric has no pod labels)."""
        key = ("sel", *leaf.select_key)
        got = self._selected.get(key)
        if got is not None:
            return got
        src = (leaf.metric, leaf.function, leaf.window)
        samples = self._function(*src)
        dsrc = (leaf.divide_by, leaf.function, leaf.window) if leaf.divide_by else None
        den_samples = self._function(*dsrc) if dsrc is not None else None
        inputs = (samples, den_samples)
        carried: tuple[Series, list[str]] | None = self.memo.carry(key, inputs)
        if carried is not None:
            self._selected[key] = carried
            return carried
        got = self._select(leaf, src, samples, dsrc, den_samples)
        self.memo.keep(key, inputs, got)
        self._selected[key] = got
        return got

    def _select(self, leaf: Leaf, src: tuple[Any, ...], samples: Series,
                dsrc: tuple[Any, ...] | None,
                den_samples: Series | None) -> tuple[Series, list[str]]:
        lvs = self._labels(src, samples)
        idx, insts = self._index(leaf, src, lvs)
        if len(idx) != len(samples):
            samples = [samples[i] for i in idx]
        if dsrc is not None and den_samples is not None:
            aligned = self._align(src, lvs, dsrc, self._labels(dsrc, den_samples))
            divided: Series = []
            kept: list[str] = []
            for (lv, v), i, inst in zip(samples, idx, insts, strict=True):
                j = aligned[i]
                if j >= 0:
                    d = den_samples[j][1]
                    if d:  # absent (e.g. unlimited) or zero: no ratio for this series
                        divided.append((lv, v / d))
                        kept.append(inst)
            samples, insts = divided, kept
        return samples, insts

    def groups(self, leaf: Leaf, target: str) -> Extremes:
        """The leaf's series per target instance."""
        key = (target, *leaf.select_key)
        got = self._groups.get(key)
        if got is not None:
            return got
        sel = self.select(leaf)
        ckey = ("groups", *key)
        ext: Extremes | None = self.memo.carry(ckey, (sel,))
        if ext is None:
            ext = self._group(leaf, target, *sel)
            self.memo.keep(ckey, (sel,), ext)
        self._groups[key] = ext
        return ext

    def _group(self, leaf: Leaf, target: str, samples: Series, insts: list[str]) -> Extremes:
        out: dict[str, list[tuple[float, tuple[str, ...]]]] = {}
        if (target == "pod" and leaf.aggregate != "count" and all(insts)
                and len(set(insts)) == len(insts)):
            # One series per pod (the usual shape after a container!="" matcher or with an
            # aggregate): no grouping needed, and any aggregate of one value is that value.
            return Extremes(unique=(insts, samples))
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
        return Extremes(out)

    def truth(self, leaf: Leaf, target: str, threshold: float) -> frozenset[str]:
        """Instances where the leaf holds at ``threshold``."""
        key = (target, leaf.op, threshold, *leaf.select_key)
        got = self._truth.get(key)
        if got is None:
            ext = self.groups(leaf, target)
            ckey = ("truth", *key)
            got = self.memo.carry(ckey, (ext,))
            if got is None:
                got = ext.holds(leaf.op, threshold)
                self.memo.keep(ckey, (ext,), got)
            self._truth[key] = got
        return got

    def hit(self, leaf: Leaf, target: str, inst: str) -> tuple[float, tuple[str, ...]] | None:
        """The value (and its series) that decides the leaf for one instance."""
        vals = self.groups(leaf, target).by_inst.get(inst)
        if not vals:
            return None
        finite = [x for x in vals if not math.isnan(x[0])] or vals
        if leaf.op in (">", ">="):
            return max(finite, key=_first)
        if leaf.op in ("<", "<="):
            return min(finite, key=_first)
        cmp = OPS[leaf.op]
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
            return EMPTY
        names = fam.spec.labelnames
        if "namespace" not in names or "pod" not in names:
            return EMPTY
        mkey = ("pods", metric)
        carried: frozenset[str] | None = self.memo.carry(mkey, (fam.samples,))
        if carried is not None:
            return carried
        got = self._pods_of(mkey, names, self._labels((metric, "value", 0.0), fam.samples))
        self.memo.keep(mkey, (fam.samples,), got)
        return got

    def _pods_of(self, mkey: tuple[str, str], names: tuple[str, ...],
                 lvs: list[tuple[str, ...]]) -> frozenset[str]:
        memo = self.memo.indexes.get(mkey)
        if memo is not None and memo[0] == lvs:
            cached: frozenset[str] = memo[1]
            return cached
        ni, pi = names.index("namespace"), names.index("pod")
        got = frozenset(f"pod/{lv[ni]}/{lv[pi]}" for lv in lvs if lv[pi])
        self.memo.remember(self.memo.indexes, mkey, (lvs, got))
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


def eval_tree(tree: Tree, tick: Tick, target: str, metrics: tuple[str, ...],
              hold: bool) -> frozenset[str]:
    """Instances for which the condition holds. ``hold`` uses hysteresis (``clear``) thresholds,
    used to decide whether an already firing instance is still unhealthy. ``not`` negates
    within the base universe of ``metrics`` (:meth:`Tick.universe`); the caller adds the
    rule's own extra instances (:func:`holds_at`). Results are memoised per tick by subtree,
    so rules sharing a condition (or its hold form, when nothing in it has ``clear``) share
    the work."""
    kind = tree.kind
    if kind == "leaf":
        leaf: Leaf = tree.arg
        thr = leaf.clear if hold and leaf.clear is not None else leaf.value
        return tick.truth(leaf, target, thr)
    hold = hold and tree.hyst
    key = (tree.nid, target, hold, metrics if tree.neg else None)
    got = tick.trees.get(key)
    if got is not None:
        return got
    if kind == "not":
        got = tick.universe(target, metrics) - eval_tree(tree.arg, tick, target, metrics, hold)
    elif kind == "all":
        acc: frozenset[str] | None = None
        for sub in tree.arg:
            part = eval_tree(sub, tick, target, metrics, hold)
            acc = part if acc is None else acc & part
            if not acc:
                break  # nothing left to intersect: skip the remaining conditions
        got = acc or EMPTY
    else:
        got = frozenset.union(*[eval_tree(sub, tick, target, metrics, hold) for sub in tree.arg])
    tick.trees[key] = got
    return got


def holds_at(tree: Tree, tick: Tick, target: str, inst: str, hold: bool) -> bool:
    """Whether the condition holds for one instance that is in the rule's universe but not in
    the base universe (a tracked target whose series are gone): ``not`` is true there unless
    its operand holds."""
    kind = tree.kind
    if kind == "leaf":
        leaf: Leaf = tree.arg
        thr = leaf.clear if hold and leaf.clear is not None else leaf.value
        return inst in tick.truth(leaf, target, thr)
    if kind == "not":
        return not holds_at(tree.arg, tick, target, inst, hold)
    parts = (holds_at(sub, tick, target, inst, hold) for sub in tree.arg)
    return all(parts) if kind == "all" else any(parts)

