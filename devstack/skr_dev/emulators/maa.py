"""Microsoft Azure Attestation (MAA) emulator for SEV-SNP, following azure-facts §1 to the byte.

Why: skr's attestation path (and anything built on skr) must be tested against a service that
checks evidence the way MAA does and issues tokens shaped exactly like MAA's, so that the token
verification and the Key Vault release policy see production-shaped claims.

Routes (HTTPS):

* ``POST /attest/SevSnpVm?api-version=V`` (V: each version whose spec has AttestSevSnpVm, in
  api_versions.py; path case-insensitive,
  GO-REF's ``SevSnpVM`` works; route ``maa.attest``). Accepts padded and unpadded base64url at every
  layer, whitespace in the inner report JSON, a nonce that is a JSON string or an integer of any
  size (echoed as given), and ``initTimeData`` with empty strings (GO-REF) meaning "not given".
  Checks, in order: the report and its VCEK/VLEK chain against the configured trusted roots
  (:func:`skr.snp.verify.verify_attestation`), REPORT_DATA == sha256(runtimeData) ‖ 32 zero bytes,
  HOST_DATA == sha256(initTimeData) when given, and the UVM endorsement (COSE_Sign1, PS384,
  x5chain to a pinned root, launch measurement == MEASUREMENT) when present or required. Answers
  ``{"token": "<JWT>"}`` or a CloudError ``{"error": {"code", "message"}}`` (400; 413 for an
  oversized body) whose message names the failed check.
* ``GET /certs`` (route ``maa.certs``): ``{"keys": [{"x5c": [...], "kid": ..., "kty": "RSA"}]}`` — no
  ``n``/``e``, as in the spec samples; the key is in the self-signed ``x5c[0]`` (``CN=<instance URL>``).
* ``GET /.well-known/openid-configuration`` (route ``maa.openid``): ``jwks_uri``,
  ``id_token_signing_alg_values_supported: ["RS256"]``, ``response_types_supported``,
  ``revocation_endpoint``, ``claims_supported``. Like the spec sample it has NO ``issuer`` field
  (UNCONFIRMED for live instances).

Tokens (RS256): header exactly ``{"alg","jku","kid","typ"}`` (kid an opaque standard-base64
string), ``exp - iat = 28800``, ``nbf = iat``, ``jti`` 64 hex, ``iss`` = the emulator's URL, claims
sorted by name like the real token, every ``x-ms-sevsnpvm-*`` claim of the real Genoa token with
the same JSON types and lowercase hex. Error codes (``InvalidParameter``, ``UnsupportedApiVersion``,
``InvalidReport``, ``EvidenceVerificationFailed``, ``RuntimeDataMismatch``, ``InitTimeDataMismatch``,
``UvmEndorsementMissing``, ``UvmEndorsementInvalid``, ``NotSupported``, ``PayloadTooLarge``) are the
emulator's own: real MAA codes and messages are UNCONFIRMED (azure-facts §1.3).

Semantic faults on ``maa.attest``: BAD_SIGNATURE (token signature invalid), EXPIRED_TOKEN (``exp``
in the past), UNKNOWN_KID (header ``kid`` not in ``/certs``).

Usage::

    amd = SimulatedAmd.create(Product.MILAN)
    maa = MaaEmulator()                        # trusts the simulated AMD roots of every product
    await maa.start(ca=ca)
    runtime = json.dumps({"keys": [jwk]}).encode()
    report = amd.sign_report(hashlib.sha256(runtime).digest() + bytes(32))
    body = build_attest_request_body(report, amd.vcek_pem_chain(), runtime, nonce=123)
    # POST f"{maa.url}/attest/SevSnpVm?api-version=2022-08-01" with body -> {"token": ...}
    token = maa.issue_token({"x-ms-sevsnpvm-hostdata": "00" * 32})   # direct, for other tests
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skr.errors import ReportFormatError, VerificationError
from skr.snp.report import AttestationReport, parse_report
from skr.snp.verify import TrustedRoots, VerifiedAttestation, verify_attestation
from skr_dev.emulators.api_versions import MAA_SEVSNP_API_VERSIONS
from skr_dev.emulators.faults import FaultKind, FaultSet
from skr_dev.emulators.server import DEFAULT_CLIENT_MAX_SIZE, HostedEmulator, json_response
from skr_dev.emulators.tls import self_signed_certificate
from skr_dev.simulated.amd import simulated_trusted_roots

__all__ = [
    "COMPLIANCE_ACI",
    "COMPLIANCE_AKS",
    "DEFAULT_POLICY",
    "MICROSOFT_UVM_ROOT_FINGERPRINT",
    "SUPPORTED_API_VERSIONS",
    "TOKEN_LIFETIME",
    "UVM_EKU",
    "UVM_FEED",
    "AttestRequest",
    "MaaEmulator",
    "MaaRequestError",
    "UvmEndorsement",
    "UvmEndorsementSigner",
    "build_attest_request_body",
    "parse_attest_request",
    "policy_hash",
    "sevsnp_claims",
    "verify_uvm_endorsement",
]

SUPPORTED_API_VERSIONS: Final = MAA_SEVSNP_API_VERSIONS
TOKEN_LIFETIME: Final = 28800
COMPLIANCE_ACI: Final = "azure-compliant-uvm"
COMPLIANCE_AKS: Final = "azure-signed-katacc-uvm"
UVM_FEED: Final = "ContainerPlat-AMD-UVM"
UVM_EKU: Final = "1.3.6.1.4.1.311.76.59.1.2"
MICROSOFT_UVM_ROOT_FINGERPRINT: Final = "I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s"
"""b64url(sha256(DER)) of "Microsoft Supply Chain RSA Root CA 2022", as named by the real UVM
endorsement's did:x509 issuer."""

DEFAULT_POLICY: Final = "version= 1.0;\nauthorizationrules\n{\n    => permit();\n};\nissuancerules\n{\n};\n"
"""The attestation policy the emulator pretends to apply (only its hash reaches the token)."""

REPORT_SIZE: Final = 1184
MAX_BODY: Final = DEFAULT_CLIENT_MAX_SIZE
MAX_REPORT_FIELD: Final = 512 * 1024  # the outer b64url "report" field, characters
MAX_CERT_CHAIN: Final = 64 * 1024  # decoded PEM bytes
MAX_ENDORSEMENTS: Final = 64 * 1024  # decoded Endorsements JSON bytes
MAX_UVM_ENTRIES: Final = 4
MAX_UVM_ENTRY: Final = 48 * 1024
MAX_DATA: Final = 64 * 1024  # decoded runtimeData / initTimeData
MAX_NONCE: Final = 1024  # characters (string) or decimal digits (number)
MAX_UVM_CHAIN: Final = 8

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_COSE_SIGN1_TAG: Final = 18
_COSE_ALG_PS384: Final = -38
_COSE_ALG, _COSE_CONTENT_TYPE, _COSE_X5CHAIN, _COSE_X5T = 1, 3, 33, 34
_COSE_SHA256: Final = -16
_DID_X509 = re.compile(r"did:x509:0:sha256:([A-Za-z0-9_-]{43})::eku:([0-9.]{1,100})")
_PSS384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

Clock = Callable[[], float]


class MaaRequestError(Exception):
    """A refused attestation request, answered as CloudError (never leaves the emulator)."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# --- encoding helpers ------------------------------------------------------------------------------


def _b64url_encode(data: bytes, *, padded: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode("ascii")
    return text if padded else text.rstrip("=")


def _b64url_decode(value: object, *, what: str, max_bytes: int) -> bytes:
    """Padded or unpadded base64url; anything else (standard '+/', whitespace, bad length) is refused."""
    if not isinstance(value, str):
        raise MaaRequestError("InvalidParameter", f"{what} must be a base64url string")
    if len(value) > (max_bytes * 4) // 3 + 4:
        raise MaaRequestError("InvalidParameter", f"{what} is larger than {max_bytes} bytes")
    if not _B64URL.fullmatch(value):
        raise MaaRequestError("InvalidParameter", f"{what} is not base64url")
    stripped = value.rstrip("=")
    if len(stripped) % 4 == 1:
        raise MaaRequestError("InvalidParameter", f"{what} has an invalid base64url length")
    try:
        decoded = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise MaaRequestError("InvalidParameter", f"{what} is not base64url") from None
    if len(decoded) > max_bytes:
        raise MaaRequestError("InvalidParameter", f"{what} is larger than {max_bytes} bytes")
    return decoded


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_loads(data: bytes | str, *, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MaaRequestError("InvalidParameter", f"{what} is not valid JSON") from None


# --- the request ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttestRequest:
    """A decoded AttestSevSnpVmRequest. ``runtime_data``/``init_time_data`` are None when not given."""

    report: bytes
    vcek_cert_chain: bytes
    uvm_endorsements: tuple[bytes, ...]
    runtime_data: bytes | None
    runtime_data_type: str
    init_time_data: bytes | None
    init_time_data_type: str
    nonce: str | int | None
    draft_policy: str | None = field(default=None, repr=False)


def _data_field(body: Mapping[str, Any], name: str) -> tuple[bytes | None, str]:
    value = body.get(name)
    if value is None:
        return None, ""
    if not isinstance(value, Mapping):
        raise MaaRequestError("InvalidParameter", f"{name} must be an object with 'data' and 'dataType'")
    data, data_type = value.get("data", ""), value.get("dataType", "")
    if data is None:
        data = ""
    if data_type is None:
        data_type = ""
    if not isinstance(data_type, str):
        raise MaaRequestError("InvalidParameter", f"{name}.dataType must be a string")
    if data == "":
        return None, ""  # GO-REF sends {"data": "", "dataType": ""}: not given
    kind = data_type.strip().lower()
    if kind not in ("", "binary", "json"):
        raise MaaRequestError("InvalidParameter", f"{name}.dataType must be 'Binary' or 'JSON'")
    decoded = _b64url_decode(data, what=f"{name}.data", max_bytes=MAX_DATA)
    return decoded, "JSON" if kind == "json" else "Binary"


def parse_attest_request(body: bytes) -> AttestRequest:
    """Decode the request body (all layers); raises MaaRequestError naming the bad field."""
    if len(body) > MAX_BODY:
        raise MaaRequestError("PayloadTooLarge", f"request body is larger than {MAX_BODY} bytes", status=413)
    document = _json_loads(body, what="request body")
    if not isinstance(document, dict):
        raise MaaRequestError("InvalidParameter", "request body must be a JSON object")
    report_field = document.get("report")
    if report_field is None or report_field == "":
        raise MaaRequestError("InvalidParameter", "report is required")
    if isinstance(report_field, str) and len(report_field) > MAX_REPORT_FIELD:
        raise MaaRequestError("InvalidParameter", f"report is longer than {MAX_REPORT_FIELD} characters")
    inner_bytes = _b64url_decode(report_field, what="report", max_bytes=MAX_REPORT_FIELD)
    inner = _json_loads(inner_bytes, what="report (decoded)")
    if not isinstance(inner, dict):
        raise MaaRequestError("InvalidParameter", "report must encode a JSON object")
    snp_report = _b64url_decode(inner.get("SnpReport"), what="report.SnpReport", max_bytes=4096)
    if len(snp_report) != REPORT_SIZE:
        raise MaaRequestError(
            "InvalidReport", f"report.SnpReport is {len(snp_report)} bytes; an SEV-SNP report is {REPORT_SIZE}"
        )
    chain = _b64url_decode(inner.get("VcekCertChain"), what="report.VcekCertChain", max_bytes=MAX_CERT_CHAIN)
    endorsements: list[bytes] = []
    raw_endorsements = inner.get("Endorsements")
    if raw_endorsements not in (None, ""):
        decoded = _b64url_decode(raw_endorsements, what="report.Endorsements", max_bytes=MAX_ENDORSEMENTS)
        parsed = _json_loads(decoded, what="report.Endorsements (decoded)")
        if not isinstance(parsed, dict):
            raise MaaRequestError("InvalidParameter", "report.Endorsements must encode a JSON object")
        uvm = parsed.get("Uvm", [])
        if uvm is None:
            uvm = []
        if not isinstance(uvm, list) or len(uvm) > MAX_UVM_ENTRIES:
            raise MaaRequestError(
                "InvalidParameter", f"report.Endorsements.Uvm must be a list of at most {MAX_UVM_ENTRIES} entries"
            )
        for index, entry in enumerate(uvm):
            endorsements.append(
                _b64url_decode(entry, what=f"report.Endorsements.Uvm[{index}]", max_bytes=MAX_UVM_ENTRY)
            )
    runtime, runtime_type = _data_field(document, "runtimeData")
    init_time, init_type = _data_field(document, "initTimeData")
    nonce = document.get("nonce")
    if isinstance(nonce, bool) or not isinstance(nonce, str | int | None):
        raise MaaRequestError("InvalidParameter", "nonce must be a string or an integer")
    if nonce is not None and len(str(nonce)) > MAX_NONCE:
        raise MaaRequestError("InvalidParameter", f"nonce is longer than {MAX_NONCE} characters")
    draft = document.get("draftPolicyForAttestation")
    if draft is not None and not isinstance(draft, str):
        raise MaaRequestError("InvalidParameter", "draftPolicyForAttestation must be a string")
    return AttestRequest(
        report=snp_report,
        vcek_cert_chain=chain,
        uvm_endorsements=tuple(endorsements),
        runtime_data=runtime,
        runtime_data_type=runtime_type,
        init_time_data=init_time,
        init_time_data_type=init_type,
        nonce=nonce,
        draft_policy=draft or None,
    )


def build_attest_request_body(
    report: bytes,
    vcek_chain_pem: bytes,
    runtime_data: bytes,
    *,
    nonce: int | str | None = None,
    uvm_endorsement: bytes | None = None,
    init_time_data: bytes | None = None,
    padded: bool = True,
    runtime_data_type: str = "JSON",
) -> bytes:
    """A request body shaped exactly like GO-REF's (field order, padded base64url by default).

    GO-REF sends ``initTimeData`` with empty strings when there is none, and the nonce as a JSON
    number; pass ``padded=False`` for the unpadded form of the REST spec sample.
    """
    inner: dict[str, str] = {
        "SnpReport": _b64url_encode(report, padded=padded),
        "VcekCertChain": _b64url_encode(vcek_chain_pem, padded=padded),
    }
    if uvm_endorsement is not None:
        endorsements = json.dumps({"Uvm": [_b64url_encode(uvm_endorsement, padded=padded)]}).encode()
        inner["Endorsements"] = _b64url_encode(endorsements, padded=padded)
    body: dict[str, Any] = {
        "report": _b64url_encode(json.dumps(inner).encode(), padded=padded),
        "runtimeData": {"data": _b64url_encode(runtime_data, padded=padded), "dataType": runtime_data_type},
        "initTimeData": (
            {"data": _b64url_encode(init_time_data, padded=padded), "dataType": "Binary"}
            if init_time_data is not None
            else {"data": "", "dataType": ""}
        ),
    }
    if nonce is not None:
        body["nonce"] = nonce
    return json.dumps(body).encode()


# --- UVM endorsement (COSE_Sign1) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UvmEndorsement:
    """A verified UVM reference-info endorsement."""

    issuer: str
    feed: str
    launch_measurement: str
    guest_svn: str | None
    payload: Mapping[str, Any]
    chain: tuple[x509.Certificate, ...]


def _fingerprint(certificate: x509.Certificate) -> str:
    return _b64url_encode(hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest())


def _verify_issued_by(child: x509.Certificate, issuer: x509.Certificate, label: str) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise VerificationError(f"UVM endorsement {label} is not signed by the next certificate in x5chain") from None


def verify_uvm_endorsement(
    cose: bytes,
    *,
    measurement: bytes,
    trusted_root_fingerprints: Collection[str],
    now: dt.datetime,
    feeds: Collection[str] = (UVM_FEED,),
) -> UvmEndorsement:
    """Verify a UVM endorsement COSE_Sign1 against pinned roots and the report's MEASUREMENT.

    Checks: CBOR tag 18 (or an untagged 4-array), protected alg -38 (PS384, pinned), x5chain of
    2..8 certificates each signed by the next, the last self-signed and pinned by
    ``trusted_root_fingerprints`` (b64url sha256, as did:x509 names it), every certificate valid at
    ``now``, x5t (when present) = sha256(leaf), the did:x509 ``iss`` naming the pinned root and an
    EKU the leaf carries, ``feed`` allowed, the PS384 signature over the Sig_structure, and the JSON
    payload's ``x-ms-sevsnpvm-launchmeasurement`` == ``measurement``. Whether real MAA checks the
    chain validity at the current time or at the signing time is UNCONFIRMED; this uses ``now``.

    Raises:
        VerificationError: naming the failed check.
    """
    try:
        decoded = cbor2.loads(cose)
    except Exception:  # cbor2 raises many types for malformed input
        raise VerificationError("UVM endorsement is not valid CBOR") from None
    if isinstance(decoded, cbor2.CBORTag):
        if decoded.tag != _COSE_SIGN1_TAG:
            raise VerificationError(f"UVM endorsement has CBOR tag {decoded.tag}, not 18 (COSE_Sign1)")
        decoded = decoded.value
    if not isinstance(decoded, list | tuple) or len(decoded) != 4:
        raise VerificationError("UVM endorsement is not a COSE_Sign1 structure")
    protected_bytes, _unprotected, payload, signature = decoded
    if not isinstance(protected_bytes, bytes) or not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise VerificationError("UVM endorsement COSE_Sign1 fields have the wrong types")
    try:
        protected = cbor2.loads(protected_bytes)
    except Exception:
        raise VerificationError("UVM endorsement protected header is not valid CBOR") from None
    if not isinstance(protected, dict):
        raise VerificationError("UVM endorsement protected header is not a map")
    if protected.get(_COSE_ALG) != _COSE_ALG_PS384:
        raise VerificationError("UVM endorsement algorithm is not PS384 (-38)")
    raw_chain = protected.get(_COSE_X5CHAIN)
    if isinstance(raw_chain, bytes):
        raw_chain = [raw_chain]
    if not isinstance(raw_chain, list | tuple) or not 2 <= len(raw_chain) <= MAX_UVM_CHAIN:
        raise VerificationError("UVM endorsement x5chain must hold 2 to 8 certificates")
    try:
        chain = tuple(x509.load_der_x509_certificate(bytes(der)) for der in raw_chain if isinstance(der, bytes))
    except ValueError:
        raise VerificationError("UVM endorsement x5chain holds a malformed certificate") from None
    if len(chain) != len(raw_chain):
        raise VerificationError("UVM endorsement x5chain entries must be byte strings")
    for index in range(len(chain) - 1):
        _verify_issued_by(chain[index], chain[index + 1], f"certificate {index}")
    root = chain[-1]
    _verify_issued_by(root, root, "root")
    root_fingerprint = _fingerprint(root)
    if root_fingerprint not in trusted_root_fingerprints:
        raise VerificationError(f"UVM endorsement chains to an untrusted root (sha256 {root_fingerprint})")
    for index, certificate in enumerate(chain):
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise VerificationError(
                f"UVM endorsement certificate {index} is not valid at {now.isoformat()} "
                f"(valid {certificate.not_valid_before_utc.isoformat()} to "
                f"{certificate.not_valid_after_utc.isoformat()})"
            )
    leaf = chain[0]
    thumbprint = protected.get(_COSE_X5T)
    if thumbprint is not None:
        leaf_sha256 = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
        if (
            not isinstance(thumbprint, list | tuple)
            or len(thumbprint) != 2
            or thumbprint[0] != _COSE_SHA256
            or thumbprint[1] != leaf_sha256
        ):
            raise VerificationError("UVM endorsement x5t does not match the leaf certificate")
    issuer = protected.get("iss")
    if not isinstance(issuer, str):
        raise VerificationError("UVM endorsement has no iss")
    match = _DID_X509.fullmatch(issuer)
    if match is None:
        raise VerificationError("UVM endorsement iss is not a did:x509 (sha256, eku) identifier")
    if match.group(1) != root_fingerprint:
        raise VerificationError("UVM endorsement iss does not name the root of its x5chain")
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise VerificationError("UVM endorsement leaf has no extended key usage") from None
    if x509.ObjectIdentifier(match.group(2)) not in list(ekus):
        raise VerificationError(f"UVM endorsement leaf lacks the EKU {match.group(2)} its iss names")
    feed = protected.get("feed")
    if not isinstance(feed, str) or feed not in feeds:
        raise VerificationError(f"UVM endorsement feed {str(feed)[:80]!r} is not accepted")
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError("UVM endorsement leaf key is not RSA (PS384 needs RSA)")
    to_be_signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    try:
        key.verify(signature, to_be_signed, _PSS384, hashes.SHA384())
    except InvalidSignature:
        raise VerificationError("UVM endorsement signature (PS384) is invalid") from None
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("UVM endorsement payload is not JSON") from None
    if not isinstance(document, dict):
        raise VerificationError("UVM endorsement payload is not a JSON object")
    endorsed = document.get("x-ms-sevsnpvm-launchmeasurement")
    if not isinstance(endorsed, str):
        raise VerificationError("UVM endorsement payload has no x-ms-sevsnpvm-launchmeasurement")
    if endorsed.lower() != measurement.hex():
        raise VerificationError("UVM endorsement launch measurement does not match the report MEASUREMENT")
    svn = document.get("x-ms-sevsnpvm-guestsvn")
    return UvmEndorsement(
        issuer=issuer,
        feed=feed,
        launch_measurement=endorsed.lower(),
        guest_svn=str(svn) if svn is not None else None,
        payload=document,
        chain=chain,
    )


class UvmEndorsementSigner:
    """A simulated UVM signer (root -> CA -> leaf with the UVM EKU) producing COSE_Sign1 endorsements
    shaped like the real ``reference-info-base64`` (alg PS384, content type, x5chain, x5t, did:x509
    iss, feed, signingtime). Trust it with ``MaaEmulator(uvm_root_fingerprints={signer.root_fingerprint})``.
    """

    def __init__(self) -> None:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        end = start + dt.timedelta(days=3650)

        def name(cn: str) -> x509.Name:
            return x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "skr emulators (SIMULATED)"),
                ]
            )

        def build(
            subject: x509.Name,
            issuer: x509.Name,
            key: rsa.RSAPrivateKey,
            signer: rsa.RSAPrivateKey,
            *,
            ca: bool,
        ) -> x509.Certificate:
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(issuer)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if not ca:
                builder = builder.add_extension(
                    x509.ExtendedKeyUsage(
                        [
                            x509.ObjectIdentifier("1.3.6.1.4.1.311.76.59.1.1"),
                            x509.ObjectIdentifier(UVM_EKU),
                            ExtendedKeyUsageOID.CODE_SIGNING,
                        ]
                    ),
                    critical=False,
                )
            return builder.sign(signer, hashes.SHA384())

        root_key, ca_key, leaf_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
        root_name = name("skr simulated Supply Chain RSA Root")
        ca_name = name("skr simulated SCD Products RSA CA")
        self.root = build(root_name, root_name, root_key, root_key, ca=True)
        self.intermediate = build(ca_name, root_name, ca_key, root_key, ca=True)
        self.leaf = build(name("skr simulated ContainerPlat"), ca_name, leaf_key, ca_key, ca=False)
        self._leaf_key = leaf_key

    def __repr__(self) -> str:
        return f"UvmEndorsementSigner(root={self.root_fingerprint})"

    @property
    def root_fingerprint(self) -> str:
        return _fingerprint(self.root)

    @property
    def issuer(self) -> str:
        return f"did:x509:0:sha256:{self.root_fingerprint}::eku:{UVM_EKU}"

    def sign(self, measurement: bytes, *, guest_svn: str = "100", feed: str = UVM_FEED) -> bytes:
        """A COSE_Sign1 endorsing ``measurement`` (the report's 48-byte MEASUREMENT)."""
        payload = json.dumps(
            {"x-ms-sevsnpvm-guestsvn": guest_svn, "x-ms-sevsnpvm-launchmeasurement": measurement.hex()}, indent=2
        ).encode()
        chain = [c.public_bytes(serialization.Encoding.DER) for c in (self.leaf, self.intermediate, self.root)]
        protected = cbor2.dumps(
            {
                _COSE_ALG: _COSE_ALG_PS384,
                _COSE_CONTENT_TYPE: "application/json",
                _COSE_X5CHAIN: chain,
                _COSE_X5T: [_COSE_SHA256, hashlib.sha256(chain[0]).digest()],
                "iss": self.issuer,
                "feed": feed,
                "signingtime": cbor2.CBORTag(1, int(time.time())),
            }
        )
        signature = self._leaf_key.sign(cbor2.dumps(["Signature1", protected, b"", payload]), _PSS384, hashes.SHA384())
        return cbor2.dumps(cbor2.CBORTag(_COSE_SIGN1_TAG, [protected, {}, payload, signature]))


# --- claims and tokens ----------------------------------------------------------------------------


def policy_hash(policy_text: str) -> str:
    """``x-ms-policy-hash``: b64url(sha256(UTF-8(b64url(UTF-8(policy))))), unpadded (azure-facts §1.5;
    whether the inner b64url is padded is UNCONFIRMED — unpadded here, as in JWS)."""
    inner = _b64url_encode(policy_text.encode("utf-8")).encode("ascii")
    return _b64url_encode(hashlib.sha256(inner).digest())


def sevsnp_claims(verified: VerifiedAttestation) -> dict[str, Any]:
    """Every ``x-ms-sevsnpvm-*`` claim of the real MAA token, with its JSON type, from a verified report.

    The TCB SVNs come from REPORTED_TCB (they equal the VCEK SPLs in the real token). The policy
    flags follow the AMD ABI bits (16 SMT, 18 MIGRATE_MA, 19 DEBUG, 20 SINGLE_SOCKET, 21 CXL, 22
    MEM_AES_256_XTS, 23 RAPL_DIS, 24 CIPHERTEXT_HIDING, 25 PAGE_SWAP_DISABLE); the mapping of these
    bits to ``-is-debuggable``, ``-smt-allowed``, ``-migration-allowed`` and the other boolean claims
    is UNCONFIRMED (inferred; azure-facts §1.4).
    """
    report: AttestationReport = verified.report
    tcb = report.reported_tcb.decode(verified.product)
    policy = report.policy
    return {
        "x-ms-sevsnpvm-authorkeydigest": report.author_key_digest.hex(),
        "x-ms-sevsnpvm-bootloader-svn": tcb.bootloader,
        "x-ms-sevsnpvm-chip-family": verified.product.value,
        "x-ms-sevsnpvm-chipid": report.chip_id.hex(),
        "x-ms-sevsnpvm-ciphertext-hiding-dram-enabled": policy.ciphertext_hiding,
        "x-ms-sevsnpvm-cxl-allowed": policy.cxl_allowed,
        "x-ms-sevsnpvm-familyId": report.family_id.hex(),
        "x-ms-sevsnpvm-guestsvn": report.guest_svn,
        "x-ms-sevsnpvm-hostdata": report.host_data.hex(),
        "x-ms-sevsnpvm-idkeydigest": report.id_key_digest.hex(),
        "x-ms-sevsnpvm-imageId": report.image_id.hex(),
        "x-ms-sevsnpvm-is-debuggable": policy.debug,
        "x-ms-sevsnpvm-launchmeasurement": report.measurement.hex(),
        "x-ms-sevsnpvm-mem-aes256-xts-required": policy.mem_aes_256_xts,
        "x-ms-sevsnpvm-microcode-svn": tcb.microcode,
        "x-ms-sevsnpvm-migration-allowed": policy.migrate_ma,
        "x-ms-sevsnpvm-page-swap-disabled": policy.page_swap_disabled,
        "x-ms-sevsnpvm-rapl-disabled": policy.rapl_disabled,
        "x-ms-sevsnpvm-reportdata": report.report_data.hex(),
        "x-ms-sevsnpvm-reportid": report.report_id.hex(),
        "x-ms-sevsnpvm-singlesocket": policy.single_socket,
        "x-ms-sevsnpvm-smt-allowed": policy.smt_allowed,
        "x-ms-sevsnpvm-snpfw-svn": tcb.snp,
        "x-ms-sevsnpvm-tee-svn": tcb.tee,
        "x-ms-sevsnpvm-vmpl": report.vmpl,
    }


def _flip_signature_bit(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{header}.{payload}.{_b64url_encode(bytes(raw))}"


def _new_kid() -> str:
    # Real kids are opaque standard base64 (padded) strings, e.g. "NiBnE1F+mmlfQeIhyDbQsUR9WS6dRPX9dXmHDnZoEpU=".
    return base64.b64encode(os.urandom(32)).decode("ascii")


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)

    def jwk(self) -> dict[str, Any]:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {"x5c": [base64.b64encode(der).decode("ascii")], "kid": self.kid, "kty": "RSA"}


def _default_trusted_roots() -> tuple[TrustedRoots, ...]:
    return (simulated_trusted_roots(),)


class MaaEmulator(HostedEmulator):
    """The MAA SEV-SNP attestation endpoint, its JWKS and OpenID metadata. See the module docstring.

    ``trusted_roots``: the AMD roots reports must chain to (default: the simulated platform's roots
    for every product; pass ``TrustedRoots.amd()`` too to accept real hardware evidence).
    ``require_uvm_endorsement``: refuse requests without a UVM endorsement. ``uvm_root_fingerprints``:
    pinned UVM signer roots (b64url sha256); default the real Microsoft root only.
    ``compliance_status``: the ``x-ms-compliance-status`` claim (``azure-compliant-uvm`` or
    ``azure-signed-katacc-uvm``). ``clock``: epoch seconds, for tokens and certificate validity.
    """

    name = "maa"

    def __init__(
        self,
        *,
        faults: FaultSet | None = None,
        trusted_roots: TrustedRoots | Sequence[TrustedRoots] | None = None,
        require_uvm_endorsement: bool = False,
        uvm_root_fingerprints: Collection[str] = (MICROSOFT_UVM_ROOT_FINGERPRINT,),
        uvm_feeds: Collection[str] = (UVM_FEED,),
        compliance_status: str = COMPLIANCE_ACI,
        policy: str = DEFAULT_POLICY,
        token_lifetime: int = TOKEN_LIFETIME,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(faults=faults)
        self._trusted_roots: tuple[TrustedRoots, ...] | None
        if trusted_roots is None:
            self._trusted_roots = None  # the simulated roots, generated on first use (slow RSA-4096)
        elif isinstance(trusted_roots, TrustedRoots):
            self._trusted_roots = (trusted_roots,)
        else:
            self._trusted_roots = tuple(trusted_roots)
            if not self._trusted_roots:
                raise ValueError("at least one set of trusted roots is required")
        self.require_uvm_endorsement = require_uvm_endorsement
        self.uvm_root_fingerprints = set(uvm_root_fingerprints)
        self.uvm_feeds = set(uvm_feeds)
        self.compliance_status = compliance_status
        self.policy = policy
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._issuer: str | None = None
        self._key_material = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._signing_key: _SigningKey | None = None

    def __repr__(self) -> str:
        return f"MaaEmulator(issuer={self._issuer!r}, compliance_status={self.compliance_status!r})"

    # --- identity of the instance -------------------------------------------------------------------

    def _on_started(self, url: str) -> None:
        if self._issuer != url or self._signing_key is None:
            self._issuer = url
            self._signing_key = self._make_signing_key(self._key_material)

    def _make_signing_key(self, private_key: rsa.RSAPrivateKey) -> _SigningKey:
        assert self._issuer is not None
        certificate = self_signed_certificate(self._issuer, private_key, lifetime=dt.timedelta(days=365))
        return _SigningKey(kid=_new_kid(), private_key=private_key, certificate=certificate)

    def bind(self, url: str) -> None:
        """Fix the instance URL (issuer, jku, certificate CN) without serving, e.g. for issue_token tests."""
        self._on_started(url.rstrip("/"))

    @property
    def issuer(self) -> str:
        """The token ``iss``: the instance URL (no trailing slash)."""
        if self._issuer is None:
            raise RuntimeError("the MAA emulator has no URL yet: start() or bind() it first")
        return self._issuer

    @property
    def signing_key(self) -> _SigningKey:
        if self._signing_key is None:
            raise RuntimeError("the MAA emulator has no URL yet: start() or bind() it first")
        return self._signing_key

    @property
    def kid(self) -> str:
        return self.signing_key.kid

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self.signing_key.certificate

    @property
    def public_keys(self) -> dict[str, rsa.RSAPublicKey]:
        return {self.signing_key.kid: self.signing_key.private_key.public_key()}

    def rotate_signing_key(self) -> str:
        """Sign with a fresh key and kid from now on (the old one is dropped from /certs)."""
        self._key_material = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._signing_key = self._make_signing_key(self._key_material)
        return self._signing_key.kid

    def jwks(self) -> dict[str, Any]:
        """The ``/certs`` document."""
        return {"keys": [self.signing_key.jwk()]}

    def openid_configuration(self) -> dict[str, Any]:
        """The OpenID metadata, with ``issuer`` as OpenID Connect Discovery requires of every provider."""
        base = self.issuer
        return {
            "issuer": base,
            "response_types_supported": ["token", "none"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "revocation_endpoint": f"{base}/revoke",
            "jwks_uri": f"{base}/certs",
            "claims_supported": [
                "cnf",
                "nonce",
                "x-ms-ver",
                "x-ms-attestation-type",
                "x-ms-policy-hash",
                "x-ms-policy-signer",
                "x-ms-runtime",
                "x-ms-inittime",
                "x-ms-compliance-status",
                "x-ms-sevsnpvm-launchmeasurement",
                "x-ms-sevsnpvm-hostdata",
                "x-ms-sevsnpvm-reportdata",
                "x-ms-sevsnpvm-is-debuggable",
            ],
        }

    # --- tokens ---------------------------------------------------------------------------------------

    def issue_token(
        self,
        claims: Mapping[str, Any],
        *,
        fault_endpoint: str | None = None,
        lifetime: int | None = None,
    ) -> str:
        """Sign an MAA-shaped token: ``iss``/``iat``/``nbf``/``exp``/``jti``/``x-ms-ver`` are added
        unless ``claims`` sets them; claims are emitted sorted by name. ``fault_endpoint`` (e.g.
        ``"maa.attest"``) makes the semantic faults armed for it apply."""
        key = self.signing_key
        now = int(self._clock())
        life = self.token_lifetime if lifetime is None else lifetime
        fault = (
            self.faults.take(fault_endpoint, (FaultKind.BAD_SIGNATURE, FaultKind.EXPIRED_TOKEN, FaultKind.UNKNOWN_KID))
            if fault_endpoint is not None
            else None
        )
        issued_at = now - 2 * life if fault is not None and fault.kind is FaultKind.EXPIRED_TOKEN else now
        payload: dict[str, Any] = {
            "exp": issued_at + life,
            "iat": issued_at,
            "iss": self.issuer,
            "jti": os.urandom(32).hex(),
            "nbf": issued_at,
            "x-ms-ver": "1.0",
        }
        payload.update(claims)
        ordered = {name: payload[name] for name in sorted(payload)}
        kid = _new_kid() if fault is not None and fault.kind is FaultKind.UNKNOWN_KID else key.kid
        # PyJWT sorts header keys: {"alg","jku","kid","typ"} exactly as MAA emits them.
        token = jwt.encode(
            ordered,
            key.private_key,
            algorithm="RS256",
            headers={"jku": f"{self.issuer}/certs", "kid": kid, "typ": "JWT"},
        )
        if fault is not None and fault.kind is FaultKind.BAD_SIGNATURE:
            token = _flip_signature_bit(token)
        return token

    def attest(self, request: AttestRequest) -> dict[str, Any]:
        """Run every check on a decoded request and return the token claims (pure apart from the clock).

        Raises:
            MaaRequestError: naming the failed check.
        """
        if request.draft_policy is not None:
            raise MaaRequestError(
                "NotSupported",
                "draftPolicyForAttestation is not supported by the emulator (its tokens cannot be validated anyway)",
            )
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        try:
            report = parse_report(request.report)
        except ReportFormatError as exc:
            raise MaaRequestError("InvalidReport", f"report.SnpReport is malformed: {exc.message}") from None
        verified = self._verify_evidence(report, request.vcek_cert_chain, now)

        if request.runtime_data is not None:
            expected = hashlib.sha256(request.runtime_data).digest()
            if report.report_data[:32] != expected:
                raise MaaRequestError(
                    "RuntimeDataMismatch",
                    "REPORT_DATA[0:32] does not equal sha256(runtimeData): the report was not made for this "
                    "runtime data",
                )
            if any(report.report_data[32:]):
                raise MaaRequestError("RuntimeDataMismatch", "REPORT_DATA[32:64] must be zero (sha256 ‖ 32 zero bytes)")
        if request.init_time_data is not None and hashlib.sha256(request.init_time_data).digest() != report.host_data:
            raise MaaRequestError(
                "InitTimeDataMismatch", "HOST_DATA does not equal sha256(initTimeData): the policy does not match"
            )
        if not request.uvm_endorsements and self.require_uvm_endorsement:
            raise MaaRequestError(
                "UvmEndorsementMissing", "a UVM endorsement (report.Endorsements.Uvm) is required by this instance"
            )
        for index, endorsement in enumerate(request.uvm_endorsements):
            try:
                verify_uvm_endorsement(
                    endorsement,
                    measurement=report.measurement,
                    trusted_root_fingerprints=self.uvm_root_fingerprints,
                    now=now,
                    feeds=self.uvm_feeds,
                )
            except VerificationError as exc:
                raise MaaRequestError("UvmEndorsementInvalid", f"Endorsements.Uvm[{index}]: {exc.message}") from None

        claims: dict[str, Any] = {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": self.compliance_status,
            "x-ms-policy-hash": policy_hash(self.policy),
        }
        claims.update(sevsnp_claims(verified))
        if request.runtime_data is not None and request.runtime_data_type == "JSON":
            claims["x-ms-runtime"] = _json_loads(request.runtime_data, what="runtimeData.data (JSON)")
        if request.init_time_data is not None and request.init_time_data_type == "JSON":
            claims["x-ms-inittime"] = _json_loads(request.init_time_data, what="initTimeData.data (JSON)")
        if request.nonce is not None:
            # The published ACI token shows the Go sidecar's 64-bit nonce as a JSON string, so an
            # integer nonce is issued as its decimal string (UNCONFIRMED beyond that one sample).
            claims["nonce"] = str(request.nonce)
        return claims

    @property
    def trusted_roots(self) -> tuple[TrustedRoots, ...]:
        """The AMD roots evidence must chain to."""
        if self._trusted_roots is None:
            self._trusted_roots = _default_trusted_roots()
        return self._trusted_roots

    def _verify_evidence(self, report: AttestationReport, chain: bytes, now: dt.datetime) -> VerifiedAttestation:
        failures: list[str] = []
        for roots in self.trusted_roots:
            try:
                return verify_attestation(report, chain, trusted=roots, now=now)
            except VerificationError as exc:
                failures.append(exc.message)
            except (ValueError, x509.InvalidVersion) as exc:  # defensive: malformed certificates
                failures.append(f"a supplied certificate is malformed ({type(exc).__name__})")
        raise MaaRequestError("EvidenceVerificationFailed", f"SEV-SNP evidence verification failed: {failures[0]}")

    # --- HTTP -----------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        _ = self.trusted_roots  # resolve (and generate, if simulated) before serving, not mid-request
        app = self._new_app(client_max_size=MAX_BODY)
        app.router.add_post("/attest/{attestation_type}", self._attest_route, name="maa.attest")
        app.router.add_get("/certs", self._certs_route, name="maa.certs")
        app.router.add_get("/.well-known/openid-configuration", self._openid_route, name="maa.openid")
        return app

    @staticmethod
    def _cloud_error(error: MaaRequestError) -> web.Response:
        return json_response(
            {"error": {"code": error.code, "message": error.message}},
            status=error.status,
            headers={"x-ms-error-code": error.code},
        )

    async def _attest_route(self, request: web.Request) -> web.Response:
        try:
            if request.match_info["attestation_type"].lower() != "sevsnpvm":
                raise MaaRequestError(
                    "InvalidParameter",
                    f"attestation type {request.match_info['attestation_type'][:40]!r} is not supported "
                    "(the emulator implements SevSnpVm)",
                )
            api_version = request.query.get("api-version")
            if not api_version:
                raise MaaRequestError("MissingApiVersionParameter", "the api-version query parameter is required")
            if api_version not in SUPPORTED_API_VERSIONS:
                raise MaaRequestError(
                    "UnsupportedApiVersion",
                    f"api-version {api_version[:40]!r} is not supported; use one of "
                    f"{', '.join(sorted(SUPPORTED_API_VERSIONS))}",
                )
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise MaaRequestError(
                    "PayloadTooLarge", f"request body is larger than {MAX_BODY} bytes", status=413
                ) from None
            claims = self.attest(parse_attest_request(body))
        except MaaRequestError as exc:
            return self._cloud_error(exc)
        return json_response({"token": self.issue_token(claims, fault_endpoint="maa.attest")})

    async def _certs_route(self, request: web.Request) -> web.Response:
        return json_response(self.jwks())

    async def _openid_route(self, request: web.Request) -> web.Response:
        return json_response(self.openid_configuration())
