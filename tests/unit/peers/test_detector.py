"""Detector verdicts on a fake clock: every state, mass failure by count, % and zone."""

from __future__ import annotations

import pytest

from agent.peers.detector import (
    DetectorConfig,
    NodeView,
    Probe,
    assess,
    classify,
    exceeds,
    parse_limit,
)

NOW = 1_000.0
CFG = DetectorConfig(node_grace=40, probe_max_age=15, min_probers=2)


def stale(name: str = "n1", zone: str = "a", probes: tuple[Probe, ...] = ()) -> NodeView:
    return NodeView(name, zone, lease_renewed=NOW - 60, ready=True, probes=probes)


def fresh(name: str, zone: str = "a") -> NodeView:
    return NodeView(name, zone, lease_renewed=NOW - 5, ready=True)


def probe(prober: str, ok: bool, age: float = 1.0, last_ok: float | None = None) -> Probe:
    return Probe(prober, ok, NOW - age, last_ok)


def test_fresh_lease_and_ready_is_healthy() -> None:
    """A node renewing its lease and Ready is healthy."""
    assert classify(fresh("n1"), NOW, CFG).state == "healthy"


def test_lease_within_grace_is_still_healthy() -> None:
    """A lease 39 s old under a 40 s grace is not a failure yet."""
    v = NodeView("n1", lease_renewed=NOW - 39, ready=True)
    assert classify(v, NOW, CFG).state == "healthy"


def test_not_ready_with_fresh_lease_is_kubelet_down() -> None:
    """A kubelet that heartbeats but reports NotReady leaves the node to its own agent."""
    v = NodeView("n1", lease_renewed=NOW - 2, ready=False)
    verdict = classify(v, NOW, CFG)
    assert verdict.state == "kubelet_down"
    assert verdict.suspect


def test_stale_lease_reachable_from_all_probers_is_kubelet_down() -> None:
    """Kubelet silent but agent answering every prober: node alive, no cordon."""
    v = stale(probes=(probe("leader", True), probe("p2", True)))
    assert classify(v, NOW, CFG).state == "kubelet_down"


def test_stale_lease_unreachable_from_all_is_failed() -> None:
    """Kubelet silent and agent unreachable from every prober: failed."""
    v = stale(probes=(probe("leader", False), probe("p2", False), probe("p3", False)))
    verdict = classify(v, NOW, CFG)
    assert verdict.state == "failed"
    assert verdict.unreachable_by == ("leader", "p2", "p3")


def test_reachable_from_some_is_partitioned() -> None:
    """Reachable from one prober but not another: a partition, never a failure."""
    v = stale(probes=(probe("leader", False), probe("p2", True)))
    verdict = classify(v, NOW, CFG)
    assert verdict.state == "partitioned"
    assert verdict.reachable_by == ("p2",)


def test_too_few_probes_is_unknown() -> None:
    """One failed probe is not enough evidence when two probers are required."""
    v = stale(probes=(probe("leader", False),))
    assert classify(v, NOW, CFG).state == "unknown"


def test_old_probe_results_do_not_count() -> None:
    """Probe results older than probe_max_age are ignored: stale evidence is no evidence."""
    v = stale(probes=(probe("leader", False), probe("p2", False, age=30)))
    assert classify(v, NOW, CFG).state == "unknown"


def test_latest_result_per_prober_wins() -> None:
    """Two results from one prober count once, the newer one deciding."""
    v = stale(probes=(probe("p2", False, age=5), probe("p2", True, age=1), probe("leader", False)))
    assert classify(v, NOW, CFG).state == "partitioned"


def test_no_lease_no_ready_is_unknown() -> None:
    """A node with neither a lease nor a Ready condition is unknown."""
    assert classify(NodeView("n1"), NOW, CFG).state == "unknown"


def test_no_lease_but_ready_is_healthy() -> None:
    """Without a lease the Ready condition alone can still say healthy."""
    assert classify(NodeView("n1", ready=True), NOW, CFG).state == "healthy"


def test_last_seen_includes_successful_probes() -> None:
    """last_seen is the later of the lease renewal and any prober's last success."""
    v = stale(probes=(probe("leader", False, last_ok=NOW - 20), probe("p2", False)))
    assert classify(v, NOW, CFG).last_seen == NOW - 20


def six(failed: list[str]) -> list[NodeView]:
    dead = (probe("x", False), probe("y", False))
    out = []
    for i in range(6):
        name = f"n{i}"
        zone = "a" if i < 3 else "b"
        out.append(stale(name, zone, dead) if name in failed else fresh(name, zone))
    return out


def test_single_failure_is_actionable() -> None:
    """One failed node of six is acted on."""
    a = assess(six(["n0"]), NOW, CFG)
    assert not a.mass_failure
    assert a.actionable("n0")
    assert not a.actionable("n1")
    assert a.count("failed") == 1


def test_unknown_is_never_actionable() -> None:
    """A node in unknown state is never actionable."""
    a = assess([stale("n0", probes=(probe("x", False),)), fresh("n1")], NOW, CFG)
    assert a.verdicts["n0"].state == "unknown"
    assert not a.actionable("n0")


def test_partitioned_is_never_actionable() -> None:
    """A partitioned node is never actionable."""
    a = assess([stale("n0", probes=(probe("x", False), probe("y", True))), fresh("n1")], NOW, CFG)
    assert not a.actionable("n0")


def test_sixty_percent_failed_triggers_mass_failure() -> None:
    """4 of 6 nodes failed at once holds every action."""
    a = assess(six(["n0", "n1", "n3", "n4"]), NOW, CFG)
    assert a.mass_failure
    assert "4 of 6 nodes" in a.mass_reason
    assert not any(a.actionable(n) for n in ("n0", "n1", "n3", "n4"))


def test_mass_failure_by_count() -> None:
    """An absolute max-unhealthy of 1 is exceeded by 2 failed nodes."""
    cfg = DetectorConfig(min_probers=2, max_unhealthy="1", max_unhealthy_zone="100%")
    a = assess(six(["n0", "n3"]), NOW, cfg)
    assert a.mass_failure
    assert not assess(six(["n0"]), NOW, cfg).mass_failure


def test_mass_failure_per_zone() -> None:
    """Two of three nodes of one zone exceed a 50% zone limit though the cluster is under 40%."""
    a = assess(six(["n0", "n1"]), NOW, CFG)
    assert a.mass_failure
    assert "zone a" in a.mass_reason


def test_small_zones_are_not_judged_alone() -> None:
    """A zone with fewer than min_zone_size nodes does not trigger zone protection."""
    views = [stale("n0", "tiny", (probe("x", False), probe("y", False)))]
    views += [fresh(f"m{i}", "big") for i in range(5)]
    a = assess(views, NOW, CFG)
    assert not a.mass_failure
    assert a.actionable("n0")


def test_kubelet_down_nodes_count_towards_mass_failure() -> None:
    """NotReady nodes whose agents answer still count: a control-plane outage looks like this."""
    views = [NodeView(f"n{i}", lease_renewed=NOW - 1, ready=False) for i in range(3)]
    views += [fresh(f"h{i}") for i in range(2)]
    assert assess(views, NOW, CFG).mass_failure


@pytest.mark.parametrize(
    ("spec", "bad", "total", "want"),
    [("40%", 2, 5, False), ("40%", 3, 5, True), ("0", 1, 10, True), ("2", 2, 10, False)],
)
def test_exceeds_is_strictly_more_than(spec: str, bad: int, total: int, want: bool) -> None:
    """max-unhealthy means 'more than': exactly at the limit still acts."""
    assert exceeds(spec, bad, total) is want


@pytest.mark.parametrize("spec", ["abc", "-1", "120%", ""])
def test_bad_limits_are_rejected(spec: str) -> None:
    """A malformed limit raises ValueError instead of silently allowing everything."""
    with pytest.raises(ValueError):
        parse_limit(spec)
