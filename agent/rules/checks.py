"""Checks on validated rules that the schema alone cannot make: metric catalogue and targets.

:func:`semantic_problems` checks a validated rule against the metric catalogue (known metrics and
labels, counters for rate/increase, pod labels for ``target: pod``, equal labels for
``divide_by``) and its actions against its target (node-only and pod-only actions, undo lists
that only reverse or report). :func:`unknown_metrics` finds unknown names in a rule that failed
validation, so one run reports them with the schema errors. Each problem is (path, message).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from .catalogue import Catalogue, MetricInfo, unknown_metric
from .located import Path_
from .schema import NODE_ONLY, POD_ONLY, UNDO_ACTIONS, AllOf, AnyOf, MetricCondition, NotOf, Rule


def _walk_conditions(cond: BaseModel, path: Path_) -> Iterable[tuple[MetricCondition, Path_]]:
    if isinstance(cond, MetricCondition):
        yield cond, path
    elif isinstance(cond, AllOf):
        for i, c in enumerate(cond.all):
            yield from _walk_conditions(c, (*path, "all", i))
    elif isinstance(cond, AnyOf):
        for i, c in enumerate(cond.any):
            yield from _walk_conditions(c, (*path, "any", i))
    elif isinstance(cond, NotOf):
        yield from _walk_conditions(cond.not_, (*path, "not"))


def semantic_problems(rule: Rule, base: Path_, catalogue: Catalogue) -> list[tuple[Path_, str]]:
    """Checks that need the metric catalogue or span several fields."""
    out: list[tuple[Path_, str]] = []
    conds = [("when", rule.when)] + ([("resolve", rule.resolve)] if rule.resolve else [])
    for root, cond in conds:
        for leaf, p in _walk_conditions(cond, (*base, root)):
            infos: list[MetricInfo] = []
            for fld in ("metric", "divide_by"):
                name = getattr(leaf, fld)
                if name is None:
                    continue
                info = catalogue.get(name)
                if info is None:
                    out.append(((*p, fld), unknown_metric(name, catalogue)))
                    continue
                infos.append(info)
                if leaf.function != "value" and info.type not in (None, "counter"):
                    out.append(((*p, "function"),
                                f"{leaf.function} needs a counter, {name} is a {info.type}"))
                names = info.labelnames
                if names is None:
                    continue
                if fld == "metric":
                    for label in leaf.labels:
                        if label not in names:
                            known = ", ".join(names) or "no labels"
                            out.append(((*p, "labels", label),
                                        f"{name} has no label {label!r} (it has {known})"))
                if rule.target == "pod" and not {"namespace", "pod"} <= set(names):
                    out.append(((*p, fld), f"target pod needs namespace and pod labels; "
                                f"{name} has {', '.join(names) or 'none'}"))
            if (len(infos) == 2 and infos[0].labelnames is not None
                    and infos[1].labelnames is not None
                    and set(infos[0].labelnames) != set(infos[1].labelnames)):
                out.append(((*p, "divide_by"), "divide_by needs a metric with the same labels"))
    steps: list[tuple[Path_, list[Any], list[Any]]] = [
        ((*base,), list(rule.actions), list(rule.undo))]
    steps += [((*base, "escalate", i), list(s.actions), list(s.undo))
              for i, s in enumerate(rule.escalate)]
    for step_path, actions, undo in steps:
        for i, act in enumerate(actions):
            ap = (*step_path, "actions", i, "type")
            if rule.target == "pod" and act.type in NODE_ONLY:
                out.append((ap, f"{act.type} is not allowed in a pod-target rule: one pod "
                                "must never disrupt the whole node"))
            if rule.target == "node" and act.type in POD_ONLY:
                out.append((ap, f"{act.type} needs target: pod"))
            if rule.target == "node" and act.type == "annotate" and act.target != "node":
                out.append(((*step_path, "actions", i, "target"),
                            f"annotate target {act.target} needs a rule with target: pod"))
        for i, act in enumerate(undo):
            if act.type not in UNDO_ACTIONS:
                out.append(((*step_path, "undo", i, "type"),
                            f"undo may only use {', '.join(sorted(UNDO_ACTIONS))}"))
    return out


def unknown_metrics(raw: dict[str, Any], base: Path_,
                     catalogue: Catalogue) -> list[tuple[Path_, str]]:
    """Unknown metric names and label names in a rule that failed validation, so one run reports
    them with the schema errors instead of only after those are fixed."""
    out: list[tuple[Path_, str]] = []

    def walk(node: Any, path: Path_) -> None:
        if isinstance(node, dict):
            metric = node.get("metric")
            info = catalogue.get(metric) if isinstance(metric, str) else None
            labels = node.get("labels")
            if info is not None and info.labelnames is not None and isinstance(labels, dict):
                for label in labels:
                    if label not in info.labelnames:
                        known = ", ".join(info.labelnames) or "no labels"
                        out.append(((*path, "labels", label),
                                    f"{metric} has no label {label!r} (it has {known})"))
            for key, value in node.items():
                if key in ("metric", "divide_by") and isinstance(value, str):
                    if value not in catalogue:
                        out.append(((*path, key), unknown_metric(value, catalogue)))
                elif key != "labels":
                    walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))

    for root in ("when", "resolve"):
        walk(raw.get(root), (*base, root))
    return out
