"""Endpoint parsing and the allow-list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skr.core.endpoints import AllowList, Endpoint, EndpointKind
from skr.errors import BadRequestError, EndpointNotAllowedError


@pytest.mark.parametrize(
    ("text", "netloc"),
    [
        ("sharedeus.eus.attest.azure.net", "sharedeus.eus.attest.azure.net"),
        ("https://MyVault.vault.azure.net/", "myvault.vault.azure.net"),
        ("myvault.vault.azure.net:443", "myvault.vault.azure.net"),
        ("127.0.0.1:8443", "127.0.0.1:8443"),
        ("https://[::1]:9443", "[::1]:9443"),
        ("  kv.vault.azure.net ", "kv.vault.azure.net"),
    ],
)
def test_accepted_forms(text: str, netloc: str) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint.netloc == netloc
    assert endpoint.base_url == f"https://{netloc}"


@pytest.mark.parametrize(
    "text",
    ["", "http://kv.vault.azure.net", "https://https://kv", "kv.vault.azure.net/keys", "user@kv.vault.azure.net",
     "kv.vault.azure.net?x=1", "[::1", "kv:0", "kv:99999", "bad_host", "-bad.net", "a" * 400, "kv..net"],
)  # fmt: skip
def test_rejected_forms(text: str) -> None:
    with pytest.raises(BadRequestError):
        Endpoint.parse(text)


def test_managed_hsm_detection() -> None:
    assert Endpoint.parse("x.managedhsm.azure.net").is_managed_hsm
    assert not Endpoint.parse("x.vault.azure.net").is_managed_hsm


def test_default_suffixes() -> None:
    allow = AllowList()
    assert not allow.pinned
    allow.check(Endpoint.parse("sharedeus.eus.attest.azure.net"), EndpointKind.MAA)
    allow.check(Endpoint.parse("kv.vault.azure.net"), EndpointKind.KEY_VAULT)
    allow.check(Endpoint.parse("hsm.managedhsm.azure.net"), EndpointKind.KEY_VAULT)
    for host, kind in [
        ("evil.example.com", EndpointKind.KEY_VAULT),
        ("kv.vault.azure.net.evil.com", EndpointKind.KEY_VAULT),
        ("kv.vault.azure.net:8443", EndpointKind.KEY_VAULT),
        ("kv.vault.azure.net", EndpointKind.MAA),
        ("sharedeus.eus.attest.azure.net", EndpointKind.KEY_VAULT),
    ]:
        with pytest.raises(EndpointNotAllowedError, match="not in the allow-list"):
            allow.check(Endpoint.parse(host), kind)


def test_exact_hosts_replace_suffixes() -> None:
    allow = AllowList.from_hosts(maa=["https://127.0.0.1:8443"], vault=["127.0.0.1:9443"])
    assert allow.pinned
    allow.check(Endpoint.parse("127.0.0.1:8443"), EndpointKind.MAA)
    with pytest.raises(EndpointNotAllowedError):
        allow.check(Endpoint.parse("sharedeus.eus.attest.azure.net"), EndpointKind.MAA)
    with pytest.raises(EndpointNotAllowedError):
        allow.check(Endpoint.parse("127.0.0.1:8443"), EndpointKind.KEY_VAULT)


@given(st.text(max_size=60))
def test_parse_never_crashes(text: str) -> None:
    try:
        endpoint = Endpoint.parse(text)
    except BadRequestError:
        return
    assert Endpoint.parse(endpoint.base_url) == endpoint


@pytest.mark.parametrize(
    "text",
    [
        "evil\n.vault.azure.net",  # `$` matched before the newline: the suffix check passed (issue 13)
        "myvault.vault.azure.net\n:443",
        "127.0.0.1:\u00b9",  # a superscript digit: isdigit() said yes, int() raised → 500
        "127.0.0.1:\uff18\uff14\uff14\uff13",  # full-width digits: int() accepted them as 8443
        "127.0.0.1:000443",
    ],
)
def test_non_ascii_and_newline_spellings_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequestError):
        Endpoint.parse(text)
