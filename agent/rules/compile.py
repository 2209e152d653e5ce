"""Rule compilation: validated rules (agent.rules.schema) turned into the trees the engine walks.

A condition becomes a :class:`Tree` of :class:`Leaf` selections (matchers, function, window,
division, aggregate, threshold); equal subtrees of different rules share one node id so a tick
evaluates each once. A rule becomes a :class:`CompiledRule`: its trees, the metrics it reads,
its ladder of :class:`Step`s (actions and undo per step) and its condition as one readable line.
Pure: no I/O, no state between calls beyond the id table the caller passes in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.structs import actionparams as ap
from agent.structs.durations import format_duration
from agent.structs.remediation import ActionSpec

from .loader import LoadedRule
from .schema import (
    AllOf,
    AnyOf,
    MetricCondition,
    NotOf,
    Rule,
    render_template,
)

Matcher = tuple[str, str, Any]  # (label, op, value or compiled regex)


@dataclass(frozen=True, slots=True)
class Leaf:
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


def _compile_leaf(c: MetricCondition) -> Leaf:
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
    return Leaf(c.metric, tuple(matchers), c.function, window, c.divide_by, c.aggregate, c.op,
                 c.value, c.clear, display, mkey,
                 (c.metric, mkey, c.function, window, c.divide_by, c.aggregate))


@dataclass(frozen=True, slots=True, eq=False)
class Tree:
    """A compiled condition: ``kind`` "leaf" (``arg`` a Leaf), "all"/"any" (a tuple of trees)
    or "not" (one tree). Equal conditions in different rules get the same ``nid`` (interned per
    rule set) so a tick evaluates each distinct subtree once for all the rules sharing it."""

    kind: str
    arg: Any
    nid: int
    hyst: bool  # some leaf below has a ``clear`` threshold (hold differs from fire)
    neg: bool  # some ``not`` below (the result depends on the rule's universe)


def compile_condition(cond: Any, ids: dict[Any, int]) -> Tree:
    """Compile a condition; ``ids`` interns structural keys to node ids (see Tree)."""
    if isinstance(cond, MetricCondition):
        leaf = _compile_leaf(cond)
        skey: Any = ("leaf", leaf.op, leaf.value, leaf.clear, leaf.select_key)
        return Tree("leaf", leaf, ids.setdefault(skey, len(ids)), leaf.clear is not None,
                    False)
    if isinstance(cond, (AllOf, AnyOf)):
        kind = "all" if isinstance(cond, AllOf) else "any"
        subs = tuple(compile_condition(c, ids) for c in (cond.all if isinstance(cond, AllOf) else
                                                cond.any))
        skey = (kind, tuple(s.nid for s in subs))
        return Tree(kind, subs, ids.setdefault(skey, len(ids)), any(s.hyst for s in subs),
                    any(s.neg for s in subs))
    if isinstance(cond, NotOf):
        sub = compile_condition(cond.not_, ids)
        return Tree("not", sub, ids.setdefault(("not", sub.nid), len(ids)), sub.hyst, True)
    raise TypeError(f"not a condition: {cond!r}")


def tree_leaves(tree: Tree) -> Iterable[Leaf]:
    """Every leaf of a condition, left to right."""
    kind, arg = tree.kind, tree.arg
    if kind == "leaf":
        yield arg
    elif kind == "not":
        yield from tree_leaves(arg)
    else:
        for sub in arg:
            yield from tree_leaves(sub)


@dataclass(slots=True)
class Step:
    """One ladder step: how long after the previous one it runs, its actions and their undo."""

    after: float
    actions: tuple[ActionSpec, ...]
    undo: tuple[ActionSpec, ...]


@dataclass(slots=True)
class CompiledRule:
    """A rule ready to evaluate: its trees, the metrics it reads, its ladder and its text."""

    rule: Rule
    runbook: str
    when: Tree
    resolve: Tree | None
    leaves: tuple[Leaf, ...]
    metrics: tuple[str, ...]
    steps: tuple[Step, ...]
    expr: str


def _spec(action: ap.ActionParams) -> ActionSpec:
    return ActionSpec(action)  # the validated model, typed


def compile_rule(lr: LoadedRule, ids: dict[Any, int]) -> CompiledRule:
    """Compile one loaded rule; ``ids`` interns condition subtrees across a rule set."""
    rule = lr.rule
    when = compile_condition(rule.when, ids)
    resolve = compile_condition(rule.resolve, ids) if rule.resolve is not None else None
    leaves = list(tree_leaves(when)) + (list(tree_leaves(resolve)) if resolve else [])
    metrics = sorted({lf.metric for lf in leaves} | {lf.divide_by for lf in leaves
                                                     if lf.divide_by})
    steps = [Step(0.0, tuple(map(_spec, rule.actions)), tuple(map(_spec, rule.undo)))]
    steps += [Step(s.after, tuple(map(_spec, s.actions)), tuple(map(_spec, s.undo)))
              for s in rule.escalate]
    return CompiledRule(rule, lr.runbook_url, when, resolve, tuple(leaves), tuple(metrics),
                        tuple(steps), describe(when, top=True))


def describe(tree: Tree, top: bool = False) -> str:
    """The condition as one readable line for reasons and logs (PromQL-like)."""
    kind, arg = tree.kind, tree.arg
    if kind == "leaf":
        text: str = arg.display
        return text
    if kind == "not":
        return f"not ({describe(arg, top=True)})"
    joined = f" {'and' if kind == 'all' else 'or'} ".join(describe(sub) for sub in arg)
    return joined if top or len(arg) == 1 else f"({joined})"


def render_action(spec: ActionSpec, fields: Mapping[str, object]) -> ActionSpec:
    """Fill event messages / annotation values from the observed fields (no code runs)."""
    p = spec.params
    if isinstance(p, ap.Event):
        return spec.with_params(message=render_template(p.message, dict(fields)))
    if isinstance(p, ap.Annotate):
        return spec.with_params(value=render_template(p.value, dict(fields)))
    return spec
