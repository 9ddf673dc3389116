"""A full session at DEBUG log level leaves no key, token or key bytes anywhere in the output.

Why: logs leave the TEE (container runtimes ship them to the host and on to log stores), so a
single private-key member or token in a log line defeats attestation altogether. This runs the
whole stack as one process, ``skr dev --log-level debug`` with stdout and stderr captured to one
file (the sidecar's log and the emulators' log alike), releases every demo key, attests to MAA,
passes access tokens in requests, walks the error paths that handle tokens and JWS, stops the
process, and then searches the complete output for every secret the test saw.

Every secret is searched for as itself and re-encoded (hex, standard base64, base64url, decimal
for key integers), and as any 24-character piece of each encoding, so a truncated or re-encoded
leak is found too. Failure messages name the secret and encoding, never the value.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.blackbox.conftest import DevProcess, HttpResult, assert_error, b64, entra_access_token, running_dev

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
WINDOW = 24
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
BASE64URL_JSON = re.compile(r"eyJ[A-Za-z0-9_-]{16,}")
BEARER_TOKEN = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}")
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


@dataclass
class Transcript:
    """What the session produced: the secrets the client saw, every response, and the whole output."""

    log: str = ""
    returncode: int | None = None
    jwks: dict[str, dict[str, Any]] = field(default_factory=dict)
    jwk_strings: list[str] = field(default_factory=list)
    maa_tokens: list[str] = field(default_factory=list)
    access_tokens: list[str] = field(default_factory=list)
    federated_token: str = ""
    responses: list[HttpResult] = field(default_factory=list)


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _encodings(value: str, *, integer: bool) -> dict[str, str]:
    """``value`` (base64url, as JWK members are) and its re-encodings."""
    raw = _b64url_decode(value)
    forms = {
        "base64url": value,
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "base64": base64.b64encode(raw).decode(),
        "base64url-padded": base64.urlsafe_b64encode(raw).decode(),
    }
    if integer:
        forms["decimal"] = str(int.from_bytes(raw, "big"))
    return forms


def _windows(text: str) -> Iterable[str]:
    if len(text) <= WINDOW:
        yield text
        return
    for start in range(len(text) - WINDOW + 1):
        yield text[start : start + WINDOW]


class Haystack:
    """The captured output, indexed by every WINDOW-character piece for fast fragment search."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._pieces = set(_windows(text))

    def contains_any_piece_of(self, secret: str) -> bool:
        if len(secret) < WINDOW:
            return secret in self.text
        return any(piece in self._pieces for piece in _windows(secret))


def _run_session(dev: DevProcess, transcript: Transcript) -> None:
    def keep(result: HttpResult) -> HttpResult:
        transcript.responses.append(result)
        return result

    maa = dev.host("maa")
    transcript.federated_token = Path(dev.state["federated_token_file"]).read_text(encoding="utf-8").strip()

    # Every demo key through the sidecar's own workload identity.
    for key in dev.state["keys"]:
        result = keep(dev.api("POST", "/key/release", {"kid": key["name"], "akv_endpoint": key["vault_url"]}))
        assert result.status == 200, result.body
        transcript.jwk_strings.append(result.json()["key"])
        transcript.jwks[key["name"]] = json.loads(result.json()["key"])

    # Access tokens passed in requests (the Go sidecar's optional field), on both vault flavours.
    vault_token = entra_access_token(dev, "https://vault.azure.net")
    hsm_token = entra_access_token(dev, "https://managedhsm.azure.net")
    transcript.access_tokens += [vault_token, hsm_token]
    for name, token in (("demo-ec", vault_token), ("demo-oct", hsm_token)):
        key = dev.key(name)
        body = {"kid": name, "akv_endpoint": key["vault_url"], "maa_endpoint": maa, "access_token": token}
        result = keep(dev.api("POST", "/key/release", body))
        assert result.status == 200, result.body
        transcript.jwk_strings.append(result.json()["key"])
        assert json.loads(result.json()["key"]) == transcript.jwks[name]

    # MAA tokens handed to the caller.
    for runtime in (b'{"transcript": 1}', b'{"transcript": 2}'):
        result = keep(dev.api("POST", "/attest/maa", {"maa_endpoint": maa, "runtime_data": b64(runtime)}))
        assert result.status == 200, result.body
        transcript.maa_tokens.append(result.json()["token"])

    # Error paths that hold tokens or JWS when they fail.
    kv = dev.host("keyvault")
    wrong_audience = entra_access_token(dev, "https://managedhsm.azure.net")
    transcript.access_tokens.append(wrong_audience)
    body = {"kid": "demo-rsa", "akv_endpoint": kv, "access_token": wrong_audience}
    assert_error(keep(dev.api("POST", "/key/release", body)), 502, "identity_unavailable")
    body = {"kid": "no-such-key", "akv_endpoint": kv, "access_token": vault_token}
    assert_error(keep(dev.api("POST", "/key/release", body)), 404, "key_not_found")
    body = {"kid": "demo-rsa", "akv_endpoint": "127.0.0.1:1", "access_token": vault_token}
    assert_error(keep(dev.api("POST", "/key/release", body)), 403, "endpoint_not_allowed")
    dev.arm_fault("keyvault", {"kind": "bad_signature", "endpoint": "keyvault.release", "times": 1})
    body = {"kid": "demo-rsa", "akv_endpoint": kv, "access_token": vault_token}
    assert_error(keep(dev.api("POST", "/key/release", body)), 502, "invalid_upstream_response")
    for kind in ("bad_signature", "expired_token", "unknown_kid"):
        dev.arm_fault("maa", {"kind": kind, "endpoint": "maa.attest", "times": 1})
        result = keep(dev.api("POST", "/attest/maa", {"maa_endpoint": maa, "runtime_data": b64(b"{}")}))
        assert_error(result, 502, "invalid_upstream_response")
    dev.arm_fault("maa", {"kind": "malformed_json", "endpoint": "maa.attest", "times": 1})
    result = keep(dev.api("POST", "/attest/maa", {"maa_endpoint": maa, "runtime_data": b64(b"{}")}))
    assert_error(result, 502, "invalid_upstream_response")


@pytest.fixture(scope="module")
def transcript(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transcript]:
    record = Transcript()
    with running_dev(tmp_path_factory.mktemp("skr-dev-secrets"), log_level="debug") as dev:
        try:
            _run_session(dev, record)
        finally:
            record.returncode = dev.stop()  # stopped before reading: every buffered line is written
            record.log = dev.log_text()
    yield record


@pytest.fixture(scope="module")
def haystack(transcript: Transcript) -> Haystack:
    return Haystack(transcript.log)


def _secret_needles(transcript: Transcript) -> dict[str, str]:
    """Every secret the client saw, by a label that does not reveal it (searched piece by piece)."""
    needles: dict[str, str] = {}
    for name, jwk in transcript.jwks.items():
        for member in PRIVATE_MEMBERS:
            if member in jwk:
                for encoding, value in _encodings(jwk[member], integer=member != "k").items():
                    needles[f"{name} private member {member!r} as {encoding}"] = value
    for index, token in enumerate(transcript.maa_tokens):
        needles[f"MAA token #{index}"] = token
        for part, segment in zip(("header", "payload", "signature"), token.split("."), strict=True):
            needles[f"MAA token #{index} {part} segment"] = segment
    for index, token in enumerate([*transcript.access_tokens, transcript.federated_token]):
        label = "federated token" if index == len(transcript.access_tokens) else f"access token #{index}"
        needles[label] = token
        needles[f"{label} signature segment"] = token.split(".")[2]
    return needles


# --- the transcript is real ------------------------------------------------------------------------


def test_session_was_logged_at_debug_and_stopped_cleanly(transcript: Transcript) -> None:
    assert transcript.returncode == 0
    assert " DEBUG " in transcript.log
    assert transcript.log.count("released key ") >= 5
    assert "identity_unavailable" in transcript.log and "invalid_upstream_response" in transcript.log
    assert "emulator keyvault listening" in transcript.log  # the emulators' log is in the same output


def test_every_private_member_was_released(transcript: Transcript) -> None:
    assert set(transcript.jwks) == {"demo-rsa", "demo-ec", "demo-oct"}
    assert {"d", "p", "q", "dp", "dq", "qi"} <= set(transcript.jwks["demo-rsa"])
    assert "d" in transcript.jwks["demo-ec"] and "k" in transcript.jwks["demo-oct"]


def test_the_search_finds_a_planted_secret(transcript: Transcript) -> None:
    """Control: the fragment search would see a member that leaked in re-encoded, truncated form."""
    member = transcript.jwks["demo-rsa"]["qi"]
    planted = Haystack("some log line ... " + _encodings(member, integer=True)["hex"][10:50] + " ...")
    assert planted.contains_any_piece_of(_encodings(member, integer=True)["hex"])
    assert not Haystack(transcript.log[:200]).contains_any_piece_of(_encodings(member, integer=True)["hex"])


# --- nothing secret in the output ------------------------------------------------------------------


def test_no_secret_in_any_log_line(transcript: Transcript, haystack: Haystack) -> None:
    leaked = [label for label, value in _secret_needles(transcript).items() if haystack.contains_any_piece_of(value)]
    assert leaked == []


def test_no_released_jwk_document_in_any_log_line(transcript: Transcript, haystack: Haystack) -> None:
    # Whole documents only: their public members (n, x, y) are not secret on their own.
    assert len(transcript.jwk_strings) == 5
    assert not any(text in haystack.text for text in transcript.jwk_strings)
    assert '"kty":' not in haystack.text and '"d":' not in haystack.text


def test_no_jwt_shaped_string_in_any_log_line(haystack: Haystack) -> None:
    assert JWT_SHAPED.search(haystack.text) is None
    assert BASE64URL_JSON.search(haystack.text) is None


def test_no_pem_private_key_in_any_log_line(haystack: Haystack) -> None:
    assert PEM_PRIVATE.search(haystack.text) is None
    assert "BEGIN PRIVATE KEY" not in haystack.text


def test_no_bearer_token_in_any_log_line(haystack: Haystack) -> None:
    assert BEARER_TOKEN.search(haystack.text) is None


def test_no_secret_in_any_error_response(transcript: Transcript) -> None:
    errors = [r for r in transcript.responses if r.status >= 400]
    assert len(errors) >= 7
    bodies = Haystack("\n".join(r.body.decode() for r in errors))
    leaked = [label for label, value in _secret_needles(transcript).items() if bodies.contains_any_piece_of(value)]
    assert leaked == []
    assert JWT_SHAPED.search(bodies.text) is None and BEARER_TOKEN.search(bodies.text) is None
