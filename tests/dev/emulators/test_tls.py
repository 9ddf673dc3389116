"""The emulator test CA: real chains, SANs, and TLS handshakes over loopback."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509 import verification

from skr_dev.emulators.server import EmulatorServer
from skr_dev.emulators.tls import TestCertificateAuthority, self_signed_certificate


def test_server_certificate_has_ip_and_dns_sans(emulator_ca: TestCertificateAuthority) -> None:
    issued = emulator_ca.issue_server_certificate(["127.0.0.1", "localhost", "::1", "vault.localhost"])
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "vault.localhost"]
    assert issued.chain == (issued.certificate, emulator_ca.intermediate_certificate, emulator_ca.root_certificate)


def test_chain_verifies_to_the_root_for_the_loopback_ip(emulator_ca: TestCertificateAuthority) -> None:
    issued = emulator_ca.issue_server_certificate(["127.0.0.1"])
    store = verification.Store([emulator_ca.root_certificate])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    chain = verifier.verify(issued.certificate, [emulator_ca.intermediate_certificate])
    assert chain[-1] == emulator_ca.root_certificate


def test_chain_does_not_verify_for_another_host(emulator_ca: TestCertificateAuthority) -> None:
    issued = emulator_ca.issue_server_certificate(["127.0.0.1"])
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([emulator_ca.root_certificate]))
        .build_server_verifier(x509.DNSName("vault.azure.net"))
    )
    with pytest.raises(verification.VerificationError):
        verifier.verify(issued.certificate, [emulator_ca.intermediate_certificate])


def test_ca_pem_is_the_root_only(emulator_ca: TestCertificateAuthority, tmp_path: Path) -> None:
    certificates = x509.load_pem_x509_certificates(emulator_ca.ca_pem)
    assert certificates == [emulator_ca.root_certificate]
    path = emulator_ca.write_ca_file(tmp_path / "nested")
    assert path.read_bytes() == emulator_ca.ca_pem
    assert b"PRIVATE" not in path.read_bytes()


def test_issue_requires_hostnames(emulator_ca: TestCertificateAuthority) -> None:
    with pytest.raises(ValueError, match="hostname"):
        emulator_ca.issue_server_certificate([])
    with pytest.raises(ValueError, match="at most"):
        emulator_ca.issue_server_certificate([f"h{i}.localhost" for i in range(40)])


def test_issued_certificate_repr_hides_the_key(emulator_ca: TestCertificateAuthority) -> None:
    issued = emulator_ca.issue_server_certificate(["127.0.0.1"])
    assert "PRIVATE" not in repr(issued)
    assert issued.private_key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert x509.load_pem_x509_certificates(issued.chain_pem()) == list(issued.chain)


def test_self_signed_certificate_names_its_cn() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_certificate("https://127.0.0.1:1234", key)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=https://127.0.0.1:1234"
    cert.verify_directly_issued_by(cert)


def test_server_context_is_cached_per_hostname_set(emulator_ca: TestCertificateAuthority) -> None:
    first = emulator_ca.server_ssl_context(("127.0.0.1",))
    assert emulator_ca.server_ssl_context(("127.0.0.1",)) is first
    assert emulator_ca.server_ssl_context(("127.0.0.1", "localhost")) is not first


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def test_https_handshake_with_client_context(emulator_ca: TestCertificateAuthority) -> None:
    app = web.Application()
    app.router.add_get("/", _hello, name="test.hello")
    server = EmulatorServer("tls-test")
    await server.start(app, ssl_context=emulator_ca.server_ssl_context())
    try:
        assert server.url.startswith("https://127.0.0.1:")
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url + "/", ssl=emulator_ca.client_ssl_context()) as response,
        ):
            assert await response.text() == "hello"
        # The same server is NOT trusted by a client holding another CA.
        other = TestCertificateAuthority.create("unrelated")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(server.url + "/", ssl=other.client_ssl_context())
        # ... nor by the system trust store.
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(server.url + "/", ssl=ssl.create_default_context())
    finally:
        await server.stop()
