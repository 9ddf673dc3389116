"""EmulatorServer: loopback only, request recording with redaction, the shared admin routes."""

from __future__ import annotations

import json
import socket

import aiohttp
import pytest
from aiohttp import web

from skr_dev.emulators.faults import Fault, FaultKind, FaultSet, faults_middleware
from skr_dev.emulators.server import FAULTS_KEY, EmulatorServer, create_emulator_app, ensure_loopback, json_response
from skr_dev.emulators.tls import TestCertificateAuthority


async def _echo(request: web.Request) -> web.Response:
    return json_response({"path": request.path})


def _app(faults: FaultSet | None = None) -> web.Application:
    app = create_emulator_app(faults=faults)
    app.router.add_get("/echo", _echo, name="test.echo")
    return app


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com", "localhost", ""])
async def test_non_loopback_hosts_are_refused(host: str) -> None:
    server = EmulatorServer()
    with pytest.raises(ValueError, match="loopback"):
        await server.start(_app(), ssl_context=None, host=host)
    assert not server.running


def test_ensure_loopback_accepts_loopback_literals() -> None:
    assert ensure_loopback("127.0.0.1") == "127.0.0.1"
    assert ensure_loopback("127.0.0.2") == "127.0.0.2"
    assert ensure_loopback("::1") == "::1"


async def test_serves_plain_http_and_records_requests_with_redaction() -> None:
    server = EmulatorServer("plain")
    await server.start(_app(), ssl_context=None)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                server.url + "/echo?x=1",
                headers={"Authorization": "Bearer secret-token-value", "X-Custom": "visible"},
            ) as response,
        ):
            assert response.status == 200
            assert await response.json() == {"path": "/echo"}
        (record,) = server.requests
        assert (record.method, record.path, record.query, record.route, record.status) == (
            "GET",
            "/echo",
            "x=1",
            "test.echo",
            200,
        )
        assert record.headers["Authorization"] == "Bearer <redacted>"
        assert record.headers["x-custom"] == "visible"
        assert "secret-token-value" not in repr(record)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/_emulator/requests") as response:
                listed = await response.json()
            assert [r["path"] for r in listed["requests"]] == ["/echo"]
            assert "secret-token-value" not in json.dumps(listed)
            async with session.delete(server.url + "/_emulator/requests") as response:
                assert response.status == 200
        assert server.requests == []  # admin calls themselves are not recorded
    finally:
        await server.stop()


async def test_https_url_and_double_start(emulator_ca: TestCertificateAuthority) -> None:
    server = EmulatorServer("tls")
    await server.start(_app(), ssl_context=emulator_ca.server_ssl_context())
    try:
        assert server.url.startswith("https://127.0.0.1:")
        with pytest.raises(RuntimeError, match="already running"):
            await server.start(_app(), ssl_context=None)
    finally:
        await server.stop()
    await server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = EmulatorServer("v6")
    try:
        await server.start(_app(), ssl_context=None, host="::1")
    except OSError:
        pytest.skip("::1 is not configured here")
    try:
        assert server.url == f"http://[::1]:{server.port}"
        async with aiohttp.ClientSession() as session, session.get(server.url + "/echo") as response:
            assert response.status == 200
    finally:
        await server.stop()


async def test_admin_fault_routes_arm_list_and_clear() -> None:
    faults = FaultSet()
    server = EmulatorServer("admin")
    await server.start(_app(faults), ssl_context=None)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"faults": [{"kind": "error_503", "endpoint": "test.echo", "times": 1, "retry_after": 7}]}
            async with session.post(server.url + "/_emulator/faults", json=body) as response:
                assert response.status == 201
                assert (await response.json())["faults"][0]["kind"] == "error_503"
            assert faults.active() == (Fault(FaultKind.ERROR_503, "test.echo", retry_after=7, times=1),)
            async with session.get(server.url + "/echo") as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "7"
            async with session.get(server.url + "/echo") as response:
                assert response.status == 200
            async with session.post(server.url + "/_emulator/faults", json={"kind": "rate_limit"}) as response:
                assert response.status == 201
            async with session.get(server.url + "/_emulator/faults") as response:
                assert [f["kind"] for f in (await response.json())["faults"]] == ["rate_limit"]
            async with session.delete(server.url + "/_emulator/faults?endpoint=*") as response:
                assert (await response.json()) == {"faults": []}
            for bad in ({"kind": "explode"}, {"kind": "latency", "delay": -1}, {"kind": "hang", "bogus": 1}, [1]):
                async with session.post(server.url + "/_emulator/faults", json=bad) as response:
                    assert response.status == 400
                    assert "error" in await response.json()
            async with session.post(server.url + "/_emulator/faults", data=b"not json") as response:
                assert response.status == 400
        assert not faults
    finally:
        await server.stop()


async def test_apps_without_faults_get_a_fault_set_installed() -> None:
    app = web.Application()
    app.router.add_get("/echo", _echo, name="test.echo")
    server = EmulatorServer("bare")
    await server.start(app, ssl_context=None)
    try:
        assert server.faults is not None
        assert app[FAULTS_KEY] is server.faults
        server.faults.add(Fault(FaultKind.ERROR_500, "test.echo", times=1))
        async with aiohttp.ClientSession() as session, session.get(server.url + "/echo") as response:
            assert response.status == 500
    finally:
        await server.stop()


async def test_existing_faults_middleware_is_reused() -> None:
    faults = FaultSet()
    app = web.Application(middlewares=[faults_middleware(faults)])
    app.router.add_get("/echo", _echo, name="test.echo")
    server = EmulatorServer("reuse")
    await server.start(app, ssl_context=None)
    try:
        assert server.faults is faults
        assert sum(1 for m in app.middlewares if type(m).__name__ == "FaultsMiddleware") == 1
    finally:
        await server.stop()
