"""agent.backoff: doubling up to the cap, reset, jitter bounds, rejected nonsense."""

from __future__ import annotations

import pytest

from agent.backoff import Backoff, delay_for


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(1.0, 30.0)
    assert [b.next() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    b.reset()
    assert b.current == 1.0 and b.next() == 1.0 and b.current == 2.0


def test_jitter_scales_each_delay_within_its_bounds() -> None:
    lo = Backoff(0.2, 10.0, jitter=0.5, rand=lambda: 0.0)
    hi = Backoff(0.2, 10.0, jitter=0.5, rand=lambda: 0.999999)
    assert [round(lo.next(), 6) for _ in range(3)] == [0.1, 0.2, 0.4]
    assert [round(hi.next(), 4) for _ in range(3)] == [0.3, 0.6, 1.2]
    real = Backoff(1.0, 1.0, jitter=0.5)
    assert all(0.5 <= real.next() < 1.5 for _ in range(1000))


@pytest.mark.parametrize("args", [(0.0, 1.0), (2.0, 1.0), (1.0, 2.0, 0.5), (1.0, 2.0, 2.0, 1.5)])
def test_nonsense_is_refused(args: tuple[float, ...]) -> None:
    initial, maximum, *rest = args
    factor = rest[0] if rest else 2.0
    jitter = rest[1] if len(rest) > 1 else 0.0
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(initial, maximum, factor=factor, jitter=jitter)


def test_delay_for_counts_attempts_on_the_same_schedule() -> None:
    b = Backoff(5.0, 120.0)
    assert [delay_for(n, 5.0, 120.0) for n in range(1, 9)] == [b.next() for _ in range(8)]
    assert delay_for(10**6, 1.0, 32.0) == 32.0  # no overflow
    assert delay_for(0, 1.0, 32.0) == 1.0
