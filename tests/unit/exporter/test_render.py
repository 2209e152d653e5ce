"""The fast family renderer writes exactly what prometheus_client's own renderer would mean."""

from __future__ import annotations

import dataclasses
import gzip
import math
from collections.abc import Callable, Iterable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector as PromCollector
from prometheus_client.samples import Sample

from agent.exporter.render import FamilyRenderer, Renderer
from agent.structs.metrics import Family, MetricSpec


# The reference: the same families through prometheus_client's own generate_latest.
def to_prometheus(families: Iterable[Family]) -> Iterator[Metric]:
    """Convert our families to prometheus_client metrics (empty families are still declared)."""
    for fam in families:
        spec = fam.spec
        typ = "gauge" if spec.type == "info" else spec.type
        # prometheus_client appends _total to counter names in HELP/TYPE; samples keep full names.
        base = spec.name[: -len("_total")] if typ == "counter" else spec.name
        metric = Metric(base, spec.help, typ)
        names = spec.labelnames
        name = spec.name
        metric.samples = [
            Sample(name, dict(zip(names, values, strict=True)), value, None, None, None)
            for values, value in fam.samples
        ]
        yield metric


class FamilySource(PromCollector):
    """prometheus_client collector that yields whatever ``provider`` returns at render time."""

    def __init__(self, provider: Callable[[], Iterable[Family]]) -> None:
        self._provider = provider

    def collect(self) -> Iterable[Metric]:
        return to_prometheus(self._provider())

    def describe(self) -> Iterable[Metric]:
        return ()  # unchecked collector: names come and go with the snapshot



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


def test_the_kept_exposition_is_only_the_compressed_text() -> None:
    """Between ticks the agent holds the gzip bytes, not the text too; the text is the same."""
    rows = [(f"ns{i % 20}", f"pod-{i}", float(i)) for i in range(5000)]
    families = fams(rows, 1.0)
    reg = CollectorRegistry(auto_describe=False)
    exp = Renderer(reg, lambda: families).render()
    held = sum(len(v) for f in dataclasses.fields(exp)
               if isinstance(v := getattr(exp, f.name), bytes))
    text = gzip.decompress(exp.gzipped)
    assert held * 3 < len(text)
    assert exp.text == text
    assert parsed(text.decode()) == parsed(reference(families))


def test_a_family_served_again_reuses_its_member_and_a_new_one_is_rendered() -> None:
    """Under --cgroup.min-interval the cgroup collector serves the same Family objects for a
    few ticks: the body is then built from the last render's gzip member for them (no text
    work), and any new family object, even with the same name, is rendered afresh."""
    big = fams([(f"ns{i % 20}", f"pod-{i}", float(i)) for i in range(300)], 1.0)
    state = {"fams": big}
    reg = CollectorRegistry(auto_describe=False)
    r = Renderer(reg, lambda: state["fams"])
    first = r.render()
    calls: list[str] = []
    real = r._family_renderer.family

    def counting(fam: Family) -> str:
        calls.append(fam.spec.name)
        return real(fam)

    r._family_renderer.family = counting  # type: ignore[method-assign]
    again = r.render()
    assert SPEC.name not in calls  # the 300-sample family was re-used, not formatted
    assert again.text == first.text
    assert parsed(again.text.decode()) == parsed(reference(big))
    changed = fams([(f"ns{i % 20}", f"pod-{i}", float(i) + 0.5) for i in range(300)], 1.0)
    state["fams"] = changed
    third = r.render()
    assert SPEC.name in calls
    assert parsed(third.text.decode()) == parsed(reference(changed))
    # and the label cache survived the re-used render: the same strings, nothing rebuilt twice
    assert len(r._family_renderer._prefixes[SPEC.name]) == 300


def test_the_member_cache_lets_go_of_families_nobody_serves_any_more() -> None:
    """After a tick whose collectors built new families, the last render's are no longer held
    (the heap trim after the tick can free them); families still served stay cached."""
    kept = fams([(f"ns{i % 20}", f"pod-{i}", float(i)) for i in range(300)], 1.0)
    state = {"fams": fams([(f"ns{i % 20}", f"pod-{i}", float(i)) for i in range(300)], 1.0)}
    reg = CollectorRegistry(auto_describe=False)
    r = Renderer(reg, lambda: [*state["fams"], *kept[:1]])
    r.render()
    assert len(r._members) == 2
    state["fams"] = []  # the next tick's collectors returned new objects; the old are dropped
    r.invalidate()
    assert [v[0] for v in r._members.values()] == [kept[0]]


def test_values_are_spelled_as_the_text_format_spells_them() -> None:
    """Specials as NaN/+Inf/-Inf, everything else as Python's shortest repr (prometheus_client
    writes the same, except Go-style exponents from 1e16 up: 9007199254740992.0 here,
    9.007199254740992e+15 there, one number to every parser); and the same meaning as
    generate_latest's for every value."""
    values = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, 1e-300, 1e17, 0.1, 250, 2**53]
    rows = [("ns", f"p{i}", v) for i, v in enumerate(values)]
    families = fams(rows, math.nan)
    ours = FamilyRenderer().render(families)
    samples = [ln for ln in ours.splitlines() if not ln.startswith("#")]
    assert [ln.rsplit(" ", 1)[1] for ln in samples[:len(values)]] == [
        "NaN", "+Inf", "-Inf", "0.0", "-0.0", "1e+300", "1e-300", "1e+17", "0.1", "250.0",
        "9007199254740992.0"]
    nan_free = [("ns", f"p{i}", v) for i, v in enumerate(values) if not math.isnan(v)]
    assert parsed(FamilyRenderer().render(fams(nan_free, 1.0))) == parsed(
        reference(fams(nan_free, 1.0)))
