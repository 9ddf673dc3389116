"""One backoff rule for every retry loop: full jitter, ``Retry-After`` as a floor, a hard deadline.

Why one place: the loops that retried remote calls each had their own arithmetic, and one of them
capped a server's ``Retry-After`` at a few seconds, so it came back *earlier* than the server asked
and was throttled again. Here the rule is written once:

* with no hint from the server, wait a uniformly random time in ``[0, min(cap, base * 2**(n-1))]``
  ("full jitter", so many clients that failed together do not retry together);
* with a ``Retry-After`` hint, wait exactly that long — never less, whatever the cap;
* if the wait would end at or after the caller's deadline, do not wait at all: give up, so the
  caller raises its last error instead of sleeping into a timeout.

The schedule only computes; the caller sleeps (sync or async) and owns the clock, so tests drive it
with a fake clock and no real time passes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "RetrySchedule"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff bounds: the n-th wait is drawn from ``[0, min(cap, base*2**(n-1))]``."""

    base: float
    cap: float

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < self.base:
            raise ValueError("invalid backoff bounds")

    def ceiling(self, attempt: int) -> float:
        """Largest wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        # Cap the exponent so a long-running loop cannot overflow the float.
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 62))

    def jittered(self, attempt: int, rng: random.Random) -> float:
        """A random wait in ``[0, ceiling(attempt)]``."""
        return rng.uniform(0.0, self.ceiling(attempt))


@dataclass(slots=True)
class RetrySchedule:
    """Decides, after each failure, how long to wait before the next attempt or that there is none.

    ``deadline`` is an absolute time on ``clock`` (``None``: no deadline, for loops bounded only by
    ``attempts`` or by cancellation). ``attempts`` is the total number of attempts allowed
    (``None``: unbounded).
    """

    backoff: Backoff
    clock: Callable[[], float]
    deadline: float | None = None
    attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random)  # jitter, not cryptography
    failures: int = 0

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("at least one attempt is needed")

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or ``None`` without a deadline."""
        return None if self.deadline is None else self.deadline - self.clock()

    def reset(self) -> None:
        """Start the backoff (and the attempt count) over after a success; the deadline is kept."""
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Record one failed attempt; return the wait before the next one, or ``None`` to give up.

        ``retry_after`` is the server's requested wait in seconds; it is honoured exactly (never
        shortened by the cap). Giving up happens when the attempts are used up or when the wait
        would reach the deadline — a retry that cannot start before the deadline is pointless.
        """
        self.failures += 1
        if self.attempts is not None and self.failures >= self.attempts:
            return None
        if retry_after is not None and retry_after < 0:
            raise ValueError("Retry-After cannot be negative")
        wait = retry_after if retry_after is not None else self.backoff.jittered(self.failures, self.rng)
        remaining = self.remaining()
        if remaining is not None and wait >= remaining:
            return None
        return wait
