"""The clock-skew arithmetic: NTP offset/delay, answers without timestamps, the majority."""

from __future__ import annotations

from agent.exporter.server import RECEIVE_HEADER, TRANSMIT_HEADER
from agent.peers.clockskew import Sample, choose_peers, majority_offset, parse_sample

S = 1_000_000_000


def test_offset_and_delay_of_a_peer_ahead() -> None:
    # Peer 5 s ahead; 10 ms each way; 2 ms spent in the responder.
    t1 = 100 * S
    t2 = t1 + S // 100 + 5 * S
    t3 = t2 + 2 * S // 1000
    t4 = t1 + 2 * S // 100 + 2 * S // 1000
    got = parse_sample(t1, t4, {RECEIVE_HEADER: str(t2), TRANSMIT_HEADER: str(t3)})
    assert got == Sample(t1, t2, t3, t4)
    assert abs(got.offset - 5.0) < 1e-9
    assert abs(got.delay - 0.02) < 1e-9


def test_asymmetric_path_error_is_within_half_the_delay() -> None:
    # 30 ms out, 1 ms back, clocks equal: the estimate is off, but by at most delay/2.
    t1, t2 = 0, 30 * S // 1000
    t3, t4 = t2, t2 + S // 1000
    got = Sample(t1, t2, t3, t4)
    assert abs(got.offset) <= got.delay / 2 + 1e-12
    assert got.offset > 0.01


def test_answers_without_usable_timestamps_give_no_sample() -> None:
    assert parse_sample(0, 10, {}) is None  # an old agent
    assert parse_sample(0, 10, {RECEIVE_HEADER: "x", TRANSMIT_HEADER: "1"}) is None
    assert parse_sample(0, 10, {RECEIVE_HEADER: "5", TRANSMIT_HEADER: "4"}) is None  # t3 < t2
    assert parse_sample(0, 10, {RECEIVE_HEADER: "0", TRANSMIT_HEADER: "50"}) is None  # delay < 0


def test_majority_outvotes_one_drifted_clock() -> None:
    assert majority_offset([0.001, -0.002]) == 0.0  # in sync with two peers
    assert majority_offset([-3.0, -3.0]) == 3.0  # both peers 3 s behind: we are 3 s ahead
    assert majority_offset([0.0, 3.0]) == 0.0  # one peer off: it is that peer, not us
    assert majority_offset([-3.0]) is None  # two clocks: no majority


def test_peer_choice_is_stable_and_spread() -> None:
    peers = [f"n{i}" for i in range(50)]
    a = choose_peers("n0", peers, 5)
    assert len(a) == 5 and "n0" not in a
    assert choose_peers("n0", list(reversed(peers)), 5) == a
    assert len(set(choose_peers("n0", [*peers, "n99"], 5)) & set(a)) >= 4  # one node joins
    assert choose_peers("n1", peers, 5) != a
