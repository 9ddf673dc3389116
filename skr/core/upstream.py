"""Talking to remote services: bounded reads, deadlines, and retries with jittered backoff.

This module only moves bytes. Every call has a deadline; a retry never sleeps past it. Transient
answers (408, 429, 5xx, a dropped connection, a truncated body) are retried with full-jitter
exponential backoff, honouring ``Retry-After`` exactly when the service sends one (giving up rather
than sleeping past the deadline; see :mod:`skr.primitives.retry`). Failures become the
typed errors of :mod:`skr.errors`: ``upstream_timeout`` when the deadline passes,
``upstream_unavailable`` when the service stayed unavailable, ``invalid_upstream_response`` when it
answered with something unusable.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp

from skr import __version__
from skr.errors import (
    InvalidUpstreamResponseError,
    SkrError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from skr.primitives.retry import Backoff, RetrySchedule

__all__ = [
    "USER_AGENT",
    "HttpResponse",
    "RetryPolicy",
    "Upstream",
    "parse_retry_after",
]

_logger = logging.getLogger(__name__)

USER_AGENT: Final = f"skr/{__version__} (confidential-containers secure key release)"
RETRYABLE_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_MAX_BODY: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts in total, backoff bounds, and the overall deadline per call."""

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 5.0  # caps our own jittered waits only; a server's Retry-After is never shortened
    timeout: float = 10.0  # the whole call, retries included
    attempt_timeout: float | None = None  # one attempt; defaults to the remaining deadline

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout <= 0 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("invalid retry policy")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete, size-bounded response."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


Sleep = Callable[[float], Awaitable[None]]


class Upstream:
    """One named remote service reached through a shared :class:`aiohttp.ClientSession`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        service: str,
        *,
        retry: RetryPolicy | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_attempt: Callable[[str, int | None, float], None] | None = None,
    ) -> None:
        self._session = session
        self.service = service
        self.retry = retry or RetryPolicy()
        self._max_body = max_body
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._on_attempt = on_attempt

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        expected: frozenset[int] = frozenset({200}),
        retry: RetryPolicy | None = None,
    ) -> HttpResponse:
        """Send with retries; return the first response whose status is in ``expected``.

        A non-retryable status outside ``expected`` is returned as is, so the caller can turn the
        service's own error into the right typed error.
        """
        policy = retry or self.retry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.timeout
        all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        last_error: SkrError | None = None
        schedule = RetrySchedule(
            Backoff(policy.base_delay, policy.max_delay),
            clock=loop.time,
            deadline=deadline,
            attempts=policy.attempts,
            rng=self._rng,
        )
        began = loop.time()
        made = 0
        for attempt in range(1, policy.attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            per_attempt = min(remaining, policy.attempt_timeout or remaining)
            started = loop.time()
            made = attempt
            delay_hint: float | None = None
            try:
                response = await asyncio.wait_for(
                    self._send(method, url, json_body=json_body, data=data, headers=all_headers), per_attempt
                )
            except TimeoutError:
                last_error = UpstreamTimeoutError(
                    f"{self.service} did not answer within {per_attempt:.1f} s", service=self.service
                )
                self._record(None, started)
            except aiohttp.ClientPayloadError:
                last_error = InvalidUpstreamResponseError(
                    f"{self.service} sent a truncated or malformed body", service=self.service
                )
                self._record(None, started)
            except (aiohttp.ClientError, OSError) as exc:
                last_error = UpstreamUnavailableError(
                    f"{self.service} is unreachable ({type(exc).__name__})", service=self.service
                )
                self._record(None, started)
            else:
                self._record(response.status, started)
                if response.status in expected or response.status not in RETRYABLE_STATUSES:
                    return response
                last_error = UpstreamUnavailableError(
                    f"{self.service} answered HTTP {response.status}", service=self.service, status=response.status
                )
                delay_hint = parse_retry_after(response.headers.get("Retry-After"))
            delay = schedule.next_delay(delay_hint)
            if delay is None:
                _logger.debug("%s: no attempts or time left after attempt %d", self.service, attempt)
                break
            _logger.debug("%s: attempt %d failed (%s); retrying in %.2f s", self.service, attempt, last_error, delay)
            await self._sleep(delay)
        if last_error is None:
            raise UpstreamTimeoutError(
                f"{self.service} did not answer within {policy.timeout:.1f} s", service=self.service
            )
        if isinstance(last_error, UpstreamUnavailableError | UpstreamTimeoutError) and made > 1:
            # Say that skr already retried, so an operator does not add a retry loop around it.
            raise type(last_error)(
                f"{last_error.message} (after {made} attempts over {loop.time() - began:.1f} s)",
                service=self.service,
                status=last_error.status,
            )
        raise last_error

    def _record(self, status: int | None, started: float) -> None:
        if self._on_attempt is not None:
            self._on_attempt(self.service, status, asyncio.get_running_loop().time() - started)

    async def _send(
        self, method: str, url: str, *, json_body: Any, data: bytes | None, headers: Mapping[str, str]
    ) -> HttpResponse:
        async with self._session.request(method, url, json=json_body, data=data, headers=headers) as response:
            declared = response.content_length
            if declared is not None and declared > self._max_body:
                raise_too_large(self.service, self._max_body)
            body = bytearray()
            while chunk := await response.content.read(64 * 1024):
                body += chunk
                if len(body) > self._max_body:
                    raise_too_large(self.service, self._max_body)
            return HttpResponse(response.status, dict(response.headers), bytes(body))


def raise_too_large(service: str, limit: int) -> None:
    """Refuse an answer larger than any legitimate one."""
    raise InvalidUpstreamResponseError(f"{service} sent more than {limit} bytes", service=service)
