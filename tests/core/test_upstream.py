"""Retries, deadlines and bounds against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from skr.core.upstream import USER_AGENT, RetryPolicy, Upstream, parse_retry_after
from skr.errors import InvalidUpstreamResponseError, UpstreamTimeoutError, UpstreamUnavailableError


class Script:
    """Answers each request with the next scripted behaviour; counts calls."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.calls = 0
        self.user_agents: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.user_agents.append(request.headers.get("User-Agent", ""))
        step = self.steps.pop(0) if self.steps else "ok"
        if step == "ok":
            return web.json_response({"ok": True})
        if step.startswith("status:"):
            _, status, *retry = step.split(":")
            headers = {"Retry-After": retry[0]} if retry else {}
            return web.json_response({"error": "x"}, status=int(status), headers=headers)
        if step == "hang":
            await asyncio.sleep(30)
        if step == "big":
            return web.Response(body=b"x" * 5000)
        if step == "truncated":
            response = web.StreamResponse(headers={"Content-Length": "1000"})
            await response.prepare(request)
            await response.write(b'{"partial": ')
            assert request.transport is not None
            request.transport.close()
            return response
        raise AssertionError(step)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Script, str, aiohttp.ClientSession]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield script, str(server.make_url("/x")), session
    await server.close()


async def _no_sleep(_: float) -> None:
    return None


async def test_success_sends_user_agent(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    response = await Upstream(session, "svc").request("GET", url)
    assert response.status == 200 and response.body == b'{"ok": true}'
    assert script.user_agents == [USER_AGENT]


async def test_retry_after_is_honoured_then_success(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    script.steps = ["status:429:2", "status:503", "ok"]
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    response = await Upstream(session, "svc", sleep=record, retry=RetryPolicy(attempts=3, base_delay=0.1)).request(
        "GET", url
    )
    assert response.status == 200 and script.calls == 3
    assert slept[0] == 2.0 and 0 <= slept[1] <= 0.2


async def test_persistent_5xx_is_upstream_unavailable(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    script.steps = ["status:500"] * 5
    with pytest.raises(UpstreamUnavailableError, match="HTTP 500") as info:
        await Upstream(session, "maa", sleep=_no_sleep).request("GET", url)
    assert info.value.status == 500 and script.calls == 3
    assert re.search(r"HTTP 500 \(after 3 attempts over \d+\.\d s\)$", info.value.message), info.value.message


async def test_non_retryable_status_is_returned_once(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    script.steps = ["status:403"]
    response = await Upstream(session, "kv", sleep=_no_sleep).request("GET", url)
    assert response.status == 403 and script.calls == 1


async def test_hang_ends_at_the_deadline(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    script.steps = ["hang"] * 5
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await Upstream(session, "maa", retry=RetryPolicy(attempts=5, timeout=0.5, base_delay=0.01)).request("GET", url)
    assert loop.time() - started < 2.0  # bounded by the 0.5 s deadline, not by 5 hangs


async def test_retry_after_longer_than_the_deadline_is_not_waited(
    served: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    script, url, session = served
    script.steps = ["status:429:60"]
    with pytest.raises(UpstreamUnavailableError, match="429"):
        await Upstream(session, "kds", retry=RetryPolicy(attempts=3, timeout=1.0)).request("GET", url)
    assert script.calls == 1


async def test_retry_after_beyond_the_jitter_cap_is_waited_in_full(
    served: tuple[Script, str, aiohttp.ClientSession],
) -> None:
    # Before the shared retry helper, Retry-After was capped at max_delay (5 s), so the service was
    # asked again after 5 s although it had said 8. The wait is recorded, not slept.
    script, url, session = served
    script.steps = ["status:503:8", "ok"]
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    policy = RetryPolicy(attempts=3, timeout=30.0, max_delay=5.0)
    response = await Upstream(session, "maa", sleep=record, retry=policy).request("GET", url)
    assert response.status == 200 and script.calls == 2
    assert slept == [8.0]


async def test_oversized_body_is_refused(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    script.steps = ["big"]
    with pytest.raises(InvalidUpstreamResponseError, match="more than 1000 bytes"):
        await Upstream(session, "svc", max_body=1000).request("GET", url)


async def test_truncated_body_is_retried_then_reported(served: tuple[Script, str, aiohttp.ClientSession]) -> None:
    script, url, session = served
    script.steps = ["truncated", "ok"]
    response = await Upstream(session, "svc", sleep=_no_sleep).request("GET", url)
    assert response.status == 200 and script.calls == 2
    script.steps = ["truncated"] * 3
    with pytest.raises(InvalidUpstreamResponseError, match="truncated"):
        await Upstream(session, "svc", sleep=_no_sleep).request("GET", url)


async def test_connection_refused_is_unavailable() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamUnavailableError, match=r"unreachable .*\(after 3 attempts over"):
            await Upstream(session, "imds", sleep=_no_sleep).request("GET", "http://127.0.0.1:9/")


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
