"""Hypothesis strategies that produce near-valid inputs for each fuzz target, and the budget.

Used by tests/stress/test_fuzz_parsers.py (short budget in CI) and bench/fuzz.py (long budget).
Random bytes rarely get past a JSON decoder or a line's first token, so each strategy mixes the
real capture's structure (its keys, its lines) with arbitrary values: mutated lines, swapped
types, truncation, and plain garbage.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from hypothesis import strategies as st
from stress_fuzz_targets import Target

from agent.settings import FLAGS

BUDGETS = {"short": 1, "long": 25}


def budget_factor() -> int:
    """NODEMEDIC_STRESS_BUDGET=short (CI, default) or long (bench): multiplies example counts."""
    return BUDGETS.get(os.environ.get("NODEMEDIC_STRESS_BUDGET", "short"), 1)


def _keys(doc: Any, out: set[str]) -> set[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(str(k))
            _keys(v, out)
    elif isinstance(doc, list):
        for v in doc[:20]:
            _keys(v, out)
    return out


def json_values(keys: list[str], *, wild_numbers: bool) -> st.SearchStrategy[Any]:
    """JSON trees whose object keys mostly come from the real document.

    ``wild_numbers`` adds what Go's encoder never emits but JSON allows (integers beyond 64 bits,
    1e999 -> inf, NaN); without it numbers stay in float/int64 range. (For the YAML config it
    allows values of any YAML type instead of strings.)
    """
    if wild_numbers:
        numbers: st.SearchStrategy[Any] = st.one_of(
            st.integers(), st.floats(), st.integers(min_value=10**300, max_value=10**400))
    else:
        numbers = st.one_of(st.integers(-(2**63), 2**63 - 1),
                            st.floats(allow_nan=False, allow_infinity=False))
    leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30),
                       st.sampled_from(keys))
    key = st.one_of(st.sampled_from(keys), st.text(max_size=10))
    return st.recursive(leaves, lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(key, kids, max_size=8)), max_leaves=40)


def _mutate_lines(lines: list[str]) -> st.SearchStrategy[str]:
    line = st.sampled_from(lines)

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        s = draw(line)
        if not s:
            return draw(st.text(max_size=40))
        i = draw(st.integers(0, len(s)))
        j = draw(st.integers(i, min(len(s), i + 12)))
        return s[:i] + draw(st.text(max_size=12)) + s[j:]

    return st.lists(st.one_of(line, mutated(), st.text(max_size=60)), max_size=40).map(
        "\n".join)


def for_target(t: Target, *, wild_numbers: bool = False) -> st.SearchStrategy[bytes]:
    """Bytes for ``t``: structured near-valid input most of the time, raw bytes sometimes."""
    raw = st.binary(max_size=400)
    seeds = t.seed_bytes()
    if t.kind == "json":
        keys: set[str] = set()
        for s in seeds:
            _keys(json.loads(s), keys)
        tree = json_values(sorted(keys) or ["items"], wild_numbers=wild_numbers)
        shaped = st.one_of(
            tree,
            st.fixed_dictionaries({"items": st.lists(tree, max_size=4)}),
            st.fixed_dictionaries({"node": tree, "pods": st.lists(tree, max_size=4)}),
            st.fixed_dictionaries({"items": st.lists(st.fixed_dictionaries(
                {"metadata": tree, "status": st.fixed_dictionaries(
                    {"containerStatuses": st.lists(tree, max_size=3)})}), max_size=3)}),
        )
        structured = shaped.map(lambda d: json.dumps(d).encode())
        truncated = st.tuples(st.sampled_from(seeds), st.integers(0, 10**6)).map(
            lambda p: p[0][: p[1] % (len(p[0]) + 1)]) if seeds else raw
        return st.one_of(structured, structured, truncated, raw)
    if t.kind == "yaml":
        names = [f.name for f in FLAGS] + ["collector.cgroup", "collector.nope"]
        words = st.one_of(st.text(max_size=20), st.sampled_from(
            ["10s", "-1s", "1e999", "0.0.0.0:99999", "::1:x", "/nonexistent", "true", "", "1h30m",
             "99999999999999999999", "nan", "-0"]))
        values: st.SearchStrategy[Any]
        if wild_numbers:  # any YAML type: null, lists, maps, floats (known crashes, see tests)
            scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), words)
            values = st.recursive(scalars, lambda kids: st.one_of(
                st.lists(kids, max_size=3),
                st.dictionaries(st.text(max_size=8), kids, max_size=3)), max_leaves=8)
        else:  # string values, as a flag or an environment variable would give them
            values = words
        docs = st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=12)),
                               values, max_size=6)
        dumped = st.one_of(docs.map(lambda d: yaml.safe_dump(d).encode()),
                           values.map(lambda v: yaml.safe_dump(v).encode()))
        # Raw bytes parse to null or numeric keys and non-string values: known crashes, xfail
        # tested, so only the wild (bench) variant gets them.
        return st.one_of(dumped, raw) if wild_numbers else dumped
    lines: list[str] = []
    for s in seeds:
        lines.extend(s.decode("utf-8", "replace").splitlines()[:400])
    if not lines:
        lines = ["pod0a1b2c3d-0000-4000-8000-000000000000", "kubepods-besteffort-pod1_2.slice",
                 "cri-containerd-abc123.scope", "docker-0123.scope", "crio-conmon-1.scope",
                 "IP Virtual Server version 1.2.1 (size=4096)",
                 "TCP  0A000001:0050 rr", "  -> 0A000002:0050      Masq    1      0          0"]
    return st.one_of(_mutate_lines(lines).map(lambda s: s.encode()), raw)
