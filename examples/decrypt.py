#!/usr/bin/env python3
"""Encrypt data for an attested workload, and decrypt it inside that workload with a released key.

The producer (anywhere, no TEE needed) encrypts with the key's public half (RSA) or, for an
``oct`` key, with the key itself before it was imported. Only a pod whose attestation satisfies
the key's release policy gets the key from skr and can decrypt.

    # producer: the public JWK is enough for an RSA key (az keyvault key download, or the JWK)
    python3 decrypt.py encrypt --jwk mykey.json --in secret.txt --out secret.enc.json
    # in the pod: the key file the init container wrote, or the sidecar
    python3 decrypt.py decrypt --jwk /keys/mykey.json --in secret.enc.json --out secret.txt
    python3 decrypt.py decrypt --maa-endpoint M --akv-endpoint V --kid mykey --in ... --out ...
    # with `skr dev --state-file state.json`:
    python3 decrypt.py encrypt --state-file state.json --kid NAME --in ... --out ...

Envelope (JSON): ``{"v":1,"alg":...,"kid":...,"iv":...,"ct":...}`` plus ``"ek"`` for RSA; binary
fields are unpadded base64url. ``alg`` is ``dir+A256GCM`` (AES-GCM with the oct key; A128/A192
for shorter keys) or ``RSA-OAEP-256+A256GCM`` (a fresh AES-256 key, wrapped with RSA-OAEP-SHA256).
The header fields are the GCM associated data, so they cannot be swapped. EC keys are refused.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import DEFAULT_SIDECAR, SidecarError, load_state, release_key, target_from_state, wait_until_ready
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_INPUT = 64 * 1024 * 1024
MAX_JWK_FILE = 64 * 1024
ENVELOPE_VERSION = 1
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class EnvelopeError(ValueError):
    """Malformed envelope, wrong key, or tampered data (never says which byte)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"{what} is missing or not a string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{what} is not base64url") from None


def _int(jwk: dict[str, Any], member: str) -> int:
    return int.from_bytes(b64url_decode(jwk.get(member), f"JWK member {member!r}"), "big")


@dataclass(frozen=True, slots=True)
class Key:
    """A JWK reduced to what this example needs. Holds secrets: never print it."""

    kid: str
    kind: str  # "oct" or "RSA"
    secret: bytes = b""
    rsa_public: rsa.RSAPublicKey | None = None
    rsa_private: rsa.RSAPrivateKey | None = None

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r}, kind={self.kind!r})"

    @classmethod
    def from_jwk(cls, jwk: dict[str, Any], kid: str) -> Key:
        kty = str(jwk.get("kty", "")).removesuffix("-HSM")
        if kty == "oct":
            secret = b64url_decode(jwk.get("k"), "JWK member 'k'")
            if len(secret) not in (16, 24, 32):
                raise EnvelopeError("an oct key must be 128, 192 or 256 bits for AES-GCM")
            return cls(kid=kid, kind="oct", secret=secret)
        if kty == "RSA":
            public = rsa.RSAPublicNumbers(_int(jwk, "e"), _int(jwk, "n"))
            if "d" not in jwk:
                return cls(kid=kid, kind="RSA", rsa_public=public.public_key())
            private = rsa.RSAPrivateNumbers(
                p=_int(jwk, "p"),
                q=_int(jwk, "q"),
                d=_int(jwk, "d"),
                dmp1=_int(jwk, "dp"),
                dmq1=_int(jwk, "dq"),
                iqmp=_int(jwk, "qi"),
                public_numbers=public,
            ).private_key()
            return cls(kid=kid, kind="RSA", rsa_public=private.public_key(), rsa_private=private)
        raise EnvelopeError(f"key type {kty or '?'!r} is not supported here: use an oct or RSA key")


def _header(alg: str, kid: str) -> dict[str, Any]:
    return {"v": ENVELOPE_VERSION, "alg": alg, "kid": kid}


def _aad(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


def encrypt(key: Key, plaintext: bytes) -> dict[str, Any]:
    iv = os.urandom(12)
    if key.kind == "oct":
        header = _header(f"dir+A{len(key.secret) * 8}GCM", key.kid)
        ciphertext = AESGCM(key.secret).encrypt(iv, plaintext, _aad(header))
        return {**header, "iv": b64url(iv), "ct": b64url(ciphertext)}
    assert key.rsa_public is not None
    content_key = AESGCM.generate_key(bit_length=256)
    header = _header("RSA-OAEP-256+A256GCM", key.kid)
    ciphertext = AESGCM(content_key).encrypt(iv, plaintext, _aad(header))
    wrapped = key.rsa_public.encrypt(content_key, _OAEP)
    return {**header, "ek": b64url(wrapped), "iv": b64url(iv), "ct": b64url(ciphertext)}


def decrypt(key: Key, envelope: dict[str, Any]) -> bytes:
    if envelope.get("v") != ENVELOPE_VERSION:
        raise EnvelopeError("unknown envelope version")
    alg = envelope.get("alg")
    header = _header(str(alg), str(envelope.get("kid")))
    iv = b64url_decode(envelope.get("iv"), "iv")
    ciphertext = b64url_decode(envelope.get("ct"), "ct")
    if len(iv) != 12:
        raise EnvelopeError("iv must be 12 bytes")
    try:
        if key.kind == "oct":
            if alg != f"dir+A{len(key.secret) * 8}GCM":
                raise EnvelopeError(f"envelope algorithm {alg!r} does not fit this oct key")
            return AESGCM(key.secret).decrypt(iv, ciphertext, _aad(header))
        if alg != "RSA-OAEP-256+A256GCM":
            raise EnvelopeError(f"envelope algorithm {alg!r} does not fit this RSA key")
        if key.rsa_private is None:
            raise EnvelopeError("decrypting needs the private key (a released key), not the public JWK")
        content_key = key.rsa_private.decrypt(b64url_decode(envelope.get("ek"), "ek"), _OAEP)
        return AESGCM(content_key).decrypt(iv, ciphertext, _aad(header))
    except (InvalidTag, ValueError) as exc:
        if isinstance(exc, EnvelopeError):
            raise
        raise EnvelopeError("decryption failed: wrong key, or the envelope was altered") from None


def _read_limited(path: Path, limit: int) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise EnvelopeError(f"{path} is larger than {limit} bytes")
    return data


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_key(args: argparse.Namespace) -> Key:
    if args.jwk:
        jwk = json.loads(_read_limited(args.jwk, MAX_JWK_FILE))
        if not isinstance(jwk, dict):
            raise EnvelopeError(f"{args.jwk} is not a JWK")
        return Key.from_jwk(jwk, kid=args.kid or str(jwk.get("kid") or args.jwk.stem))
    if args.state_file:
        state = load_state(args.state_file)
        kid = args.kid or next(
            (k["name"] for k in state["keys"] if str(k["kty"]).removesuffix("-HSM") in ("oct", "RSA")), None
        )
        sidecar, maa, akv, kid = target_from_state(state, kid)
    else:
        if not (args.maa_endpoint and args.akv_endpoint and args.kid):
            raise EnvelopeError("give --jwk, --state-file, or --maa-endpoint with --akv-endpoint and --kid")
        sidecar, maa, akv, kid = args.sidecar.rstrip("/"), args.maa_endpoint, args.akv_endpoint, args.kid
    wait_until_ready(sidecar, timeout=args.wait)
    return Key.from_jwk(release_key(sidecar, maa_endpoint=maa, akv_endpoint=akv, kid=kid), kid=kid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Encrypt for, or decrypt with, a key released by skr.")
    parser.add_argument("mode", choices=["encrypt", "decrypt"])
    parser.add_argument("--in", dest="source", type=Path, required=True, help="input file")
    parser.add_argument("--out", type=Path, required=True, help="output file (written with mode 0600)")
    keys = parser.add_argument_group("where the key comes from (one of)")
    keys.add_argument("--jwk", type=Path, help="a JWK file, e.g. what `skr release --format jwk` wrote")
    keys.add_argument("--state-file", type=Path, help="release through the stack of `skr dev --state-file`")
    keys.add_argument("--sidecar", default=DEFAULT_SIDECAR, help=f"release through this sidecar ({DEFAULT_SIDECAR})")
    keys.add_argument("--maa-endpoint", help="MAA host for the sidecar")
    keys.add_argument("--akv-endpoint", help="vault host for the sidecar")
    keys.add_argument("--kid", help="key name (also the envelope's kid)")
    keys.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the sidecar")
    args = parser.parse_args(argv)
    try:
        key = load_key(args)
        data = _read_limited(args.source, MAX_INPUT)
        if args.mode == "encrypt":
            output = (json.dumps(encrypt(key, data)) + "\n").encode()
        else:
            envelope = json.loads(data)
            if not isinstance(envelope, dict):
                raise EnvelopeError("the envelope is not a JSON object")
            output = decrypt(key, envelope)
        _write_private(args.out, output)
    except (EnvelopeError, SidecarError, OSError, ValueError, KeyError) as exc:
        print(f"decrypt: {exc}", file=sys.stderr)
        return 1
    # The plaintext's size either way: the input when encrypting, the output when decrypting.
    plaintext_size = len(data) if args.mode == "encrypt" else len(output)
    print(f"{args.mode}ed {plaintext_size} bytes of plaintext with key {key.kid!r} ({key.kind}) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
