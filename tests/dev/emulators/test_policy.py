"""The key release policy engine: parsing (strict, bounded) and evaluation (first failing claim)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skr.errors import BadRequestError
from skr_dev.emulators import policy
from skr_dev.emulators.policy import AllOf, AnyOf, ClaimEquals, evaluate, parse_policy

MAA = "https://sharedeus.eus.attest.azure.net"
HOSTDATA = "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"

ACI_POLICY = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": MAA,
            "allOf": [
                {"claim": "x-ms-sevsnpvm-hostdata", "equals": HOSTDATA},
                {"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
                {"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"},
            ],
        }
    ],
}

CLAIMS: dict[str, Any] = {
    "iss": MAA,
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-compliant-uvm",
    "x-ms-sevsnpvm-hostdata": HOSTDATA,
    "x-ms-sevsnpvm-is-debuggable": False,
    "x-ms-sevsnpvm-vmpl": 0,
    "x-ms-sevsnpvm-guestsvn": 2,
    "x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm", "nested": {"deep": True}},
    "x-ms-runtime": {"keys": [{"kid": "k"}]},
    "sdk-test": True,
}


def _policy(conditions: list[Any], *, kind: str = "allOf", authority: str = MAA, **extra: Any) -> bytes:
    return json.dumps({"anyOf": [{"authority": authority, kind: conditions}], **extra}).encode()


def _decide(document: bytes | dict[str, Any], claims: dict[str, Any] = CLAIMS, issuer: str = MAA) -> str | None:
    raw = json.dumps(document).encode() if isinstance(document, dict) else document
    decision = evaluate(parse_policy(raw), claims, issuer)
    if decision.allowed:
        assert decision.failure is None
        return None
    assert decision.failure is not None
    return decision.failure.message()


# --- parsing -------------------------------------------------------------------------------------


def test_parse_aci_policy_into_frozen_types() -> None:
    parsed = parse_policy(json.dumps(ACI_POLICY).encode())
    assert parsed.version == "1.0.0"
    assert len(parsed.authorities) == 1
    assert parsed.authorities[0].authority == MAA
    rule = parsed.authorities[0].rule
    assert isinstance(rule, AllOf)
    assert rule.conditions[0] == ClaimEquals("x-ms-sevsnpvm-hostdata", HOSTDATA)
    with pytest.raises(AttributeError):
        parsed.version = "0.2"  # type: ignore[misc]


def test_parse_real_mhsm_policy(real_data: Path) -> None:
    expected = json.loads((real_data / "expected.json").read_text())
    document = expected["akv_mhsm_release_response"]["release_policy_decoded"]
    parsed = parse_policy(json.dumps(document))
    assert parsed.authorities[0].authority == "https://timovkeyvaultsite.azurewebsites.net/"
    # The recorded service released with a token whose sdk-test claim was the boolean true.
    assert evaluate(parsed, {"sdk-test": True}, "https://timovkeyvaultsite.azurewebsites.net").allowed


def test_parse_legacy_form_and_versions() -> None:
    legacy = _policy([{"claim": "sdk-test", "condition": "equals", "value": "true"}], version="0.2")
    parsed = parse_policy(legacy)
    assert parsed.version == "0.2"
    assert parsed.authorities[0].rule == AllOf((ClaimEquals("sdk-test", "true"),))
    assert parse_policy(_policy([{"claim": "a", "equals": "b"}])).version is None


def test_parse_nested_groups() -> None:
    document = _policy(
        [
            {"claim": "x-ms-compliance-status", "equals": "azure-compliant-cvm"},
            {
                "anyOf": [
                    {"claim": "x-ms-attestation-type", "equals": "tdxvm"},
                    {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                ]
            },
        ]
    )
    rule = parse_policy(document).authorities[0].rule
    assert isinstance(rule, AllOf) and isinstance(rule.conditions[1], AnyOf)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"", "not valid UTF-8 JSON"),
        (b"\xff", "not valid UTF-8 JSON"),
        (b"[]", "JSON object"),
        (b'{"anyOf": [], "anyOf": []}', "not valid UTF-8 JSON"),
        (b'{"version": "1.0.0"}', "non-empty 'anyOf'"),
        (b'{"anyOf": []}', "non-empty 'anyOf'"),
        (b'{"anyOf": [1]}', "must be an object"),
        (b'{"anyOf": [{"allOf": [{"claim": "a", "equals": "b"}]}]}', "'authority'"),
        (_policy([{"claim": "a", "equals": "b"}], authority="http://x"), "https"),
        (_policy([{"claim": "a", "equals": "b"}], version="1.0.2"), "'version'"),
        (_policy([{"claim": "a", "equals": "b"}], extra=1), "unexpected top-level"),
        (
            json.dumps(
                {
                    "anyOf": [
                        {
                            "authority": MAA,
                            "allOf": [{"claim": "a", "equals": "b"}],
                            "anyOf": [{"claim": "a", "equals": "b"}],
                        }
                    ]
                }
            ).encode(),
            "exactly one of",
        ),
        (_policy([]), "non-empty list"),
        (_policy([{"claim": "a"}]), "no operator"),
        (_policy([{"claim": "", "equals": "b"}]), "'claim'"),
        (_policy([{"claim": "a..b", "equals": "b"}]), "empty path segment"),
        (_policy([{"claim": "a", "equals": None}]), "string, number or boolean"),
        (_policy([{"claim": "a", "equals": {"x": 1}}]), "string, number or boolean"),
        (_policy([{"claim": "a", "equals": "b", "note": "x"}]), "unexpected members"),
        (_policy([{"claim": "a", "notEquals": "b"}]), "operator 'notEquals' is not supported"),
        (_policy([{"claim": "a", "greater": 1}]), "operator 'greater' is not supported"),
        (_policy([{"claim": "a", "exists": True}]), "operator 'exists' is not supported"),
        (_policy([{"claim": "a", "condition": "less", "value": 1}]), "operator 'less' is not supported"),
        (_policy([{"claim": "a", "condition": "like", "value": 1}]), "unknown condition operator"),
        (_policy([{"allOf": [{"claim": "a", "equals": "b"}], "anyOf": []}]), "needs 'claim'"),
        (b"[" * 60000, "not valid UTF-8 JSON"),
        (b" " * (policy.MAX_POLICY_BYTES + 1), "larger than"),
    ],
)
def test_parse_rejections(document: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as info:
        parse_policy(document)
    assert info.value.message.startswith("Key Release Policy: ")


def test_parse_depth_and_width_bounds() -> None:
    node: dict[str, Any] = {"claim": "a", "equals": "b"}
    for _ in range(policy.MAX_DEPTH + 1):
        node = {"allOf": [node]}
    with pytest.raises(BadRequestError, match="nested deeper"):
        parse_policy(_policy([node]))
    wide = [{"claim": f"c{i}", "equals": "v"} for i in range(policy.MAX_CONDITIONS + 1)]
    with pytest.raises(BadRequestError, match="more than"):
        parse_policy(_policy(wide))
    many = {"anyOf": [{"authority": MAA, "allOf": [{"claim": "a", "equals": "b"}]}] * (policy.MAX_AUTHORITIES + 1)}
    with pytest.raises(BadRequestError, match="authorities"):
        parse_policy(json.dumps(many))


def test_canonical_json_is_compact_and_keeps_order() -> None:
    pretty = (
        b'{\n  "version": "1.0.0",\n  "anyOf": [ {"authority": "https://a",'
        b' "allOf": [{"claim": "c", "equals": "\xc3\xa9"}]} ]\n}'
    )
    assert policy.canonical_json(pretty) == (
        '{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"é"}]}]}'.encode()
    )


# --- evaluation table ------------------------------------------------------------------------------

EVALUATION_TABLE: list[tuple[str, Any, dict[str, Any], str, str | None]] = [
    ("aci policy matches", ACI_POLICY, CLAIMS, MAA, None),
    (
        "hostdata mismatch",
        ACI_POLICY,
        {**CLAIMS, "x-ms-sevsnpvm-hostdata": "00" * 32},
        MAA,
        "claim 'x-ms-sevsnpvm-hostdata' is '" + "00" * 32 + "'; the policy requires",
    ),
    (
        "compliance mismatch",
        ACI_POLICY,
        {**CLAIMS, "x-ms-compliance-status": "azure-signed-katacc-uvm"},
        MAA,
        "claim 'x-ms-compliance-status' is 'azure-signed-katacc-uvm'",
    ),
    (
        "debuggable mismatch (bool claim, string policy)",
        ACI_POLICY,
        {**CLAIMS, "x-ms-sevsnpvm-is-debuggable": True},
        MAA,
        "claim 'x-ms-sevsnpvm-is-debuggable' is true; the policy requires 'false'",
    ),
    (
        "vmpl mismatch (int claim, string policy)",
        ACI_POLICY,
        {**CLAIMS, "x-ms-sevsnpvm-vmpl": 1},
        MAA,
        "claim 'x-ms-sevsnpvm-vmpl' is 1; the policy requires '0'",
    ),
    (
        "first failing claim is named when several fail",
        ACI_POLICY,
        {**CLAIMS, "x-ms-compliance-status": "x", "x-ms-sevsnpvm-vmpl": 3},
        MAA,
        "claim 'x-ms-compliance-status'",
    ),
    (
        "hex compared case-insensitively (UNCONFIRMED)",
        ACI_POLICY,
        {**CLAIMS, "x-ms-sevsnpvm-hostdata": HOSTDATA.upper()},
        MAA,
        None,
    ),
    (
        "missing claim fails",
        ACI_POLICY,
        {k: v for k, v in CLAIMS.items() if k != "x-ms-sevsnpvm-vmpl"},
        MAA,
        "claim 'x-ms-sevsnpvm-vmpl' is missing; the policy requires '0'",
    ),
    (
        "null claim fails like a missing one",
        ACI_POLICY,
        {**CLAIMS, "x-ms-sevsnpvm-vmpl": None},
        MAA,
        "claim 'x-ms-sevsnpvm-vmpl' is missing",
    ),
    (
        "authority with trailing slash vs iss without",
        json.loads(_policy([{"claim": "sdk-test", "equals": "true"}], authority=MAA + "/")),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "iss with trailing slash vs authority without",
        json.loads(_policy([{"claim": "sdk-test", "equals": "true"}])),
        CLAIMS,
        MAA + "/",
        None,
    ),
    (
        "authority host case-insensitive (UNCONFIRMED)",
        json.loads(_policy([{"claim": "sdk-test", "equals": "true"}], authority=MAA.upper().replace("HTTPS", "https"))),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "authority path is case-sensitive",
        json.loads(_policy([{"claim": "sdk-test", "equals": "true"}], authority="https://issuer.example/Tenant")),
        CLAIMS,
        "https://issuer.example/tenant",
        "no authority in the key release policy matches the token issuer 'https://issuer.example/tenant'",
    ),
    (
        "wrong issuer",
        ACI_POLICY,
        CLAIMS,
        "https://sharedwus.wus.attest.azure.net",
        "no authority in the key release policy matches the token issuer",
    ),
    ("bool policy value", json.loads(_policy([{"claim": "sdk-test", "equals": True}])), CLAIMS, MAA, None),
    (
        "int policy value vs int claim",
        json.loads(_policy([{"claim": "x-ms-sevsnpvm-guestsvn", "equals": 2}])),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "int policy value vs string claim '02' does not match",
        json.loads(_policy([{"claim": "x-ms-sevsnpvm-guestsvn", "equals": 2}])),
        {**CLAIMS, "x-ms-sevsnpvm-guestsvn": "02"},
        MAA,
        "claim 'x-ms-sevsnpvm-guestsvn' is '02'; the policy requires '2'",
    ),
    (
        "string 'True' does not match bool true",
        json.loads(_policy([{"claim": "sdk-test", "equals": "True"}])),
        CLAIMS,
        MAA,
        "claim 'sdk-test' is true; the policy requires 'True'",
    ),
    (
        "non-hex strings are case-sensitive",
        json.loads(_policy([{"claim": "x-ms-attestation-type", "equals": "SEVSNPVM"}])),
        CLAIMS,
        MAA,
        "claim 'x-ms-attestation-type' is 'sevsnpvm'",
    ),
    (
        "dotted path",
        json.loads(_policy([{"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"}])),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "deep dotted path bool",
        json.loads(_policy([{"claim": "x-ms-isolation-tee.nested.deep", "equals": "true"}])),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "dotted path through a non-object is missing",
        json.loads(_policy([{"claim": "x-ms-attestation-type.inner", "equals": "x"}])),
        CLAIMS,
        MAA,
        "claim 'x-ms-attestation-type.inner' is missing",
    ),
    (
        "object claim never matches",
        json.loads(_policy([{"claim": "x-ms-isolation-tee", "equals": "{}"}])),
        CLAIMS,
        MAA,
        "claim 'x-ms-isolation-tee' is an object or array",
    ),
    (
        "array claim never matches (arrays are not navigated)",
        json.loads(_policy([{"claim": "x-ms-runtime.keys", "equals": "[]"}])),
        CLAIMS,
        MAA,
        "claim 'x-ms-runtime.keys' is an object or array",
    ),
    (
        "nested anyOf in allOf: second alternative matches",
        json.loads(
            _policy(
                [
                    {"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
                    {
                        "anyOf": [
                            {"claim": "x-ms-attestation-type", "equals": "tdxvm"},
                            {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                        ]
                    },
                ]
            )
        ),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "nested anyOf in allOf: no alternative matches names the first",
        json.loads(
            _policy(
                [
                    {"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
                    {
                        "anyOf": [
                            {"claim": "x-ms-attestation-type", "equals": "tdxvm"},
                            {"claim": "x-ms-sevsnpvm-vmpl", "equals": "3"},
                        ]
                    },
                ]
            )
        ),
        CLAIMS,
        MAA,
        "claim 'x-ms-attestation-type' is 'sevsnpvm'; the policy requires 'tdxvm'"
        " (no alternative of an 'anyOf' matched)",
    ),
    (
        "authority-level anyOf",
        json.loads(
            _policy(
                [{"claim": "x-ms-sevsnpvm-vmpl", "equals": "3"}, {"claim": "sdk-test", "equals": "true"}], kind="anyOf"
            )
        ),
        CLAIMS,
        MAA,
        None,
    ),
    (
        "nested allOf inside anyOf fails on its first claim",
        json.loads(
            _policy(
                [{"allOf": [{"claim": "sdk-test", "equals": "true"}, {"claim": "x-ms-sevsnpvm-vmpl", "equals": "2"}]}],
                kind="anyOf",
            )
        ),
        CLAIMS,
        MAA,
        "claim 'x-ms-sevsnpvm-vmpl' is 0; the policy requires '2'",
    ),
    (
        "legacy form mismatch",
        json.loads(_policy([{"claim": "sdk-test", "condition": "equals", "value": "false"}])),
        CLAIMS,
        MAA,
        "claim 'sdk-test' is true; the policy requires 'false'",
    ),
    (
        "second authority with the same issuer can allow",
        {
            "anyOf": [
                {"authority": MAA, "allOf": [{"claim": "sdk-test", "equals": "false"}]},
                {"authority": MAA + "/", "allOf": [{"claim": "sdk-test", "equals": "true"}]},
            ]
        },
        CLAIMS,
        MAA,
        None,
    ),
    (
        "other authority's rule is not applied to this issuer",
        {
            "anyOf": [
                {"authority": "https://other.example", "allOf": [{"claim": "sdk-test", "equals": "true"}]},
                {"authority": MAA, "allOf": [{"claim": "sdk-test", "equals": "false"}]},
            ]
        },
        CLAIMS,
        MAA,
        "claim 'sdk-test' is true; the policy requires 'false'",
    ),
]


@pytest.mark.parametrize(
    ("document", "claims", "issuer", "expected"),
    [case[1:] for case in EVALUATION_TABLE],
    ids=[case[0] for case in EVALUATION_TABLE],
)
def test_evaluation_table(document: Any, claims: dict[str, Any], issuer: str, expected: str | None) -> None:
    message = _decide(document, claims, issuer)
    if expected is None:
        assert message is None
    else:
        assert message is not None and message.startswith(expected), message


# --- properties ------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)

_keywords = st.sampled_from(
    ["anyOf", "allOf", "authority", "claim", "equals", "condition", "value", "version", "notEquals", "x"]
)
_policyish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([MAA, "equals", "1.0.0", "a.b", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keywords, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300)
@given(_json_values | _policyish)
def test_random_json_never_crashes_the_parser(document: Any) -> None:
    try:
        parsed = parse_policy(json.dumps(document).encode())
    except BadRequestError:
        return
    assert isinstance(parsed, policy.ReleasePolicy)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        parse_policy(data)
    except BadRequestError:
        pass


_claims = st.dictionaries(
    st.sampled_from(["sdk-test", "x-ms-sevsnpvm-vmpl", "x-ms-attestation-type", "x-ms-isolation-tee"]),
    _json_values,
    max_size=4,
)
_conditions = st.recursive(
    st.builds(
        lambda claim, value: {"claim": claim, "equals": value},
        st.sampled_from(["sdk-test", "x-ms-sevsnpvm-vmpl", "x-ms-attestation-type", "x-ms-isolation-tee.a"]),
        st.booleans() | st.integers(-3, 3) | st.sampled_from(["true", "false", "0", "sevsnpvm", "AB", "ab"]),
    ),
    lambda inner: st.builds(
        lambda kind, items: {kind: items}, st.sampled_from(["allOf", "anyOf"]), st.lists(inner, min_size=1, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(
    st.lists(_conditions, min_size=1, max_size=4),
    st.sampled_from(["allOf", "anyOf"]),
    _claims,
    st.sampled_from([MAA, MAA + "/", "https://x"]),
)
def test_evaluation_is_deterministic_and_total(
    conditions: list[Any], kind: str, claims: dict[str, Any], issuer: str
) -> None:
    parsed = parse_policy(_policy(conditions, kind=kind))
    first = evaluate(parsed, claims, issuer)
    second = evaluate(parse_policy(_policy(conditions, kind=kind)), dict(reversed(list(claims.items()))), issuer)
    assert first == second
    assert first.allowed == (first.failure is None)
    if issuer == "https://x":
        assert not first.allowed and first.failure is not None and first.failure.claim is None
