"""A throw-away certificate authority so the emulators can speak real HTTPS on loopback.

The Azure SDKs refuse bearer tokens over plain HTTP, and clients must exercise real certificate
verification, so every HTTPS emulator presents a leaf issued by this CA. The CA lives only in
memory for the life of the process; ``write_ca_file`` drops the root certificate (public part only)
where a client can point ``connection_verify`` / ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE``.

Usage::

    ca = TestCertificateAuthority.create("my tests")
    server_ctx = ca.server_ssl_context()            # for EmulatorServer.start(..., ssl_context=...)
    client_ctx = ca.client_ssl_context()            # for aiohttp/ssl clients
    ca_file = ca.write_ca_file(tmp_path)            # for azure-identity / azure-keyvault-keys
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["IssuedCertificate", "TestCertificateAuthority", "self_signed_certificate"]

_KEY_SIZE = 2048
_CA_LIFETIME = dt.timedelta(days=3650)
_LEAF_LIFETIME = dt.timedelta(days=365)
_BACKDATE = dt.timedelta(hours=1)
_MAX_HOSTNAMES = 32


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key(key_size: int = _KEY_SIZE) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "skr emulators (TEST ONLY)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _subject_alternative_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf certificate, its private key and the chain ``(leaf, intermediate, root)``."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...]

    def chain_pem(self) -> bytes:
        """Leaf then intermediate then root, PEM (what a TLS server presents, plus the root)."""
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.chain)

    def private_key_pem(self) -> bytes:
        """The leaf's private key as unencrypted PKCS#8 PEM (test material only)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"IssuedCertificate(subject={self.certificate.subject.rfc4514_string()!r})"


def self_signed_certificate(
    common_name: str,
    private_key: rsa.RSAPrivateKey,
    *,
    lifetime: dt.timedelta = _LEAF_LIFETIME,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A self-signed RSA certificate with ``CN=common_name`` (used for token-signing keys)."""
    start = (now or _now()) - _BACKDATE
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: rsa.RSAPrivateKey,
    *,
    start: dt.datetime,
    path_length: int,
) -> x509.CertificateBuilder:
    """A CA certificate (cert and CRL signing only) for ``key``, valid from ``start``; the caller signs it."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


class TestCertificateAuthority:
    """An in-memory root + intermediate CA (RSA) that issues loopback server certificates."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        *,
        root: x509.Certificate,
        root_key: rsa.RSAPrivateKey,
        intermediate: x509.Certificate,
        intermediate_key: rsa.RSAPrivateKey,
    ) -> None:
        self.root_certificate = root
        self.intermediate_certificate = intermediate
        self._root_key = root_key
        self._intermediate_key = intermediate_key
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    @classmethod
    def create(cls, name: str = "skr emulator test CA") -> TestCertificateAuthority:
        """Generate a fresh root and intermediate named after ``name``."""
        start = _now() - _BACKDATE
        root_key = _new_key()
        root_name = _name(f"{name} root")
        root = _ca_builder(root_name, root_name, root_key, start=start, path_length=1).sign(root_key, hashes.SHA256())
        intermediate_key = _new_key()
        intermediate = (
            _ca_builder(_name(f"{name} intermediate"), root_name, intermediate_key, start=start, path_length=0)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256())
        )
        return cls(root=root, root_key=root_key, intermediate=intermediate, intermediate_key=intermediate_key)

    def __repr__(self) -> str:
        return f"TestCertificateAuthority(root={self.root_certificate.subject.rfc4514_string()!r})"

    @property
    def ca_pem(self) -> bytes:
        """The root certificate only, PEM: what a client should trust."""
        return self.root_certificate.public_bytes(serialization.Encoding.PEM)

    def write_ca_file(self, directory: Path) -> Path:
        """Write ``ca.pem`` (the root certificate) into ``directory`` and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "ca.pem"
        path.write_bytes(self.ca_pem)
        return path

    def issue_server_certificate(
        self,
        hostnames: Sequence[str],
        *,
        common_name: str | None = None,
        key_size: int = _KEY_SIZE,
    ) -> IssuedCertificate:
        """A TLS server certificate for ``hostnames`` (IP SANs for IP literals, DNS SANs otherwise)."""
        if not hostnames:
            raise ValueError("at least one hostname is required")
        if len(hostnames) > _MAX_HOSTNAMES:
            raise ValueError(f"at most {_MAX_HOSTNAMES} hostnames are supported")
        key = _new_key(key_size)
        start = _now() - _BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or hostnames[0]))
            .issuer_name(self.intermediate_certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + _LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hostnames)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._intermediate_key.public_key()),
                critical=False,
            )
            .sign(self._intermediate_key, hashes.SHA256())
        )
        return IssuedCertificate(
            certificate=cert,
            private_key=key,
            chain=(cert, self.intermediate_certificate, self.root_certificate),
        )

    def server_ssl_context(self, hostnames: Sequence[str] = ("127.0.0.1", "localhost")) -> ssl.SSLContext:
        """A server-side context presenting a leaf for ``hostnames`` (cached per hostname set)."""
        key = tuple(hostnames)
        with self._lock:
            cached = self._contexts.get(key)
        if cached is not None:
            return cached
        issued = self.issue_server_certificate(hostnames)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl can only load key material from files; keep them private and short-lived.
        with tempfile.TemporaryDirectory(prefix="skr-emu-tls-") as tmp:
            cert_path = Path(tmp) / "cert.pem"
            key_path = Path(tmp) / "key.pem"
            # The chain served to clients is leaf + intermediate; the root is what they trust.
            cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issued.chain[:2]))
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(issued.private_key_pem())
            context.load_cert_chain(cert_path, key_path)
        with self._lock:
            self._contexts.setdefault(key, context)
            return self._contexts[key]

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client-side context that trusts exactly this CA (hostname checking on)."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
