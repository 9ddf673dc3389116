"""Every endpoint and every reachable error code of the local API, against ``skr dev`` over HTTP.

Why: the error table (README, ``skr/errors.py``) is a contract with applications — a stable
``code``, a fitting status, a message safe to show — and it must hold end to end, through the real
process, sockets, Azure SDK and emulators, not just for the handler functions.

Upstream failures are provoked through the emulators' admin API (``POST /_emulator/faults``); the
release-policy refusal uses a key created with the real azure-keyvault-keys SDK.

Codes of ``skr/errors.py`` that NO black-box request to ``skr dev`` can produce (asserted nowhere
here, on purpose):

* ``not_ready`` — raised only when ``AppState.platform_ready`` is false, which nothing sets: ``skr
  serve`` without a device exits before it listens (tests/blackbox/test_cli.py checks exit code 3)
  and ``skr dev``'s simulated platform is always there;
* ``platform_unavailable`` — the same start-up failure; ``skr serve`` exits 3 instead of answering;
* ``platform_error`` / ``platform_busy`` — the simulated platform never fails an ioctl;
* ``collateral_unavailable`` — the simulated platform's certificate table always verifies and is
  cached at warm-up, so no emulator fault can take collateral away;
* ``config_error``, ``verification_failed``, ``invalid_report``, ``validation_failed``,
  ``internal_error`` — not produced by any request path.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import pytest

from tests.blackbox.conftest import (
    DevProcess,
    HttpResult,
    assert_error,
    assert_simulated,
    b64,
    create_exportable_rsa_key,
    entra_access_token,
    release_policy,
)

JSON_RUNTIME = json.dumps({"purpose": "skr black-box test"}).encode()


def _release(dev: DevProcess, kid: str = "demo-rsa", **extra: str) -> HttpResult:
    body = {"kid": kid, "akv_endpoint": dev.host("keyvault"), "maa_endpoint": dev.host("maa"), **extra}
    return dev.api("POST", "/key/release", body)


def _attest_maa(dev: DevProcess, runtime: bytes = JSON_RUNTIME) -> HttpResult:
    return dev.api("POST", "/attest/maa", {"maa_endpoint": dev.host("maa"), "runtime_data": b64(runtime)})


# --- the endpoints, successful ---------------------------------------------------------------------


def test_status_is_ok_once_ready(dev: DevProcess) -> None:
    result = dev.api("GET", "/status")
    assert result.status == 200
    assert result.json()["message"] == "STATUS OK"
    assert_simulated(result)


def test_healthz_answers_alive(dev: DevProcess) -> None:
    result = dev.api("GET", "/healthz")
    assert result.status == 200
    assert result.json()["status"] == "alive"
    assert_simulated(result)


def test_readyz_reports_every_part_ready(dev: DevProcess) -> None:
    result = dev.api("GET", "/readyz")
    assert result.status == 200
    body = result.json()
    assert body["ready"] is True
    assert {"platform", "wrapping_key", "collateral"} <= set(body)
    assert all(body[name] is True for name in ("platform", "wrapping_key", "collateral"))
    assert_simulated(result)


@pytest.mark.parametrize("path", ["/status", "/healthz", "/readyz"])
def test_every_json_response_carries_the_simulated_warning(dev: DevProcess, path: str) -> None:
    result = dev.api("GET", path)
    assert result.status == 200
    assert "SIMULATED" in result.json().get("warning", "")


def test_metrics_is_prometheus_text_counting_requests_and_releases(dev: DevProcess) -> None:
    assert _release(dev).status == 200
    result = dev.api("GET", "/metrics")
    assert result.status == 200
    assert (result.headers.get("Content-Type") or "").startswith("text/plain")
    text = result.body.decode()
    assert "# TYPE skr_http_requests_total counter" in text
    released = re.search(r'^skr_key_releases_total\{outcome="released"\} (\d+(?:\.\d+)?)$', text, re.M)
    assert released is not None and float(released.group(1)) >= 1
    assert re.search(r'^skr_http_requests_total\{route="/key/release",status="200"\} [1-9]', text, re.M)
    assert_simulated(result)


def test_attest_raw_binds_runtime_data(dev: DevProcess) -> None:
    runtime = b"hello from the black box"
    result = dev.api("POST", "/attest/raw", {"runtime_data": b64(runtime)})
    assert result.status == 200
    report = bytes.fromhex(result.json()["report"])
    assert len(report) == 1184
    assert report[0x50:0x90] == hashlib.sha256(runtime).digest() + bytes(32)
    assert_simulated(result)


def test_attest_combined_answers_four_fields(dev: DevProcess) -> None:
    result = dev.api("POST", "/attest/combined", {"runtime_data": b64(b"combined")})
    assert result.status == 200
    assert set(result.json()) - {"warning"} == {"endorsed_tcb", "endorsements", "evidence", "uvm_endorsements"}
    assert_simulated(result)


def test_attest_maa_returns_a_token_not_to_be_cached(dev: DevProcess) -> None:
    result = _attest_maa(dev)
    assert result.status == 200
    assert result.json()["token"].count(".") == 2
    assert result.headers.get("Cache-Control") == "no-store"
    assert_simulated(result)


@pytest.mark.parametrize("name", ["demo-rsa", "demo-ec", "demo-oct"])
def test_key_release_of_every_demo_key_is_not_to_be_cached(dev: DevProcess, name: str) -> None:
    key = dev.key(name)
    result = dev.api("POST", "/key/release", {"kid": name, "akv_endpoint": key["vault_url"]})
    assert result.status == 200, result.body
    assert json.loads(result.json()["key"])["kty"] == key["kty"].removesuffix("-HSM")
    assert result.headers.get("Cache-Control") == "no-store"
    assert_simulated(result)


def test_request_id_is_echoed_and_tags_the_log(dev: DevProcess) -> None:
    given = dev.api("POST", "/key/release", {"kid": "no-such-key-2"}, headers={"X-Request-Id": "bb-trace-0042"})
    assert_error(given, 404, "key_not_found")
    assert given.headers.get("X-Request-Id") == "bb-trace-0042"
    assert re.search(r"\[bb-trace-0042\].*key_not_found", dev.log_text())


def test_unsafe_request_id_is_replaced(dev: DevProcess) -> None:
    result = dev.api("GET", "/healthz", headers={"X-Request-Id": "evil id\twith spaces"})
    assert result.status == 200
    assert result.headers.get("X-Request-Id") not in (None, "", "evil id\twith spaces")


# --- every reachable error code ----------------------------------------------------------------------

ErrorCase = Callable[[DevProcess], HttpResult]


def _bad_json(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/attest/raw", b'{"runtime_data": ')


def _not_an_object(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/key/release", b'["kid", "demo-rsa"]')


def _empty_body(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/attest/combined", b"")


def _wrong_type(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/attest/raw", {"runtime_data": 12345})


def _bad_base64(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/attest/raw", {"runtime_data": "not*base64!"})


def _missing_runtime_data(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/attest/maa", {"maa_endpoint": dev.host("maa")})


def _missing_kid(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/key/release", {"akv_endpoint": dev.host("keyvault")})


def _bad_kid(dev: DevProcess) -> HttpResult:
    return _release(dev, kid="a/b/c")


def _bad_enc(dev: DevProcess) -> HttpResult:
    return _release(dev, enc="RSA-OAEP")


def _endpoint_with_scheme_http(dev: DevProcess) -> HttpResult:
    return _release(dev, akv_endpoint=f"http://{dev.host('keyvault')}")


def _too_large(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/attest/raw", json.dumps({"runtime_data": "A" * 70_000}).encode())


def _not_allowed(dev: DevProcess) -> HttpResult:
    return _release(dev, akv_endpoint="127.0.0.1:1")


def _maa_rejects(dev: DevProcess) -> HttpResult:
    # skr sends runtime data to MAA as dataType JSON (azure-facts §1.2) and refuses non-JSON itself
    # (400). Python's parser takes the non-standard constant NaN, MAA's (RFC 8259) refuses it, so the
    # refusal here is MAA's and skr must pass its reason on.
    return _attest_maa(dev, b'{"a": NaN}')


def _policy_refuses(dev: DevProcess) -> HttpResult:
    create_exportable_rsa_key(dev, "bb-mismatched-policy", release_policy(dev, host_data="00" * 32))
    return _release(dev, kid="bb-mismatched-policy")


def _unknown_kid(dev: DevProcess) -> HttpResult:
    return _release(dev, kid="no-such-key")


def _unknown_version(dev: DevProcess) -> HttpResult:
    return _release(dev, kid="demo-rsa/00000000000000000000000000000000")


def _maa_down(dev: DevProcess) -> HttpResult:
    dev.arm_fault("maa", {"kind": "error_500", "endpoint": "maa.attest", "times": 3})
    return _attest_maa(dev)


def _vault_down(dev: DevProcess) -> HttpResult:
    dev.arm_fault("keyvault", {"kind": "error_500", "endpoint": "keyvault.release", "times": 3})
    return _release(dev)


def _maa_hangs(dev: DevProcess) -> HttpResult:
    # The MAA call's deadline is SKR_MAA_TIMEOUT (10 s, fixed in `skr dev`): this case takes that long.
    dev.arm_fault("maa", {"kind": "hang", "endpoint": "maa.attest", "delay": 60, "times": 1})
    return _attest_maa(dev)


def _maa_token_forged(dev: DevProcess) -> HttpResult:
    dev.arm_fault("maa", {"kind": "bad_signature", "endpoint": "maa.attest", "times": 1})
    return _attest_maa(dev)


def _maa_garbage(dev: DevProcess) -> HttpResult:
    dev.arm_fault("maa", {"kind": "malformed_json", "endpoint": "maa.attest", "times": 1})
    return _attest_maa(dev)


def _release_jws_forged(dev: DevProcess) -> HttpResult:
    dev.arm_fault("keyvault", {"kind": "bad_signature", "endpoint": "keyvault.release", "times": 1})
    return _release(dev)


def _release_jws_for_another_host(dev: DevProcess) -> HttpResult:
    dev.arm_fault("keyvault", {"kind": "unknown_kid", "endpoint": "keyvault.release", "times": 1})
    return _release(dev)


def _garbage_access_token(dev: DevProcess) -> HttpResult:
    return _release(dev, access_token="not-a-token")


def _wrong_audience_access_token(dev: DevProcess) -> HttpResult:
    return _release(dev, access_token=entra_access_token(dev, "https://managedhsm.azure.net"))


def _no_such_path(dev: DevProcess) -> HttpResult:
    return dev.api("GET", "/attest/nothing")


def _wrong_method(dev: DevProcess) -> HttpResult:
    return dev.api("GET", "/key/release")


def _wrong_method_status(dev: DevProcess) -> HttpResult:
    return dev.api("POST", "/status", {})


ERROR_CASES: dict[str, tuple[ErrorCase, int, str]] = {
    "bad_json": (_bad_json, 400, "bad_request"),
    "not_an_object": (_not_an_object, 400, "bad_request"),
    "empty_body": (_empty_body, 400, "bad_request"),
    "wrong_type": (_wrong_type, 400, "bad_request"),
    "bad_base64": (_bad_base64, 400, "bad_request"),
    "missing_runtime_data": (_missing_runtime_data, 400, "bad_request"),
    "missing_kid": (_missing_kid, 400, "bad_request"),
    "bad_kid": (_bad_kid, 400, "bad_request"),
    "bad_enc": (_bad_enc, 400, "bad_request"),
    "endpoint_scheme_http": (_endpoint_with_scheme_http, 400, "bad_request"),
    "too_large": (_too_large, 413, "body_too_large"),
    "not_allowed": (_not_allowed, 403, "endpoint_not_allowed"),
    "maa_rejects": (_maa_rejects, 403, "attestation_rejected"),
    "policy_refuses": (_policy_refuses, 403, "release_denied"),
    "unknown_kid": (_unknown_kid, 404, "key_not_found"),
    "unknown_version": (_unknown_version, 404, "key_not_found"),
    "maa_down": (_maa_down, 502, "upstream_unavailable"),
    "vault_down": (_vault_down, 502, "upstream_unavailable"),
    "maa_hangs": (_maa_hangs, 504, "upstream_timeout"),
    "maa_token_forged": (_maa_token_forged, 502, "invalid_upstream_response"),
    "maa_garbage": (_maa_garbage, 502, "invalid_upstream_response"),
    "release_jws_forged": (_release_jws_forged, 502, "invalid_upstream_response"),
    "release_jws_for_another_host": (_release_jws_for_another_host, 502, "invalid_upstream_response"),
    "garbage_access_token": (_garbage_access_token, 502, "identity_unavailable"),
    "wrong_audience_access_token": (_wrong_audience_access_token, 502, "identity_unavailable"),
    "no_such_path": (_no_such_path, 404, "not_found"),
    "wrong_method": (_wrong_method, 405, "method_not_allowed"),
    "wrong_method_status": (_wrong_method_status, 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_code(clean_faults: DevProcess, case: str) -> None:
    provoke, status, code = ERROR_CASES[case]
    assert_error(provoke(clean_faults), status, code)


def test_every_reachable_code_is_covered() -> None:
    reachable = {code for _, _, code in ERROR_CASES.values()}
    assert reachable == {
        "bad_request",
        "body_too_large",
        "endpoint_not_allowed",
        "attestation_rejected",
        "release_denied",
        "key_not_found",
        "upstream_unavailable",
        "upstream_timeout",
        "invalid_upstream_response",
        "identity_unavailable",
        "not_found",
        "method_not_allowed",
    }


def test_release_denied_names_the_failing_claim(clean_faults: DevProcess) -> None:
    create_exportable_rsa_key(clean_faults, "bb-denied-claim", release_policy(clean_faults, host_data="11" * 32))
    body = assert_error(_release(clean_faults, kid="bb-denied-claim"), 403, "release_denied")
    assert "x-ms-sevsnpvm-hostdata" in body["error"]


def test_attestation_rejected_passes_on_maas_reason(clean_faults: DevProcess) -> None:
    body = assert_error(_maa_rejects(clean_faults), 403, "attestation_rejected")
    assert "JSON" in body["error"]


def test_endpoint_not_allowed_says_how_to_allow_it(clean_faults: DevProcess) -> None:
    body = assert_error(_not_allowed(clean_faults), 403, "endpoint_not_allowed")
    assert "127.0.0.1:1" in body["error"] and "SKR_ALLOWED_AKV_ENDPOINTS" in body["error"]


def test_method_not_allowed_names_the_allowed_method(clean_faults: DevProcess) -> None:
    body = assert_error(_wrong_method(clean_faults), 405, "method_not_allowed")
    assert "POST" in body["error"]


def test_transient_vault_failure_is_retried_to_success(clean_faults: DevProcess) -> None:
    clean_faults.arm_fault("keyvault", {"kind": "error_503", "endpoint": "keyvault.release", "times": 1})
    result = _release(clean_faults)
    assert result.status == 200, result.body
    assert json.loads(result.json()["key"])["kty"] == "RSA"


def test_sidecar_still_serves_after_every_error(clean_faults: DevProcess) -> None:
    assert clean_faults.api("GET", "/status").status == 200
    assert _release(clean_faults).status == 200
