"""The ocicrypt key-provider protocol as the Go sidecar speaks it: pure parsing, formatting and RSA wrap.

Wire facts (containers/ocicrypt ``utils/keyprovider/keyprovider.proto`` and the Go sidecar's
``pkg/grpc/grpcserver/server.go``; this is our own code written from them):

* each call carries one protobuf ``bytes`` field (number 1) holding JSON:
  ``{"op": "keywrap"|"keyunwrap", "keywrapparams": {"ec": {"Parameters": {name: [b64]}}, "optsdata": b64},
  "keyunwrapparams": {"dc": {"Parameters": {name: [b64]}}, "annotation": b64}}``. Go ``[]byte`` values
  are standard base64 (with padding);
* the provider name (the key of ``Parameters``) is ``attestation-agent``; the wrap parameter decodes to
  ``aasp:<key reference>``, the unwrap parameter to ``aasp``;
* the annotation is JSON ``{kid, wrapped_data, iv, wrap_type, kms_endpoint, attester_endpoint}`` with
  ``wrapped_data``/``iv`` as base64 and ``wrap_type`` ``rsa_3072``; ``wrapped_data`` is the layer key
  (``optsdata``) encrypted with RSA-OAEP-SHA256 (empty label) under the public half of an RSA key that
  lives in Managed HSM / Key Vault;
* answers are ``{"keywrapresults": {"annotation": b64}}`` and ``{"keyunwrapresults": {"optsdata": b64}}``.

The Go sidecar names the key by a local path (``<path>`` with a ``<path>-info.json`` beside it); we also
accept a vault key URL for wrap (see :func:`parse_key_reference`). Everything here is bounded and raises
:class:`skr.errors.BadRequestError` with a message that says what to fix; nothing here logs.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from skr.errors import BadRequestError, BodyTooLargeError, KeyReleaseError
from skr.primitives.sensitive import Sensitive

__all__ = [
    "AASP",
    "MAX_MESSAGE_BYTES",
    "PROVIDER_NAME",
    "WRAP_TYPE",
    "Annotation",
    "KeyInfo",
    "UnwrapRequest",
    "WrapRequest",
    "decode_bytes_message",
    "encode_bytes_message",
    "encode_string_fields",
    "parse_annotation",
    "parse_key_info",
    "parse_unwrap_request",
    "parse_wrap_request",
    "unwrap_layer_key",
    "unwrap_result",
    "wrap_layer_key",
    "wrap_result",
]

PROVIDER_NAME: Final = "attestation-agent"
AASP: Final = "aasp"
WRAP_TYPE: Final = "rsa_3072"
# A layer key is 32 bytes plus ocicrypt's JSON (a few hundred bytes); an RSA-4096 annotation is < 2 KiB.
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_OPTSDATA_BYTES: Final = 4096
MAX_FIELD_CHARS: Final = 1024
_MAX_JSON_DEPTH: Final = 8
_OAEP: Final = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


# --- protobuf: messages whose fields are all length-delimited (bytes/string) -----------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if pos >= len(data):
            raise BadRequestError("malformed protobuf message: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise BadRequestError("malformed protobuf message: varint longer than 10 bytes")


def decode_bytes_message(data: bytes, *, field: int = 1) -> bytes:
    """The value of length-delimited ``field`` in a proto3 message (b"" when absent).

    A strict reader instead of generated code: the service's messages have only bytes/string fields,
    so this handles wire type 2 fully, skips other valid wire types (unknown fields, as proto3 does),
    and refuses truncation, bad varints, group wire types and anything above ``MAX_MESSAGE_BYTES``.
    A repeated occurrence of the field wins last, as protobuf specifies for scalar fields.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise BodyTooLargeError(f"request message is larger than {MAX_MESSAGE_BYTES} bytes")
    pos = 0
    value = b""
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise BadRequestError("malformed protobuf message: field number 0")
        if wire == 2:
            length, pos = _varint(data, pos)
            if length > len(data) - pos:
                raise BadRequestError("malformed protobuf message: field runs past the end")
            if number == field:
                value = data[pos : pos + length]
            pos += length
        elif wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise BadRequestError("malformed protobuf message: truncated fixed-width field")
        else:
            raise BadRequestError(f"malformed protobuf message: unsupported wire type {wire}")
    return value


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_string_fields(*values: bytes) -> bytes:
    """A message whose fields 1..n are these bytes/string values (empty ones omitted, as proto3 does)."""
    out = bytearray()
    for number, value in enumerate(values, start=1):
        if value:
            out += _encode_varint(number << 3 | 2) + _encode_varint(len(value)) + value
    return bytes(out)


def encode_bytes_message(value: bytes) -> bytes:
    """A message with ``value`` in field 1 (every key-provider reply has that shape)."""
    return encode_string_fields(value)


# --- JSON -------------------------------------------------------------------------------------------


def _b64(text: object, what: str, *, limit: int) -> bytes:
    if not isinstance(text, str):
        raise BadRequestError(f"{what} must be a base64 string")
    if len(text) > limit * 4 // 3 + 4:
        raise BodyTooLargeError(f"{what} is larger than {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{what} is not standard base64 (RFC 4648 §4, with padding)") from None


def _depth(value: Any, level: int = 0) -> int:
    if level > _MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BodyTooLargeError(f"{what} is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequestError(f"{what} is not valid UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise BadRequestError(f"{what} must be a JSON object")
    if _depth(document) > _MAX_JSON_DEPTH:
        raise BadRequestError(f"{what} is nested too deeply")
    return document


def _object(parent: dict[str, Any], name: str, what: str) -> dict[str, Any]:
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError(f"{what}.{name} must be a JSON object")
    return value


def _provider_parameter(config: dict[str, Any], what: str) -> bytes:
    parameters = _object(config, "Parameters", what)
    values = parameters.get(PROVIDER_NAME)
    if not values:
        names = ", ".join(sorted(str(k)[:40] for k in parameters)) or "none"
        raise BadRequestError(
            f"{what}.Parameters has no {PROVIDER_NAME!r} entry (got: {names}); name the key provider "
            f"{PROVIDER_NAME!r} in the ocicrypt config and in provider:{PROVIDER_NAME}:..."
        )
    if not isinstance(values, list):
        raise BadRequestError(f"{what}.Parameters[{PROVIDER_NAME!r}] must be a list of base64 strings")
    return _b64(values[0], f"{what}.Parameters[{PROVIDER_NAME!r}][0]", limit=MAX_FIELD_CHARS)


@dataclass(frozen=True, slots=True)
class WrapRequest:
    """A parsed WrapKey call: the key reference after ``aasp:`` and the layer key to wrap."""

    key_reference: str
    optsdata: Sensitive[bytes]


@dataclass(frozen=True, slots=True)
class UnwrapRequest:
    """A parsed UnWrapKey call: the annotation that ``WrapKey`` (ours or the Go sidecar's) produced."""

    annotation: Annotation


def _check_op(document: dict[str, Any], expected: str) -> None:
    op = document.get("op")
    if op not in (None, "", expected):
        raise BadRequestError(f"'op' is {str(op)[:20]!r} but this call is {expected!r}")


def parse_wrap_request(data: bytes) -> WrapRequest:
    """Parse the JSON of a WrapKey call; the parameter must decode to ``aasp:<key reference>``."""
    document = _json_object(data, "key provider input")
    _check_op(document, "keywrap")
    params = _object(document, "keywrapparams", "key provider input")
    parameter = _provider_parameter(_object(params, "ec", "keywrapparams"), "keywrapparams.ec")
    try:
        text = parameter.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError("the attestation-agent parameter is not UTF-8") from None
    agent, sep, reference = text.partition(":")
    if agent.lower() != AASP:
        raise BadRequestError(
            f"the attestation-agent parameter must start with '{AASP}:' (got {agent[:20]!r}); "
            f"use --encryption-key provider:{PROVIDER_NAME}:{AASP}:<key reference>"
        )
    if not sep or not reference.strip():
        raise BadRequestError(
            f"missing key reference: use --encryption-key provider:{PROVIDER_NAME}:{AASP}:<key path or vault key URL>"
        )
    optsdata = _b64(params.get("optsdata", ""), "keywrapparams.optsdata", limit=MAX_OPTSDATA_BYTES)
    if not optsdata:
        raise BadRequestError("keywrapparams.optsdata is empty: there is no layer key to wrap")
    return WrapRequest(reference.strip(), Sensitive(optsdata, "layer key"))


def parse_unwrap_request(data: bytes) -> UnwrapRequest:
    """Parse the JSON of an UnWrapKey call; the parameter must decode to ``aasp``."""
    document = _json_object(data, "key provider input")
    _check_op(document, "keyunwrap")
    params = _object(document, "keyunwrapparams", "key provider input")
    parameter = _provider_parameter(_object(params, "dc", "keyunwrapparams"), "keyunwrapparams.dc")
    if parameter.decode("utf-8", "replace").lower() != AASP:
        raise BadRequestError(
            f"the attestation-agent decryption parameter must be {AASP!r}; "
            f"use --decryption-key provider:{PROVIDER_NAME}:{AASP}"
        )
    raw = _b64(params.get("annotation", ""), "keyunwrapparams.annotation", limit=MAX_MESSAGE_BYTES // 2)
    if not raw:
        raise BadRequestError("keyunwrapparams.annotation is empty: the layer has no key-provider annotation")
    return UnwrapRequest(parse_annotation(raw))


@dataclass(frozen=True, slots=True)
class Annotation:
    """The Go sidecar's annotation packet (non-secret: the wrapped key is useless without the vault key)."""

    kid: str
    wrapped_data: bytes
    kms_endpoint: str
    attester_endpoint: str
    iv: bytes = b""
    wrap_type: str = WRAP_TYPE

    def to_json(self) -> bytes:
        """Serialise as the Go sidecar does (``json.Marshal`` of its struct: base64 []byte, omitempty)."""
        document: dict[str, str] = {"kid": self.kid, "wrapped_data": base64.b64encode(self.wrapped_data).decode()}
        if self.iv:
            document["iv"] = base64.b64encode(self.iv).decode()
        for name, value in (
            ("wrap_type", self.wrap_type),
            ("kms_endpoint", self.kms_endpoint),
            ("attester_endpoint", self.attester_endpoint),
        ):
            if value:
                document[name] = value
        return json.dumps(document, separators=(",", ":")).encode()


def _text(document: dict[str, Any], name: str, *, required: bool) -> str:
    value = document.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadRequestError(f"annotation {name!r} must be a string")
    if len(value) > MAX_FIELD_CHARS:
        raise BodyTooLargeError(f"annotation {name!r} is longer than {MAX_FIELD_CHARS} characters")
    if required and not value:
        raise BadRequestError(f"annotation {name!r} is missing")
    return value


def parse_annotation(raw: bytes) -> Annotation:
    """Parse and bound an annotation; ``wrap_type`` must be ``rsa_3072`` (or absent, as Go's omitempty allows)."""
    document = _json_object(raw, "annotation")
    wrap_type = _text(document, "wrap_type", required=False) or WRAP_TYPE
    if wrap_type != WRAP_TYPE:
        raise BadRequestError(f"unknown annotation wrap_type {wrap_type[:40]!r}; only {WRAP_TYPE!r} is supported")
    wrapped = _b64(document.get("wrapped_data", ""), "annotation wrapped_data", limit=1024)
    if not wrapped:
        raise BadRequestError("annotation 'wrapped_data' is missing")
    iv_text = document.get("iv") or ""
    return Annotation(
        kid=_text(document, "kid", required=True),
        wrapped_data=wrapped,
        kms_endpoint=_text(document, "kms_endpoint", required=True),
        attester_endpoint=_text(document, "attester_endpoint", required=False),
        iv=_b64(iv_text, "annotation iv", limit=64) if iv_text else b"",
        wrap_type=wrap_type,
    )


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """The Go sidecar's ``<key path>-info.json``: where the public key is and where to release it."""

    public_key_path: str
    kms_endpoint: str
    attester_endpoint: str


def parse_key_info(raw: bytes) -> KeyInfo:
    """Parse ``{"public_key_path", "kms_endpoint", "attester_endpoint"}``."""
    document = _json_object(raw, "key info file")
    return KeyInfo(
        public_key_path=_text(document, "public_key_path", required=True),
        kms_endpoint=_text(document, "kms_endpoint", required=True),
        attester_endpoint=_text(document, "attester_endpoint", required=False),
    )


def load_rsa_public_key(pem: bytes, what: str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (SubjectPublicKeyInfo), at least 2048 bits."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise BadRequestError(f"{what} is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise BadRequestError(f"{what} must be an RSA public key of at least 2048 bits")
    return key


def wrap_layer_key(
    optsdata: Sensitive[bytes], public_key: rsa.RSAPublicKey, *, kid: str, kms_endpoint: str, attester_endpoint: str
) -> Annotation:
    """Encrypt the layer key with RSA-OAEP-SHA256 into a Go-compatible annotation."""
    try:
        wrapped = public_key.encrypt(optsdata.reveal(), _OAEP)
    except ValueError:
        raise BadRequestError("the layer key is too long for the RSA key") from None
    return Annotation(kid=kid, wrapped_data=wrapped, kms_endpoint=kms_endpoint, attester_endpoint=attester_endpoint)


def unwrap_layer_key(annotation: Annotation, private_key: rsa.RSAPrivateKey) -> Sensitive[bytes]:
    """Decrypt ``wrapped_data`` with the released RSA key (OAEP-SHA256, empty label)."""
    try:
        return Sensitive(private_key.decrypt(annotation.wrapped_data, _OAEP), "layer key")
    except ValueError:
        raise KeyReleaseError(
            f"the released key {annotation.kid!r} does not decrypt this layer's wrapped key "
            "(wrong key, or the annotation was not made with RSA-OAEP-SHA256)"
        ) from None


def wrap_result(annotation: Annotation) -> bytes:
    """The WrapKey reply JSON."""
    encoded = base64.b64encode(annotation.to_json()).decode()
    return json.dumps({"keywrapresults": {"annotation": encoded}}, separators=(",", ":")).encode()


def unwrap_result(optsdata: Sensitive[bytes]) -> Sensitive[bytes]:
    """The UnWrapKey reply JSON (secret: it carries the layer key)."""
    encoded = base64.b64encode(optsdata.reveal()).decode()
    return Sensitive(
        json.dumps({"keyunwrapresults": {"optsdata": encoded}}, separators=(",", ":")).encode(), "layer key"
    )
