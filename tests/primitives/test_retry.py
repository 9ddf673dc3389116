"""The shared backoff rule, driven by a fake clock: no real time passes in these tests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skr.primitives.retry import Backoff, RetrySchedule


class FakeClock:
    """A clock the test moves by hand, standing in for ``loop.time``/``time.monotonic``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _schedule(clock: FakeClock, *, timeout: float | None, attempts: int | None = None) -> RetrySchedule:
    deadline = None if timeout is None else clock() + timeout
    return RetrySchedule(Backoff(0.2, 5.0), clock=clock, deadline=deadline, attempts=attempts, rng=random.Random(7))


def test_retry_after_of_eight_seconds_is_honoured_beyond_the_cap() -> None:
    clock = FakeClock()
    schedule = _schedule(clock, timeout=30.0)
    assert schedule.next_delay(retry_after=8.0) == 8.0  # not min(8, cap=5)
    clock.now += 8.0
    assert schedule.next_delay(retry_after=8.0) == 8.0  # 14 s left: still fits


def test_a_wait_reaching_the_deadline_gives_up() -> None:
    clock = FakeClock()
    schedule = _schedule(clock, timeout=10.0)
    clock.now += 3.0  # the attempt itself took 3 s: 7 s left
    assert schedule.next_delay(retry_after=8.0) is None
    clock.now += 6.5  # 0.5 s left: a 1 s wait cannot start a retry in time, a 0.2 s one can
    assert schedule.next_delay(retry_after=1.0) is None
    assert schedule.next_delay(retry_after=0.2) == 0.2


def test_exactly_at_the_deadline_is_too_late() -> None:
    clock = FakeClock()
    schedule = _schedule(clock, timeout=8.0)
    assert schedule.next_delay(retry_after=8.0) is None


def test_attempts_are_counted_in_total() -> None:
    schedule = _schedule(FakeClock(), timeout=None, attempts=3)
    assert schedule.next_delay() is not None
    assert schedule.next_delay() is not None
    assert schedule.next_delay() is None  # third failure: no fourth attempt


def test_reset_starts_the_backoff_over_but_keeps_the_deadline() -> None:
    clock = FakeClock()
    schedule = _schedule(clock, timeout=10.0, attempts=2)
    assert schedule.next_delay() is not None
    assert schedule.next_delay() is None
    schedule.reset()
    assert schedule.next_delay() is not None  # attempts counted afresh
    clock.now += 10.0
    schedule.reset()
    assert schedule.next_delay() is None  # but the deadline has passed


def test_unbounded_schedule_keeps_going_within_the_cap() -> None:
    schedule = _schedule(FakeClock(), timeout=None)
    delays = [schedule.next_delay() for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 5.0 for d in delays)


@given(base=st.floats(0.0, 10.0), extra=st.floats(0.0, 100.0), attempt=st.integers(1, 10_000), seed=st.integers())
def test_jitter_is_bounded_by_the_exponential_ceiling(base: float, extra: float, attempt: int, seed: int) -> None:
    backoff = Backoff(base, base + extra)
    wait = backoff.jittered(attempt, random.Random(seed))
    assert 0.0 <= wait <= min(backoff.cap, base * 2 ** min(attempt - 1, 62))


def test_jitter_spreads_over_the_whole_range() -> None:
    # Full jitter, not "equal jitter": waits near zero and near the ceiling both occur.
    rng = random.Random(1)
    waits = [Backoff(1.0, 1.0).jittered(1, rng) for _ in range(500)]
    assert min(waits) < 0.1 and max(waits) > 0.9


@pytest.mark.parametrize("bad", [{"base": -1.0, "cap": 1.0}, {"base": 2.0, "cap": 1.0}])
def test_invalid_bounds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**bad)


def test_negative_retry_after_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        _schedule(FakeClock(), timeout=None).next_delay(retry_after=-1.0)
