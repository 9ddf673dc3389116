"""The HTTP API over real sockets, with the simulated platform (no Azure needed for these routes)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from skr.errors import PlatformUnavailableError
from skr.shell.config import Settings
from skr.shell.serve import RunningSidecar, check_bind_address, start_sidecar
from skr.snp.report import parse_report
from skr.snp.verify import verify_attestation
from skr_dev.simulated.amd import SimulatedAmd
from skr_dev.simulated.platform import SimulatedPlatform

AMD = SimulatedAmd.create()
HOST_DATA = hashlib.sha256(b"policy").digest()


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[RunningSidecar, str]]:
    settings = Settings(port=0, thim_url="", azcache_url="", kds_url="", max_body_bytes=4096)
    platform = SimulatedPlatform(AMD, host_data=HOST_DATA)
    running = await start_sidecar(settings, platform=platform, amd_roots=AMD.trusted_roots(), environ={})
    await running.warm_up
    yield running, f"http://127.0.0.1:{running.port}"
    await running.stop()


async def _post(
    url: str, body: object | bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], aiohttp.typedefs.LooseHeaders]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_status_ready_after_warm_up(sidecar: tuple[RunningSidecar, str]) -> None:
    _, url = sidecar
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/status") as response:
            assert response.status == 200 and await response.json() == {"message": "STATUS OK"}
            assert response.headers["X-Request-Id"]
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{url}/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
            assert response.status == 200 and "skr_http_requests_total" in text


async def test_attest_raw_binds_runtime_data(sidecar: tuple[RunningSidecar, str]) -> None:
    _, url = sidecar
    runtime = b'{"keys":[]}'
    status, body, _ = await _post(f"{url}/attest/raw", {"runtime_data": base64.b64encode(runtime).decode()})
    assert status == 200
    report = parse_report(bytes.fromhex(str(body["report"])))
    assert report.report_data == hashlib.sha256(runtime).digest() + bytes(32)
    assert report.host_data == HOST_DATA
    verify_attestation(report, AMD.vcek_pem_chain(), trusted=AMD.trusted_roots(), now=datetime.now(UTC))


async def test_attest_combined_shapes(sidecar: tuple[RunningSidecar, str]) -> None:
    _, url = sidecar
    status, body, _ = await _post(
        f"{url}/attest/combined", {"runtime_data": base64.urlsafe_b64encode(b"x" * 40).decode()}
    )
    assert status == 200
    assert set(body) == {"endorsed_tcb", "endorsements", "evidence", "uvm_endorsements"}
    report = parse_report(base64.b64decode(str(body["evidence"])))
    assert body["endorsed_tcb"] == report.reported_tcb.tcbm().lower()
    chain = base64.b64decode(str(body["endorsements"]))
    assert chain.count(b"BEGIN CERTIFICATE") == 3
    verify_attestation(report, chain, trusted=AMD.trusted_roots(), now=datetime.now(UTC))


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/attest/raw", b"not json", 400, "bad_request"),
        ("/attest/raw", b"[1,2]", 400, "bad_request"),
        ("/attest/raw", {"runtime_data": 5}, 400, "bad_request"),
        ("/attest/raw", {"runtime_data": "%%%"}, 400, "bad_request"),
        ("/attest/raw", {}, 400, "bad_request"),
        ("/attest/raw", b"{" + b" " * 5000 + b"}", 413, "body_too_large"),
        ("/key/release", {"kid": "k", "akv_endpoint": "evil.example.com", "maa_endpoint": "x.attest.azure.net"},
         403, "endpoint_not_allowed"),
        ("/key/release", {"kid": "a/b/c", "akv_endpoint": "v.vault.azure.net"}, 400, "bad_request"),
        ("/key/release", {"kid": "k", "enc": "A256KW"}, 400, "bad_request"),
        ("/nope", {}, 404, "not_found"),
    ],
)  # fmt: skip
async def test_errors_are_json_with_stable_codes(
    sidecar: tuple[RunningSidecar, str], path: str, body: object, status: int, code: str
) -> None:
    _, url = sidecar
    got_status, got, _ = await _post(f"{url}{path}", body)
    assert (got_status, got["code"]) == (status, code)
    assert isinstance(got["error"], str) and got["error"]


async def test_maa_runtime_data_that_is_not_json_is_the_request_at_fault(sidecar: tuple[RunningSidecar, str]) -> None:
    """Nothing is sent to MAA (the instance here does not exist): the request itself is refused."""
    _, url = sidecar
    body = {"runtime_data": base64.b64encode(b"plain text").decode(), "maa_endpoint": "nowhere.attest.azure.net"}
    status, got, _ = await _post(f"{url}/attest/maa", body)
    assert (status, got["code"]) == (400, "bad_request")
    assert "must be base64 of JSON" in str(got["error"]) and "/attest/raw" in str(got["error"])


async def test_body_too_large_names_the_setting(sidecar: tuple[RunningSidecar, str]) -> None:
    _, url = sidecar
    status, got, _ = await _post(f"{url}/attest/raw", b"{" + b" " * 5000 + b"}")
    assert (status, got["code"]) == (413, "body_too_large")
    assert "4096 bytes" in str(got["error"]) and "SKR_MAX_BODY_BYTES" in str(got["error"])


async def test_method_not_allowed_is_json(sidecar: tuple[RunningSidecar, str]) -> None:
    _, url = sidecar
    async with aiohttp.ClientSession() as session, session.get(f"{url}/key/release") as response:
        assert response.status == 405 and (await response.json())["code"] == "method_not_allowed"


def test_non_loopback_bind_is_refused_without_the_unsafe_flag() -> None:
    from skr.errors import ConfigError

    check_bind_address("127.0.0.1", unsafe=False)
    check_bind_address("::1", unsafe=False)
    with pytest.raises(ConfigError, match="non-loopback"):
        check_bind_address("0.0.0.0", unsafe=False)
    check_bind_address("0.0.0.0", unsafe=True)


async def test_missing_device_is_a_startup_error(tmp_path: object) -> None:
    settings = Settings(port=0, configfs_root="/nonexistent/tsm", device_path="/nonexistent/sev-guest")
    with pytest.raises(PlatformUnavailableError, match="/nonexistent/sev-guest"):
        await start_sidecar(settings, environ={})
