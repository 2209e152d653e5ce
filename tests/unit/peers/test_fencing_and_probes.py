"""Fencing decisions, prober choice and heartbeat encoding, all pure."""

from __future__ import annotations

from agent.peers.detector import State, Verdict
from agent.peers.fencing import fencing_state
from agent.peers.heartbeat import decode_probes, encode_probes
from agent.peers.prober import ProbeResult
from agent.peers.stage import choose_probers


def failed(last_seen: float | None) -> Verdict:
    return Verdict("n1", "failed", "x", suspect=True, last_seen=last_seen)


def test_not_fenced_before_the_fencing_time() -> None:
    """Silence shorter than the fencing time is not enough."""
    fenced, why = fencing_state(failed(100.0), failed_since=140.0, now=200.0,
                                fencing_time=180.0, operator=False)
    assert not fenced
    assert "fencing time" in why


def test_fenced_after_the_fencing_time_of_silence() -> None:
    """No sign of life for the whole fencing time fences the node."""
    fenced, _ = fencing_state(failed(100.0), failed_since=140.0, now=321.0,
                              fencing_time=180.0, operator=False)
    assert fenced


def test_a_late_probe_success_restarts_the_clock() -> None:
    """A peer that reached the node recently keeps it unfenced."""
    fenced, _ = fencing_state(failed(300.0), failed_since=140.0, now=330.0,
                              fencing_time=180.0, operator=False)
    assert not fenced


def test_operator_confirmation_fences_at_once() -> None:
    """An operator/IPMI confirmation needs no waiting."""
    assert fencing_state(failed(100.0), 140.0, 141.0, 180.0, operator=True)[0]


def test_only_failed_nodes_are_ever_fenced() -> None:
    """Partitioned or unknown nodes are never fenced, operator hook or not."""
    states: tuple[State, ...] = ("partitioned", "unknown", "kubelet_down", "healthy")
    for state in states:
        v = Verdict("n1", state, "x")
        assert not fencing_state(v, 0.0, 1e6, 1.0, operator=True)[0]


def test_probers_spread_across_zones_and_are_stable() -> None:
    """Probers come from different zones first, and the choice does not change between calls."""
    zones = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "c1": "c"}
    chosen = choose_probers("t", zones, list(zones), 3)
    assert len(chosen) == 3
    assert {zones[c] for c in chosen} == {"a", "b", "c"}
    assert chosen == choose_probers("t", zones, list(reversed(zones)), 3)


def test_probe_annotation_round_trip_and_garbage() -> None:
    """Heartbeat probe results survive encoding; garbage decodes to no observations."""
    text = encode_probes(
        {"n2": ProbeResult(False, 1.0, 7, None), "n3": ProbeResult(True, 1.0, 2, 1.0)}
    )
    assert decode_probes(text) == {"n2": (False, 7), "n3": (True, 2)}
    assert decode_probes("{not json") == {}
    assert decode_probes('{"n2": "down", "n3": [1, 2, 3]}') == {}


def test_heartbeat_lease_names_stay_valid_for_long_node_names() -> None:
    """A 253-character node name still yields a valid, distinct Lease name."""
    from agent.peers.heartbeat import lease_name

    long_a, long_b = "a" * 253, "a" * 252 + "b"
    assert lease_name("node-1") == "nodemedic-node-1"
    assert len(lease_name(long_a)) <= 253
    assert lease_name(long_a) != lease_name(long_b)
