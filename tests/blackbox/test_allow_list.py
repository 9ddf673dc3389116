"""A host outside the allow-list gets 403 ``endpoint_not_allowed`` and NOTHING is sent to it.

Why: the sidecar holds a vault access token and an attestation token; sending either to a host the
operator did not pin would hand it to whoever runs that host (threat model: "a vault token is only
ever sent to allow-listed hosts"). Two independent witnesses show that no connection was attempted:

* the emulators' own request logs (``GET /_emulator/requests``) do not grow, which also covers a
  permitted service named under another spelling (``localhost:PORT``) or in the wrong role;
* a loopback TCP listener of our own, on a port that is not in the allow-list, named as the MAA or
  vault endpoint, never has a connection waiting in its accept queue.

Positive controls prove each witness can see a connection when one happens.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.blackbox.conftest import DevProcess, HttpResult, assert_error, b64, entra_access_token, netloc

# A connection attempt made in the background would reach the trap's accept queue within this grace.
CONNECTION_GRACE = 0.5


@pytest.fixture
def trap(dev: DevProcess) -> Iterator[socket.socket]:
    """A listening loopback socket whose port is not in the allow-list; never accepts on its own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        allowed = {dev.host(name) for name in ("maa", "keyvault", "managedhsm")}
        assert _trap_host(sock) not in allowed
        yield sock
    finally:
        sock.close()


def _trap_host(sock: socket.socket) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def _connection_waiting(sock: socket.socket, grace: float = CONNECTION_GRACE) -> bool:
    readable, _, _ = select.select([sock], [], [], grace)
    return bool(readable)


def _counts(dev: DevProcess) -> dict[str, int]:
    return {name: len(records) for name, records in dev.recorded_requests().items()}


def _assert_refused_silently(dev: DevProcess, send: Callable[[], HttpResult], named: str) -> dict[str, Any]:
    before = dev.recorded_requests()
    body = assert_error(send(), 403, "endpoint_not_allowed")
    assert named in body["error"]
    assert dev.recorded_requests() == before, "a refused request reached an emulator"
    return body


# --- witnesses work ---------------------------------------------------------------------------------


def test_control_trap_sees_a_connection(trap: socket.socket) -> None:
    assert not _connection_waiting(trap, 0.0)
    with socket.create_connection(trap.getsockname()[:2], timeout=5):
        assert _connection_waiting(trap)


def test_control_request_log_sees_an_allowed_release(dev: DevProcess) -> None:
    before = _counts(dev)
    result = dev.api("POST", "/key/release", {"kid": "demo-rsa", "akv_endpoint": dev.host("keyvault")})
    assert result.status == 200, result.body
    after = dev.recorded_requests()
    assert len(after["keyvault"]) > before["keyvault"]
    assert any(record["route"] == "keyvault.release" for record in after["keyvault"][before["keyvault"] :])


# --- the trap is never contacted ----------------------------------------------------------------------


def _host_forms(host: str) -> list[str]:
    port = host.rsplit(":", 1)[1]
    return [host, f"https://{host}", f"https://{host}/", f"localhost:{port}", f"https://localhost:{port}"]


@pytest.mark.parametrize("form", range(5), ids=["host", "https", "https-slash", "localhost", "https-localhost"])
def test_trap_as_vault_is_never_contacted(dev: DevProcess, trap: socket.socket, form: int) -> None:
    named = _host_forms(_trap_host(trap))[form]
    token = entra_access_token(dev)  # a real vault token in hand: it must not travel to the trap
    body = {"kid": "demo-rsa", "akv_endpoint": named, "maa_endpoint": dev.host("maa"), "access_token": token}
    refused = _assert_refused_silently(dev, lambda: dev.api("POST", "/key/release", body), netloc_of(named))
    assert "SKR_ALLOWED_AKV_ENDPOINTS" in refused["error"]
    assert not _connection_waiting(trap)


@pytest.mark.parametrize("form", range(5), ids=["host", "https", "https-slash", "localhost", "https-localhost"])
def test_trap_as_maa_for_release_is_never_contacted(dev: DevProcess, trap: socket.socket, form: int) -> None:
    named = _host_forms(_trap_host(trap))[form]
    body = {"kid": "demo-rsa", "akv_endpoint": dev.host("keyvault"), "maa_endpoint": named}
    refused = _assert_refused_silently(dev, lambda: dev.api("POST", "/key/release", body), netloc_of(named))
    assert "SKR_ALLOWED_MAA_ENDPOINTS" in refused["error"]
    assert not _connection_waiting(trap)


def test_trap_as_maa_for_attestation_is_never_contacted(dev: DevProcess, trap: socket.socket) -> None:
    named = _trap_host(trap)
    body = {"maa_endpoint": named, "runtime_data": b64(b"{}")}
    _assert_refused_silently(dev, lambda: dev.api("POST", "/attest/maa", body), named)
    assert not _connection_waiting(trap)


def test_trap_as_both_endpoints_is_never_contacted(dev: DevProcess, trap: socket.socket) -> None:
    named = _trap_host(trap)
    body = {"kid": "demo-rsa", "akv_endpoint": named, "maa_endpoint": named}
    _assert_refused_silently(dev, lambda: dev.api("POST", "/key/release", body), named)
    assert not _connection_waiting(trap)


def test_malformed_trap_endpoint_is_a_bad_request_and_never_contacted(dev: DevProcess, trap: socket.socket) -> None:
    before = dev.recorded_requests()
    for named in (f"http://{_trap_host(trap)}", f"{_trap_host(trap)}/keys/x", f"user@{_trap_host(trap)}"):
        body = {"kid": "demo-rsa", "akv_endpoint": named}
        assert_error(dev.api("POST", "/key/release", body), 400, "bad_request")
    assert dev.recorded_requests() == before
    assert not _connection_waiting(trap)


# --- permitted services, spelled otherwise or in the wrong role ----------------------------------------


def _port(dev: DevProcess, name: str) -> str:
    return dev.host(name).rsplit(":", 1)[1]


@pytest.mark.parametrize("spelling", ["localhost:{port}", "[::1]:{port}", "127.0.0.2:{port}"])
def test_allowed_vault_under_another_name_is_refused(dev: DevProcess, spelling: str) -> None:
    named = spelling.format(port=_port(dev, "keyvault"))
    body = {"kid": "demo-rsa", "akv_endpoint": named, "access_token": entra_access_token(dev)}
    _assert_refused_silently(dev, lambda: dev.api("POST", "/key/release", body), named)


@pytest.mark.parametrize("spelling", ["localhost:{port}", "[::1]:{port}"])
def test_allowed_maa_under_another_name_is_refused(dev: DevProcess, spelling: str) -> None:
    named = spelling.format(port=_port(dev, "maa"))
    body = {"maa_endpoint": named, "runtime_data": b64(b"{}")}
    _assert_refused_silently(dev, lambda: dev.api("POST", "/attest/maa", body), named)


def test_maa_host_is_not_a_vault(dev: DevProcess) -> None:
    """The vault token must never go to the attestation service, although its host is allowed as MAA."""
    body = {"kid": "demo-rsa", "akv_endpoint": dev.host("maa"), "access_token": entra_access_token(dev)}
    _assert_refused_silently(dev, lambda: dev.api("POST", "/key/release", body), dev.host("maa"))


@pytest.mark.parametrize("vault", ["keyvault", "managedhsm"])
def test_vault_host_is_not_an_attestation_service(dev: DevProcess, vault: str) -> None:
    body = {"maa_endpoint": dev.host(vault), "runtime_data": b64(b"{}")}
    _assert_refused_silently(dev, lambda: dev.api("POST", "/attest/maa", body), dev.host(vault))


def netloc_of(named: str) -> str:
    """How the error message names an endpoint: ``host:port`` without scheme or slash."""
    return netloc(named) if "://" in named else named
