"""Shared helpers for the rules tests: a metric catalogue, snapshots and rule loading from text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from agent.rules.engine import RuleEngine
from agent.rules.loader import Catalogue, LoadedRule, catalogue_from_specs, parse_rules_text
from agent.structs.metrics import Family, MetricSpec
from agent.structs.snapshot import CollectorStatus, Snapshot

CG = ("namespace", "pod", "uid", "container", "qos")
SPECS = (
    MetricSpec("nodemedic_kubelet_up", "kubelet healthz", "gauge"),
    MetricSpec("nodemedic_node_condition", "conditions", "gauge", ("condition", "status")),
    MetricSpec("nodemedic_host_filesystem_avail_bytes", "avail", "gauge", ("path",)),
    MetricSpec("nodemedic_host_filesystem_size_bytes", "size", "gauge", ("path",)),
    MetricSpec("nodemedic_host_clock_synchronized", "sync", "gauge"),
    MetricSpec("nodemedic_host_clock_offset_seconds", "offset", "gauge"),
    MetricSpec("nodemedic_container_oom_kills_total", "oom", "counter", CG),
    MetricSpec("nodemedic_container_memory_working_set_bytes", "ws", "gauge", CG),
    MetricSpec("nodemedic_container_memory_limit_bytes", "limit", "gauge", CG),
    MetricSpec("nodemedic_container_cpu_cfs_periods_total", "periods", "counter", CG),
    MetricSpec("nodemedic_container_cpu_cfs_throttled_periods_total", "thr", "counter", CG),
)
SPEC = {s.name: s for s in SPECS}
CATALOGUE: Catalogue = catalogue_from_specs(SPECS)
# Which collector owns each metric (so a test can fail one collector).
OWNER = {s.name: s.name.split("_")[1] for s in SPECS}
NODE = "node-a"

Series = Iterable[tuple[Mapping[str, str], float]]


def snapshot(t: float, data: Mapping[str, Series | float], failed: Iterable[str] = ()) -> Snapshot:
    """A snapshot at time ``t``: ``data`` maps metric -> value (no labels) or (labels, value)s.

    Every metric of SPECS is owned by an enabled collector; ``failed`` names failed collectors
    (e.g. "kubelet"), whose families are absent as in the real pipeline.
    """
    bad = set(failed)
    fams: dict[str, Family] = {}
    for name, value in data.items():
        if OWNER[name] in bad:
            continue
        spec = SPEC[name]
        fam = spec.family()
        if isinstance(value, (int, float)):
            fam.add((), value)
        else:
            for labels, v in value:
                fam.add(tuple(labels.get(n, "") for n in spec.labelnames), v)
        fams[name] = fam
    collectors = {c: CollectorStatus(c, c not in bad, 0.01, "boom" if c in bad else None)
                  for c in set(OWNER.values())}
    return Snapshot(taken_at=t, monotonic=t, families=MappingProxyType(fams),
                    collectors=MappingProxyType(collectors), owners=MappingProxyType(OWNER))


def load(text: str, catalogue: Catalogue = CATALOGUE) -> list[LoadedRule]:
    """Parse rule YAML, failing the test on any problem."""
    rules, problems = parse_rules_text(text, "test.yaml", catalogue)
    assert not problems, [str(p) for p in problems]
    return rules


def engine(text: str) -> RuleEngine:
    return RuleEngine(load(text), NODE)


def pod(ns: str, name: str, container: str = "app") -> dict[str, str]:
    return {"namespace": ns, "pod": name, "uid": f"uid-{name}", "container": container,
            "qos": "Burstable"}
