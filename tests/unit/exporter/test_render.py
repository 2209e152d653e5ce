"""The fast family renderer writes exactly what prometheus_client's own renderer would mean."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.exporter.render import FamilyRenderer, FamilySource
from agent.structs.metrics import Family, MetricSpec

SPEC = MetricSpec("nodemedic_test_value_bytes", "A test.\nSecond line \\ here.", "gauge",
                  ("namespace", "pod"))
CTR = MetricSpec("nodemedic_test_events_total", "Events.", "counter", ("kind",))
PLAIN = MetricSpec("nodemedic_test_plain", "No labels.", "gauge")


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def fams(rows: list[tuple[str, str, float]], n: float) -> list[Family]:
    a, b, c = SPEC.family(), CTR.family(), PLAIN.family()
    for ns, pod, v in rows:
        a.add([ns, pod], v)
    b.add(["oom"], 3)
    c.add([], n)
    return [a, b, c]


def reference(families: list[Family]) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FamilySource(lambda: families))
    return generate_latest(reg).decode()


label = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
value = st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(label, label, value), max_size=8, unique_by=lambda r: (r[0], r[1])),
       value)
def test_same_samples_as_prometheus_client(rows: list[tuple[str, str, float]], n: float) -> None:
    """Any label text (quotes, backslashes, newlines, unicode) and any value parse back equal."""
    families = fams(rows, n)
    r = FamilyRenderer()
    ours = parsed(r.render(families))
    assert ours == parsed(reference(families))
    assert parsed(r.render(families)) == ours  # second render uses the label cache


def test_cache_forgets_vanished_series() -> None:
    """Series of a deleted pod are not rendered again and their cache entries are dropped."""
    r = FamilyRenderer()
    r.render(fams([("ns", "gone", 1.0), ("ns", "stays", 2.0)], 0))
    text = r.render(fams([("ns", "stays", 2.0)], 0))
    assert 'pod="gone"' not in text
    assert all(("ns", "gone") not in c for c in r._prefixes.values())
