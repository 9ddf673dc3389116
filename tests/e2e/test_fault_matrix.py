"""Issue 8: the fault-injection matrix. Every upstream × every meaningful fault → the documented
error code (or a successful retry), within a bound derived from the configured timeouts, through the
HTTP API of a running sidecar; the sidecar keeps serving and recovers when the fault clears.

The table :data:`MATRIX` IS the documentation: one row per case, ``expected`` is the stable error
code the client sees (``RECOVERS`` = the sidecar retried and the client got its key). Bounds are a
ceiling, not a speed target: ``*_timeout`` of the case's upstream plus :data:`MARGIN`.

How the sidecar is chosen per case (``setup``):

* ``shared``  the DevStack's own long-lived sidecar (``skr dev`` wiring). Used for the vaults:
  nothing is cached in front of a Key Vault release, so every release reaches the faulted vault,
  and one sidecar surviving all of them shows that it keeps serving.
* ``fresh``   a new sidecar on the same emulators (empty MAA token/JWKS and identity caches),
  ready before the fault is armed: MAA and Entra faults need the cold path.
* ``managed_identity``  like ``fresh`` but without workload identity: tokens come from IMDS.
* ``thim_only`` / ``kds_only``  no certificate table, no security context, and only one
  certificate source configured, so the collateral MUST come from THIM (IMDS) or AMD KDS. The
  fault is armed BEFORE the sidecar starts, because the warm-up fetches the collateral.

The platform (firmware error, BUSY) is a :class:`FlakyPlatform` test double wrapping the simulated
platform; the real device path is covered by the seccomp tests.

Bugs the matrix found were strict xfails until fixed; they stay as regressions: the ``known_bug``
rows and the tests at the end of the module.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import pytest
import pytest_asyncio

from skr.errors import DeviceBusyError, FirmwareError, SkrError
from skr.shell.wiring import Runtime
from skr.snp.device import RawEvidence
from skr_dev.devstack import DevStack
from skr_dev.emulators.faults import Fault, FaultKind
from skr_dev.emulators.server import HostedEmulator
from skr_dev.emulators.stack import EmulatorStack
from skr_dev.simulated.platform import SimulatedPlatform
from tests.e2e.conftest import (
    E2E_TIMEOUTS,
    MARGIN,
    netloc,
    simulated_platform,
    stack_environ,
    start_runtime,
    start_stack_sidecar,
    wait_until_ready,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

RECOVERS: Final = "recovers via retry"
# The e2e timeouts, with one more second for Key Vault: the SDK's own two retries (≈ 2 s with
# Retry-After: 1) must fit well inside the deadline, or a permanent 429/503 would race it.
TIMEOUTS: Final[dict[str, Any]] = {**E2E_TIMEOUTS, "akv_timeout": 4.0}
MAA_BOUND: Final = TIMEOUTS["maa_timeout"] + MARGIN
AKV_BOUND: Final = TIMEOUTS["akv_timeout"] + MARGIN
COLLATERAL_BOUND: Final = TIMEOUTS["collateral_timeout"] + MARGIN
# skr sets NO deadline on the identity token fetch (see test_identity_fetch_is_bounded): azure-identity's
# own retries (3, backoff 0.8 s → 0 + 1.6 + 3.2 s) are the only ceiling for a failing Entra.
IDENTITY_BOUND: Final = 4.8 + MARGIN
BEYOND_TIMEOUT: Final = 30.0  # injected latency, far past every configured timeout

# The HTTP contract (design.md §2): the status the sidecar answers for each code.
HTTP_STATUS: Final = {
    "upstream_timeout": 504,
    "upstream_unavailable": 502,
    "invalid_upstream_response": 502,
    "identity_unavailable": 502,
    "collateral_unavailable": 502,
    "platform_error": 502,
    "platform_busy": 503,
}
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
MATRIX_KEYS = (
    {"name": "kv-rsa", "vault": "keyvault", "kty": "RSA-HSM", "size": 2048},
    {"name": "hsm-rsa", "vault": "managedhsm", "kty": "RSA-HSM", "size": 2048},
)
IDENTITY_VARIABLES = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST")

KV_DECODE_BUG: Final = (
    "BUG: skr/core/keyvault.py _map_sdk_error maps an unusable vault answer (azure-core DecodeError / "
    "IncompleteReadError: malformed JSON or a truncated body under HTTP 200) to upstream_unavailable "
    "('answered HTTP 200' / 'release failed (IncompleteReadError)' with an 'unexpected error' warning); "
    "it should be invalid_upstream_response, as skr/core/upstream.py does for MAA"
)


@dataclass(frozen=True, slots=True)
class Case:
    """One row of the matrix."""

    fault: Fault
    expected: str  # the error code the client sees, or RECOVERS
    bound: float  # seconds the faulted request may take at most
    setup: str = "fresh"
    kid: str = "kv-rsa"
    vault: str = "keyvault"
    recovers_when_cleared: bool = True  # every row must recover once its fault is cleared

    @property
    def upstream(self) -> str:
        return self.fault.endpoint.split(".", 1)[0]


def _case(
    endpoint: str,
    kind: FaultKind,
    expected: str,
    bound: float,
    *,
    times: int | None = None,
    delay: float = 0.0,
    retry_after: int = 1,
    **fields: Any,
) -> Case:
    fault = Fault(kind, endpoint=endpoint, delay=delay, retry_after=retry_after, times=times)
    return Case(fault, expected, bound, **fields)


# One helper per upstream: its faulted route, its bound and the sidecar it runs against.
def maa(kind: FaultKind, expected: str, route: str = "maa.attest", **kw: Any) -> Case:
    return _case(route, kind, expected, MAA_BOUND, **kw)


def maa_certs(kind: FaultKind, expected: str, **kw: Any) -> Case:
    # A sidecar with a default MAA prefetches /certs at warm-up; these rows use one without a
    # default (the request names the MAA), so /certs is fetched on the first release, under the fault.
    return _case("maa.certs", kind, expected, MAA_BOUND, setup="no_default_maa", **kw)


def kv(kind: FaultKind, expected: str, **kw: Any) -> Case:
    return _case("keyvault.release", kind, expected, AKV_BOUND, setup="shared", **kw)


def mhsm(kind: FaultKind, expected: str, **kw: Any) -> Case:
    return _case(
        "managedhsm.release", kind, expected, AKV_BOUND, setup="shared", kid="hsm-rsa", vault="managedhsm", **kw
    )


def entra(kind: FaultKind, expected: str, **kw: Any) -> Case:
    return _case("entra.token", kind, expected, IDENTITY_BOUND, **kw)


def imds(kind: FaultKind, expected: str, **kw: Any) -> Case:
    return _case("imds.token", kind, expected, IDENTITY_BOUND, setup="managed_identity", **kw)


def thim(kind: FaultKind, expected: str, **kw: Any) -> Case:
    return _case("imds.thim", kind, expected, COLLATERAL_BOUND, setup="thim_only", **kw)


def kds(kind: FaultKind, expected: str, **kw: Any) -> Case:
    return _case("kds.vcek", kind, expected, COLLATERAL_BOUND, setup="kds_only", **kw)


def known_bug(case: Case) -> Any:
    """A row that was a strict xfail (KV_DECODE_BUG) until the fix; kept as a named regression."""
    return pytest.param(case)


LATENCY, HANG, RATE_LIMIT = FaultKind.LATENCY, FaultKind.HANG, FaultKind.RATE_LIMIT
E500, E503 = FaultKind.ERROR_500, FaultKind.ERROR_503
MALFORMED, TRUNCATED = FaultKind.MALFORMED_JSON, FaultKind.TRUNCATED_BODY
BAD_SIG, EXPIRED, UNKNOWN_KID = FaultKind.BAD_SIGNATURE, FaultKind.EXPIRED_TOKEN, FaultKind.UNKNOWN_KID
SLOW = BEYOND_TIMEOUT

# fmt: off
MATRIX: dict[str, Any] = {
    # --- MAA attest (fresh sidecar: the token is not cached yet) ----------------------------------------
    "maa-attest-latency":         maa(LATENCY, "upstream_timeout", delay=SLOW),
    "maa-attest-429-once":        maa(RATE_LIMIT, RECOVERS, times=1, retry_after=1),
    "maa-attest-429-beyond":      maa(RATE_LIMIT, "upstream_unavailable", retry_after=30),  # no sleep past the deadline
    "maa-attest-500":             maa(E500, "upstream_unavailable"),
    "maa-attest-500-twice":       maa(E500, RECOVERS, times=2),
    "maa-attest-503-once":        maa(E503, RECOVERS, times=1),
    "maa-attest-hang":            maa(HANG, "upstream_timeout"),
    "maa-attest-malformed":       maa(MALFORMED, "invalid_upstream_response"),
    "maa-attest-truncated":       maa(TRUNCATED, "invalid_upstream_response"),
    "maa-attest-truncated-once":  maa(TRUNCATED, RECOVERS, times=1),
    "maa-attest-bad-signature":   maa(BAD_SIG, "invalid_upstream_response", times=1),
    "maa-attest-expired-token":   maa(EXPIRED, "invalid_upstream_response", times=1),
    "maa-attest-unknown-kid":     maa(UNKNOWN_KID, "invalid_upstream_response", times=1),
    # --- MAA signing keys (/certs) -------------------------------------------------------------------
    "maa-certs-503":              maa_certs(E503, "upstream_unavailable"),
    "maa-certs-500-once":         maa_certs(E500, RECOVERS, times=1),
    "maa-certs-hang":             maa_certs(HANG, "upstream_timeout"),
    "maa-certs-malformed":        maa_certs(MALFORMED, "invalid_upstream_response"),
    # --- Key Vault release (the DevStack's own sidecar; EXPIRED_TOKEN does not apply to a JWS) -------
    "kv-release-latency":         kv(LATENCY, "upstream_timeout", delay=SLOW),
    "kv-release-429-once":        kv(RATE_LIMIT, RECOVERS, times=1),
    "kv-release-429":             kv(RATE_LIMIT, "upstream_unavailable"),  # the SDK's 2 retries, then give up
    "kv-release-429-beyond":      kv(RATE_LIMIT, "upstream_timeout", retry_after=30),  # the deadline cuts the wait
    "kv-release-500":             kv(E500, "upstream_unavailable"),
    "kv-release-503-once":        kv(E503, RECOVERS, times=1),
    "kv-release-hang":            kv(HANG, "upstream_timeout"),
    "kv-release-malformed":       known_bug(kv(MALFORMED, "invalid_upstream_response")),
    "kv-release-truncated":       known_bug(kv(TRUNCATED, "invalid_upstream_response")),
    "kv-release-bad-signature":   kv(BAD_SIG, "invalid_upstream_response", times=1),
    "kv-release-wrong-host-leaf": kv(UNKNOWN_KID, "invalid_upstream_response", times=1),
    # --- Managed HSM release -------------------------------------------------------------------------
    "mhsm-release-429-once":      mhsm(RATE_LIMIT, RECOVERS, times=1),
    "mhsm-release-503":           mhsm(E503, "upstream_unavailable"),
    "mhsm-release-hang":          mhsm(HANG, "upstream_timeout"),
    "mhsm-release-malformed":     known_bug(mhsm(MALFORMED, "invalid_upstream_response")),
    "mhsm-release-bad-signature": mhsm(BAD_SIG, "invalid_upstream_response", times=1),
    "mhsm-release-wrong-host-leaf": mhsm(UNKNOWN_KID, "invalid_upstream_response", times=1),
    # --- Entra ID token endpoint (workload identity; hang: test_identity_fetch_is_bounded) ------------
    "entra-token-429-once":       entra(RATE_LIMIT, RECOVERS, times=1),
    "entra-token-500":            entra(E500, "identity_unavailable"),
    "entra-token-503-once":       entra(E503, RECOVERS, times=1),
    "entra-token-malformed":      entra(MALFORMED, "identity_unavailable"),
    "entra-token-truncated":      entra(TRUNCATED, "identity_unavailable"),
    # Tokens the vault refuses (401). Recovery once the fault clears is tracked by
    # test_token_refused_by_the_vault_is_not_reused: the refused token stays cached (bug).
    "entra-token-bad-signature":  entra(BAD_SIG, "identity_unavailable", times=1, recovers_when_cleared=True),
    "entra-token-expired":        entra(EXPIRED, "identity_unavailable", times=1, recovers_when_cleared=True),
    "entra-token-unknown-kid":    entra(UNKNOWN_KID, "identity_unavailable", times=1, recovers_when_cleared=True),
    # --- IMDS managed identity (500 for good and hang: test_identity_fetch_is_bounded) ---------------
    "imds-token-500-once":        imds(E500, RECOVERS, times=1),
    "imds-token-429-once":        imds(RATE_LIMIT, RECOVERS, times=1),
    "imds-token-malformed":       imds(MALFORMED, "identity_unavailable"),
    "imds-token-truncated":       imds(TRUNCATED, "identity_unavailable"),
    "imds-token-bad-signature":   imds(BAD_SIG, "identity_unavailable", times=1, recovers_when_cleared=True),
    # --- THIM via IMDS (the only collateral source) --------------------------------------------------
    "thim-latency":               thim(LATENCY, "collateral_unavailable", delay=SLOW),
    "thim-429-once":              thim(RATE_LIMIT, RECOVERS, times=1),
    "thim-500":                   thim(E500, "collateral_unavailable"),
    "thim-500-once":              thim(E500, RECOVERS, times=1),
    "thim-hang":                  thim(HANG, "collateral_unavailable"),
    "thim-malformed":             thim(MALFORMED, "collateral_unavailable"),
    "thim-truncated":             thim(TRUNCATED, "collateral_unavailable"),
    # --- AMD KDS (the only collateral source; its answers are DER, so "malformed" is garbled DER) ----
    "kds-429-once":               kds(RATE_LIMIT, RECOVERS, times=1),
    "kds-500":                    kds(E500, "collateral_unavailable"),
    "kds-503-once":               kds(E503, RECOVERS, times=1),
    "kds-hang":                   kds(HANG, "collateral_unavailable"),
    "kds-malformed":              kds(MALFORMED, "collateral_unavailable"),
    "kds-truncated":              kds(TRUNCATED, "collateral_unavailable"),
}
# fmt: on


# --- the platform test double ------------------------------------------------------------------------


class FlakyPlatform:
    """A :class:`skr.snp.device.ReportProvider` failing on demand the way the device layer reports it."""

    name = "simulated-flaky"

    def __init__(self, inner: SimulatedPlatform) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._error: Callable[[], Exception] | None = None
        self._remaining: int | None = None

    def fail(self, error: Callable[[], Exception], *, times: int | None = None) -> None:
        with self._lock:
            self._error, self._remaining = error, times

    def clear(self) -> None:
        with self._lock:
            self._error = None

    def get_report(self, report_data: bytes, *, vmpl: int = 0, with_certificates: bool = True) -> RawEvidence:
        with self._lock:
            error = self._error
            if error is not None and self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._error = None
        if error is not None:
            raise error()
        return self.inner.get_report(report_data, vmpl=vmpl, with_certificates=with_certificates)


def firmware_error() -> Exception:
    return FirmwareError("SNP_GET_REPORT failed: firmware status 0x16 (SIMULATED)", errno=5, fw_error=0x16)


def device_busy() -> Exception:
    return DeviceBusyError("the hypervisor stayed busy (SIMULATED)", errno=11, vmm_error=2)


PLATFORM_FAULTS: dict[str, tuple[Callable[[], Exception], str]] = {
    "firmware-error": (firmware_error, "platform_error"),
    "busy": (device_busy, "platform_busy"),
}


# --- fixtures and helpers ----------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dev() -> AsyncIterator[DevStack]:
    """One ``skr dev`` stack (emulators + sidecar) for the whole matrix, with short timeouts."""
    stack = await DevStack.start(port=0, keys=MATRIX_KEYS, settings_overrides=dict(TIMEOUTS))
    try:
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(autouse=True)
def _no_fault_survives(dev: DevStack) -> Any:
    yield
    dev.emulators.faults.clear()


def _emulator(stack: EmulatorStack, upstream: str) -> HostedEmulator:
    return stack.emulators()[upstream]


def _body(stack: EmulatorStack, case: Case) -> dict[str, str]:
    body = {"kid": case.kid}
    if case.setup == "no_default_maa":
        body["maa_endpoint"] = netloc(stack.state()["maa_url"])
    if case.vault == "managedhsm":
        body["akv_endpoint"] = netloc(stack.state()["managedhsm_url"])
    return body


def _managed_identity_environ(stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", stack.imds.url)  # azure-identity reads os.environ
    return {**stack_environ(stack, drop=IDENTITY_VARIABLES), "AZURE_POD_IDENTITY_AUTHORITY_HOST": stack.imds.url}


def _sidecar_options(dev: DevStack, setup: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    stack = dev.emulators
    context = str(stack.state_dir / "security-context")  # DevStack wrote it at start
    if setup == "fresh":
        return {**TIMEOUTS, "security_context_dir": context}
    if setup == "no_default_maa":
        return {**TIMEOUTS, "security_context_dir": context, "maa_endpoint": ""}
    if setup == "managed_identity":
        environ = _managed_identity_environ(stack, monkeypatch)
        return {**TIMEOUTS, "security_context_dir": context, "environ": environ}
    # No certificate table and an empty security context: the one configured source must deliver.
    bare = simulated_platform(stack, include_certificates=False)
    empty_context = stack.state_dir / "empty-security-context"
    empty_context.mkdir(exist_ok=True)
    common = {**TIMEOUTS, "platform": bare, "security_context_dir": str(empty_context), "azcache_url": ""}
    if setup == "thim_only":
        return {**common, "kds_url": ""}
    if setup == "kds_only":
        return {**common, "thim_url": ""}
    raise AssertionError(f"unknown setup {setup!r}")


@asynccontextmanager
async def sidecar_for(dev: DevStack, setup: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The base URL of the sidecar a case runs against (see the module docstring)."""
    if setup == "shared":
        yield dev.sidecar_url
        return
    sidecar = await start_stack_sidecar(dev.emulators, **_sidecar_options(dev, setup, monkeypatch))
    try:
        yield f"http://127.0.0.1:{sidecar.port}"
    finally:
        await sidecar.stop()


async def post(
    http: aiohttp.ClientSession, url: str, body: Mapping[str, Any], path: str = "/key/release"
) -> tuple[int, dict[str, Any], float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.post(f"{url}{path}", json=body) as response:
        document = await response.json()
        return response.status, document, loop.time() - started


async def get_status(http: aiohttp.ClientSession, url: str, path: str = "/status") -> int:
    async with http.get(f"{url}{path}") as response:
        await response.read()
        return response.status


def assert_error(status: int, document: Mapping[str, Any], code: str) -> None:
    assert (status, document.get("code")) == (HTTP_STATUS[code], code), document
    assert isinstance(document.get("error"), str) and document["error"]
    assert "key" not in document
    assert not JWT_SHAPED.search(document["error"])  # no token in a client-visible message


def assert_released(status: int, document: Mapping[str, Any]) -> None:
    assert status == 200, document
    assert '"d"' in document["key"]  # a private JWK (the RSA key's private exponent)


async def release_until_ok(http: aiohttp.ClientSession, url: str, body: Mapping[str, Any], within: float) -> None:
    """Clients retry; once the fault is cleared the sidecar must answer 200 within ``within`` seconds.

    Needed only when a background warm-up attempt may still be waiting on the (now cleared) fault.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        status, document, _ = await post(http, url, body)
        if status == 200 or loop.time() > deadline:
            assert_released(status, document)
            return
        await asyncio.sleep(0.1)


# --- the matrix ----------------------------------------------------------------------------------------


def _cases() -> list[Case]:
    """The rows of :data:`MATRIX` without their pytest marks."""
    return [entry if isinstance(entry, Case) else entry.values[0] for entry in MATRIX.values()]


async def test_matrix_is_wide_enough() -> None:
    upstreams = {case.upstream for case in _cases()}
    assert len(MATRIX) + len(PLATFORM_FAULTS) >= 20
    assert upstreams == {"maa", "keyvault", "managedhsm", "entra", "imds", "kds"}


@pytest.mark.parametrize("case", list(MATRIX.values()), ids=list(MATRIX))
async def test_fault(dev: DevStack, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    stack = dev.emulators
    emulator = _emulator(stack, case.upstream)
    seen_before = len(emulator.requests)
    body = _body(stack, case)
    collateral = case.setup in ("thim_only", "kds_only")
    if collateral:
        stack.faults.add(case.fault)  # the warm-up fetches the collateral at once
    async with sidecar_for(dev, case.setup, monkeypatch) as url:
        if not collateral:
            await wait_until_ready(http, url)
            stack.faults.add(case.fault)

        status, document, elapsed = await post(http, url, body)

        assert elapsed < case.bound, f"{elapsed:.2f} s > bound {case.bound:.2f} s"
        # (A hung or delayed request is logged only when it ends; its code above already proves it.)
        hits = [r for r in emulator.requests[seen_before:] if r.route == case.fault.endpoint and r.status != 401]
        assert hits or case.fault.kind in (LATENCY, HANG), f"the faulted route {case.fault.endpoint} was never called"
        if case.expected == RECOVERS:
            assert_released(status, document)
            assert not stack.faults.active()  # every armed use of the fault was taken...
            assert len(hits) >= (case.fault.times or 0) + 1  # ...and a retry went through
        else:
            assert_error(status, document, case.expected)
        # The sidecar keeps serving: alive, and ready unless it never got its collateral.
        assert await get_status(http, url, "/healthz") == 200
        if not collateral or case.expected == RECOVERS:
            assert await get_status(http, url) == 200

        stack.faults.clear()
        if case.recovers_when_cleared:
            if collateral:
                await release_until_ok(http, url, body, within=COLLATERAL_BOUND)
            else:
                assert_released(*(await post(http, url, body))[:2])
            assert await get_status(http, url) == 200


# --- the platform ---------------------------------------------------------------------------------------


@asynccontextmanager
async def flaky_sidecar(dev: DevStack) -> AsyncIterator[tuple[str, FlakyPlatform]]:
    platform = FlakyPlatform(simulated_platform(dev.emulators))
    context = str(dev.emulators.state_dir / "security-context")
    sidecar = await start_stack_sidecar(dev.emulators, platform=platform, security_context_dir=context, **TIMEOUTS)
    try:
        yield f"http://127.0.0.1:{sidecar.port}", platform
    finally:
        await sidecar.stop()


@pytest.mark.parametrize("fault", list(PLATFORM_FAULTS))
async def test_platform_fault_on_a_ready_sidecar(dev: DevStack, http: aiohttp.ClientSession, fault: str) -> None:
    """Fresh reports fail with the device's code; releases keep working from the cached attestation."""
    error, code = PLATFORM_FAULTS[fault]
    runtime_data = {"runtime_data": "e30="}  # "{}": /attest/maa takes JSON only
    async with flaky_sidecar(dev) as (url, platform):
        await wait_until_ready(http, url)
        assert_released(*(await post(http, url, {"kid": "kv-rsa"}))[:2])
        platform.fail(error)
        for path in ("/attest/raw", "/attest/maa"):
            status, document, _ = await post(http, url, runtime_data, path)
            assert_error(status, document, code)
        # A warm release needs no new report while its attestation token is valid.
        assert_released(*(await post(http, url, {"kid": "kv-rsa"}))[:2])
        assert await get_status(http, url) == 200
        platform.clear()
        status, document, _ = await post(http, url, runtime_data, "/attest/raw")
        assert status == 200 and len(document["report"]) == 2 * 1184


async def test_platform_busy_once_recovers_when_the_client_retries(dev: DevStack, http: aiohttp.ClientSession) -> None:
    async with flaky_sidecar(dev) as (url, platform):
        await wait_until_ready(http, url)
        platform.fail(device_busy, times=1)
        status, document, _ = await post(http, url, {"runtime_data": "aGVsbG8="}, "/attest/raw")
        assert_error(status, document, "platform_busy")
        status, document, _ = await post(http, url, {"runtime_data": "aGVsbG8="}, "/attest/raw")
        assert status == 200


@pytest.mark.parametrize("fault", list(PLATFORM_FAULTS))
async def test_platform_fault_from_start_up(dev: DevStack, http: aiohttp.ClientSession, fault: str) -> None:
    """A sidecar whose device fails from the start says so on /status and recovers when it clears."""
    error, code = PLATFORM_FAULTS[fault]
    platform = FlakyPlatform(simulated_platform(dev.emulators))
    platform.fail(error)
    sidecar = await start_stack_sidecar(dev.emulators, platform=platform, **TIMEOUTS)
    url = f"http://127.0.0.1:{sidecar.port}"
    try:
        status, document, _ = await post(http, url, {"kid": "kv-rsa"})
        assert_error(status, document, code)
        async with http.get(f"{url}/status") as response:
            assert response.status == 503
            assert (await response.json())["ready"]["collateral"] is False
        assert await get_status(http, url, "/healthz") == 200
        platform.clear()
        assert_released(*(await post(http, url, {"kid": "kv-rsa"}))[:2])
        assert await get_status(http, url) == 200
    finally:
        await sidecar.stop()


# --- regressions: bugs the matrix found, fixed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "managed"),
    [(Fault(HANG, endpoint="entra.token"), False), (Fault(E500, endpoint="imds.token"), True)],
    ids=["entra-token-hang", "imds-token-500"],
)
async def test_identity_fetch_is_bounded(
    dev: DevStack, monkeypatch: pytest.MonkeyPatch, fault: Fault, managed: bool
) -> None:
    stack = dev.emulators
    environ = _managed_identity_environ(stack, monkeypatch) if managed else None
    core: Runtime = await start_runtime(stack, environ=environ, **TIMEOUTS)
    stack.faults.add(fault)
    try:
        with pytest.raises(SkrError) as caught:
            await asyncio.wait_for(core.releaser.release(kid="kv-rsa"), AKV_BOUND)
        assert caught.value.code in ("identity_unavailable", "upstream_timeout")
    finally:
        stack.faults.clear()
        await core.close()


async def test_token_refused_by_the_vault_is_not_reused(
    dev: DevStack, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = dev.emulators
    async with sidecar_for(dev, "fresh", monkeypatch) as url:
        await wait_until_ready(http, url)
        stack.faults.add(Fault(BAD_SIG, endpoint="entra.token", times=1))
        status, document, _ = await post(http, url, {"kid": "kv-rsa"})
        assert_error(status, document, "identity_unavailable")
        assert not stack.faults.active()
        assert_released(*(await post(http, url, {"kid": "kv-rsa"}))[:2])


@pytest.mark.parametrize("setup", ["fresh", "managed_identity"], ids=["workload-identity", "managed-identity"])
async def test_unparsable_token_response_puts_no_token_in_the_log(
    dev: DevStack,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    setup: str,
) -> None:
    stack = dev.emulators
    endpoint = "entra.token" if setup == "fresh" else "imds.token"
    caplog.set_level(logging.WARNING)
    async with sidecar_for(dev, setup, monkeypatch) as url:
        await wait_until_ready(http, url)
        stack.faults.add(Fault(MALFORMED, endpoint=endpoint))
        status, document, _ = await post(http, url, {"kid": "kv-rsa"})
    assert_error(status, document, "identity_unavailable")
    leaked = [r.name for r in caplog.records if JWT_SHAPED.search(r.getMessage())]
    assert not leaked, f"token-shaped text logged by {sorted(set(leaked))}"
