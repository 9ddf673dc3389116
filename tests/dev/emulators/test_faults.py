"""Fault injection: every kind, by route name, consumed per use, over real sockets."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from skr_dev.emulators.faults import SEMANTIC_KINDS, TRANSPORT_KINDS, Fault, FaultKind, FaultSet
from skr_dev.emulators.server import EmulatorServer, create_emulator_app, json_response

BODY = {"token": "x" * 64, "value": 1}


async def _ok(request: web.Request) -> web.Response:
    return json_response(BODY)


@pytest.fixture
async def served() -> AsyncIterator[tuple[EmulatorServer, FaultSet]]:
    faults = FaultSet()
    app = create_emulator_app(faults=faults)
    app.router.add_get("/a", _ok, name="svc.a")
    app.router.add_get("/b", _ok, name="svc.b")
    app.router.add_get("/other", _ok, name="other.c")
    server = EmulatorServer("faults")
    await server.start(app, ssl_context=None)
    yield server, faults
    await server.stop()


def test_kinds_are_partitioned() -> None:
    assert set(FaultKind) == TRANSPORT_KINDS | SEMANTIC_KINDS
    assert not TRANSPORT_KINDS & SEMANTIC_KINDS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay": -0.1},
        {"delay": float("nan")},
        {"delay": 601},
        {"retry_after": -1},
        {"retry_after": 1.5},
        {"times": 0},
        {"times": True},
        {"endpoint": ""},
    ],
)
def test_fault_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(FaultKind.LATENCY, **kwargs)  # type: ignore[arg-type]


def test_fault_json_round_trip_and_errors() -> None:
    fault = Fault(FaultKind.RATE_LIMIT, "maa.*", delay=0.5, retry_after=3, times=2)
    assert Fault.from_json(json.loads(json.dumps(fault.to_json()))) == fault
    assert Fault.from_json({"kind": "ERROR_503"}).kind is FaultKind.ERROR_503
    for bad in ({}, {"kind": 3}, {"kind": "nope"}, {"kind": "hang", "extra": 1}, "hang"):
        with pytest.raises(ValueError):
            Fault.from_json(bad)


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(), st.text(max_size=8), st.floats())))
def test_fault_from_json_only_raises_value_error(data: dict[str, object]) -> None:
    try:
        Fault.from_json(data)
    except ValueError:
        pass


def test_take_matches_globs_and_consumes_uses() -> None:
    faults = FaultSet([Fault(FaultKind.ERROR_500, "maa.*", times=2), Fault(FaultKind.RATE_LIMIT, "*")])
    assert faults.take("keyvault.release", {FaultKind.ERROR_500}) is None
    assert faults.take("maa.attest", {FaultKind.ERROR_500}) is not None
    assert faults.active()[0].times == 1
    assert faults.take("maa.certs", {FaultKind.ERROR_500}) is not None
    assert faults.take("maa.attest", {FaultKind.ERROR_500}) is None
    # unlimited faults stay armed
    for _ in range(5):
        assert faults.take("anything", {FaultKind.RATE_LIMIT}) is not None
    faults.clear("*")
    assert not faults


def test_clear_by_endpoint_keeps_others() -> None:
    faults = FaultSet([Fault(FaultKind.HANG, "a"), Fault(FaultKind.HANG, "b")])
    faults.clear("a")
    assert [f.endpoint for f in faults.active()] == ["b"]
    faults.clear()
    assert faults.active() == ()


def test_take_is_thread_safe() -> None:
    faults = FaultSet([Fault(FaultKind.ERROR_503, "x", times=500)])
    taken: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        count = 0
        while faults.take("x", {FaultKind.ERROR_503}) is not None:
            count += 1
        with lock:
            taken.append(count)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 500


def test_fault_set_is_bounded() -> None:
    faults = FaultSet()
    for _ in range(256):
        faults.add(Fault(FaultKind.LATENCY))
    with pytest.raises(ValueError, match="at most"):
        faults.add(Fault(FaultKind.LATENCY))


async def _get(server: EmulatorServer, path: str, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session, session.get(server.url + path) as response:
        return response.status, dict(response.headers), await response.read()


async def test_rate_limit_sends_429_with_retry_after(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.RATE_LIMIT, "svc.a", retry_after=42, times=1))
    status, headers, body = await _get(server, "/a")
    assert (status, headers["Retry-After"]) == (429, "42")
    assert json.loads(body)["error"]["code"] == "429"
    assert (await _get(server, "/a"))[0] == 200


@pytest.mark.parametrize(("kind", "status"), [(FaultKind.ERROR_500, 500), (FaultKind.ERROR_503, 503)])
async def test_server_errors(served: tuple[EmulatorServer, FaultSet], kind: FaultKind, status: int) -> None:
    server, faults = served
    faults.add(Fault(kind, "svc.a", times=2))
    assert (await _get(server, "/a"))[0] == status
    assert (await _get(server, "/b"))[0] == 200  # another route is untouched
    assert (await _get(server, "/a"))[0] == status
    assert (await _get(server, "/a"))[0] == 200


async def test_glob_endpoint_matches_route_families(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.ERROR_500, "svc.*"))
    assert (await _get(server, "/a"))[0] == 500
    assert (await _get(server, "/b"))[0] == 500
    assert (await _get(server, "/other"))[0] == 200


async def test_latency_delays_the_response(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.LATENCY, "svc.a", delay=30.0, times=1))
    with pytest.raises(asyncio.TimeoutError):
        await _get(server, "/a", timeout=0.3)
    faults.add(Fault(FaultKind.LATENCY, "svc.a", delay=0.01, times=1))
    status, _, body = await _get(server, "/a")
    assert (status, json.loads(body)) == (200, BODY)  # latency alone does not change the answer
    assert not faults.active()


async def test_hang_until_the_client_gives_up(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.HANG, "svc.a", times=1))
    with pytest.raises(asyncio.TimeoutError):
        await _get(server, "/a", timeout=0.3)
    assert (await _get(server, "/a"))[0] == 200


async def test_bounded_hang_ends_with_504(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.HANG, "svc.a", delay=0.05, times=1))
    assert (await _get(server, "/a"))[0] == 504


async def test_stop_ends_a_hang() -> None:
    faults = FaultSet([Fault(FaultKind.HANG, "svc.a")])
    app = create_emulator_app(faults=faults)
    app.router.add_get("/a", _ok, name="svc.a")
    server = EmulatorServer("hang")
    await server.start(app, ssl_context=None)
    request = asyncio.create_task(_get(server, "/a", timeout=60))
    await asyncio.sleep(0.2)
    await server.stop()  # must return although a request is hanging
    try:
        status, _, _ = await request
    except aiohttp.ClientError:
        return  # the connection was closed by the shutdown: also fine
    assert status == 504  # the hang ended when the server stopped


async def test_malformed_json_is_not_json(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.MALFORMED_JSON, "svc.a", times=1))
    status, headers, body = await _get(server, "/a")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_truncated_body_breaks_the_content_length(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.TRUNCATED_BODY, "svc.a", times=1))
    async with aiohttp.ClientSession() as session, session.get(server.url + "/a") as response:
        assert int(response.headers["Content-Length"]) == len(json.dumps(BODY, separators=(",", ":")))
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert (await _get(server, "/a"))[0] == 200


async def test_semantic_kinds_are_left_to_the_emulators(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    for kind in SEMANTIC_KINDS:
        faults.add(Fault(kind, "svc.a", times=1))
    status, _, body = await _get(server, "/a")
    assert (status, json.loads(body)) == (200, BODY)
    assert {f.kind for f in faults.active()} == set(SEMANTIC_KINDS)  # still armed, not consumed


async def test_latency_combines_with_an_error(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.LATENCY, "svc.a", delay=0.01, times=1))
    faults.add(Fault(FaultKind.ERROR_503, "svc.a", times=1))
    assert (await _get(server, "/a"))[0] == 503
    assert not faults.active()


async def test_faults_are_recorded_with_their_status(served: tuple[EmulatorServer, FaultSet]) -> None:
    server, faults = served
    faults.add(Fault(FaultKind.RATE_LIMIT, "svc.a", times=1))
    await _get(server, "/a")
    await _get(server, "/a")
    assert [(r.route, r.status) for r in server.requests] == [("svc.a", 429), ("svc.a", 200)]
