"""rules/lbskew.yaml loads against the collector's metrics and fires only on a skewed Service."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import MappingProxyType

from helpers_lbskew import ct_line, fixture

from agent.collectors.base import CollectorContext
from agent.collectors.lbskew import LbSkewCollector
from agent.rules.engine import RuleEngine
from agent.rules.loader import catalogue_from_specs, parse_rules_text
from agent.settings import settings_for_tests
from agent.structs.metrics import Family
from agent.structs.snapshot import CollectorStatus, Snapshot

RULES = Path(__file__).resolve().parents[3] / "rules" / "lbskew.yaml"
PINNED = "".join(ct_line("10.96.45.10", "10.244.1.7", sport=40000 + i) for i in range(60))


async def _families(tmp_path: Path, conntrack_text: str | None) -> list[Family]:
    net = tmp_path / "net"
    net.mkdir(exist_ok=True)
    if conntrack_text is None:
        shutil.copy(fixture("lab_kubeproxy_like_proc_net_nf_conntrack.txt"), net / "nf_conntrack")
    else:
        (net / "nf_conntrack").write_text(conntrack_text)
    settings = settings_for_tests(
        path_procfs=tmp_path,
        lbskew_iptables_save_file=fixture("lab_kubeproxy_like_iptables_save_nat.txt"),
    )
    return await LbSkewCollector(CollectorContext(settings)).collect()


def _snapshot(t: float, fams: list[Family]) -> Snapshot:
    owners = {s.name: "lbskew" for s in LbSkewCollector.metrics}
    return Snapshot(
        taken_at=t, monotonic=t,
        families=MappingProxyType({f.name: f for f in fams}),
        collectors=MappingProxyType({"lbskew": CollectorStatus("lbskew", True, 0.01)}),
        owners=MappingProxyType(owners),
    )


def _fired(fams: list[Family]) -> list[str]:
    rules, problems = parse_rules_text(
        RULES.read_text(), str(RULES), catalogue_from_specs(LbSkewCollector.metrics)
    )
    assert not problems, [str(p) for p in problems]
    engine = RuleEngine(rules, "node-a")
    reasons = []
    for minute in range(0, 20):
        for req in engine.evaluate(_snapshot(minute * 60.0, fams), minute * 60.0):
            reasons.append(str(getattr(req.action.params, "reason", None)))
    return reasons


async def test_pinned_service_raises_the_skew_event(tmp_path: Path) -> None:
    """All 60 connections on one of three endpoints for 15m: one ServiceLoadSkewed Event."""
    assert _fired(await _families(tmp_path, PINNED)) == ["ServiceLoadSkewed"]


async def test_lab_traffic_raises_nothing(tmp_path: Path) -> None:
    """The lab's 19/8/13 spread is not significant: no Event."""
    assert _fired(await _families(tmp_path, None)) == []
