"""Hypothesis fuzzing: no input crashes the loader or the engine; errors are always located."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rules_testkit import CATALOGUE, NODE, load, snapshot

from agent.rules.engine import RuleEngine
from agent.rules.loader import parse_rules_text

VALID = (Path(__file__).resolve().parents[2] / "fixtures" / "rules" / "valid"
         / "everything.yaml").read_text()
VALID_DATA = yaml.safe_load(VALID)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_outcome(text: str) -> None:
    rules, problems = parse_rules_text(text, "fuzz.yaml", CATALOGUE)
    for p in problems:
        assert p.line >= 1 and p.column >= 1 and p.field and p.message
        assert str(p).startswith("fuzz.yaml:")
    if not problems:
        assert all(lr.rule.name for lr in rules)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["2m", "0s", "-1m", "1h30m", "nodemedic_kubelet_up", "==",
                                     "cordon", "drain", "kubelet.service", "{value:.1f}",
                                     "{rule.__class__}", "nodemedic.io/x", "1e309"]))
trees = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
    max_leaves=20)


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_never_crashes(text: str) -> None:
    """Any text yields rules or located problems, never an exception."""
    check_outcome(text)


@FUZZ
@given(trees)
def test_arbitrary_yaml_structures_never_crash(tree: Any) -> None:
    """Any YAML structure (as a document or as the rules list) is handled."""
    check_outcome(yaml.safe_dump(tree))
    check_outcome(yaml.safe_dump({"rules": tree}))
    check_outcome(yaml.safe_dump({"rules": [tree]}))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(VALID_DATA)[1:]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["set", "delete", "add"]),
                          trees), min_size=1, max_size=4))
def test_mutated_valid_rules_never_crash(mutations: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    """Valid rules with values replaced, keys deleted or junk keys added: rules or errors."""
    data = copy.deepcopy(VALID_DATA)
    for path, how, value in mutations:
        parent: Any = data
        try:
            for comp in path[:-1]:
                parent = parent[comp]
            last = path[-1]
            if how == "set":
                parent[last] = value
            elif how == "delete":
                del parent[last]
            elif isinstance(parent, dict):
                parent[f"junk{len(parent)}"] = value
            else:
                parent.append(value)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier mutation removed or replaced this path
    check_outcome(yaml.safe_dump(data))


@FUZZ
@given(st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                          st.floats(0, 400)), max_size=30))
def test_engine_never_fires_on_missing_data(ticks: list[tuple[float, bool, float]]) -> None:
    """Random values, gaps and collector failures: no crash, no request on a no-data tick, and
    the exported state restores every tracked target."""
    eng = RuleEngine(load(VALID), NODE)
    t = 0.0
    for value, failed, step in ticks:
        t += step
        snap = snapshot(t, {"nodemedic_kubelet_up": value}, failed=["kubelet"] if failed else ())
        reqs = eng.evaluate(snap, t)
        if failed:
            assert [r for r in reqs if r.rule == "kubelet-unhealthy"] == []
    state = eng.export_state()
    again = RuleEngine(load(VALID), NODE)
    assert again.restore_state(json.loads(json.dumps(state, allow_nan=False))) == len(
        eng.status()) - sum(1 for s in eng.status() if s["state"] == "no data")
