#!/usr/bin/env python3
"""A minimal application that gets its key from the skr sidecar (standard library only).

What an app in a confidential pod does: wait until the sidecar says it is ready (``GET /status``),
ask it for the key (``POST /key/release``), then use the key; here an ``oct`` key authenticates a
message with HMAC-SHA256 and an RSA or EC key reports its public thumbprint. The key is never
printed or written anywhere.

    python3 app.py --maa-endpoint sharedeus.eus.attest.azure.net \\
        --akv-endpoint myvault.vault.azure.net --kid mykey

Against the local simulated stack (``skr dev --state-file state.json``)::

    python3 app.py --state-file state.json [--kid NAME]

``decrypt.py`` reuses :func:`release_key` and :func:`load_state` from this file.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_SIDECAR = "http://localhost:8080"
MAX_RESPONSE = 1024 * 1024
MAX_STATE_FILE = 1024 * 1024


class SidecarError(RuntimeError):
    """The sidecar could not be reached or refused; the message carries its error code."""


def _request(method: str, url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_RESPONSE + 1)
    if len(raw) > MAX_RESPONSE:
        raise SidecarError(f"{url}: response larger than {MAX_RESPONSE} bytes")
    try:
        document = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        raise SidecarError(f"{url}: answered HTTP {status} with a body that is not JSON") from None
    if not isinstance(document, dict):
        raise SidecarError(f"{url}: answered HTTP {status} with JSON that is not an object")
    return status, document


def wait_until_ready(sidecar: str, *, timeout: float) -> None:
    """Poll ``GET /status`` until 200 (the sidecar fetched its first certificates) or ``timeout``."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            status, document = _request("GET", f"{sidecar}/status", None, timeout=5)
            if status == 200:
                return
            last = f"HTTP {status}: {document.get('reason') or document.get('message')}"
        except (OSError, SidecarError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise SidecarError(f"sidecar at {sidecar} not ready after {timeout:.0f} s ({last})")
        time.sleep(0.5)


def release_key(sidecar: str, *, maa_endpoint: str, akv_endpoint: str, kid: str, timeout: float = 60) -> dict[str, Any]:
    """``POST /key/release`` and return the private JWK (the sidecar sends it as a JSON string)."""
    body = {"maa_endpoint": maa_endpoint, "akv_endpoint": akv_endpoint, "kid": kid}
    try:
        status, document = _request("POST", f"{sidecar}/key/release", body, timeout=timeout)
    except OSError as exc:
        raise SidecarError(f"sidecar at {sidecar} unreachable: {exc}") from None
    if status != 200:
        raise SidecarError(f"release of {kid!r} failed: HTTP {status} {document.get('code')}: {document.get('error')}")
    key = document.get("key")
    if not isinstance(key, str):
        raise SidecarError("the sidecar's answer has no key")
    jwk = json.loads(key)
    if not isinstance(jwk, dict) or "kty" not in jwk:
        raise SidecarError("the released key is not a JWK")
    return jwk


def load_state(path: Path) -> dict[str, Any]:
    """The JSON state file ``skr dev --state-file`` writes (sidecar_url, maa_url, keys, ...)."""
    data = path.read_bytes()
    if len(data) > MAX_STATE_FILE:
        raise ValueError(f"{path} is larger than {MAX_STATE_FILE} bytes")
    state = json.loads(data)
    if not isinstance(state, dict) or not isinstance(state.get("keys"), list):
        raise ValueError(f"{path} is not an skr dev state file")
    return state


def target_from_state(state: dict[str, Any], kid: str | None) -> tuple[str, str, str, str]:
    """(sidecar URL, MAA host, vault host, key name) for a key of the dev stack."""
    keys = state["keys"]
    if kid is None:
        if not keys:
            raise ValueError("the state file lists no keys; pass --kid")
        chosen = keys[0]
    else:
        name = kid.split("/", 1)[0]
        chosen = next((k for k in keys if k["name"] == name), {"name": kid, "vault_url": state["keyvault_url"]})
    return (
        state["sidecar_url"].rstrip("/"),
        urlsplit(state["maa_url"]).netloc,
        urlsplit(chosen["vault_url"]).netloc,
        kid or chosen["name"],
    )


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of the PUBLIC members of an RSA or EC key."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def use_key(jwk: dict[str, Any], message: bytes) -> str:
    """Do something with the key that proves we hold it, and say what (without revealing it)."""
    kty = jwk["kty"]
    if kty in ("oct", "oct-HSM"):
        secret = _b64url_decode(jwk["k"])
        tag = hmac.new(secret, message, hashlib.sha256).digest()
        return f"oct key ({len(secret) * 8} bits) made a {len(tag) * 8}-bit HMAC-SHA256 tag over {len(message)} bytes"
    if kty in ("RSA", "RSA-HSM", "EC", "EC-HSM"):
        public = dict(jwk, kty=kty.removesuffix("-HSM"))
        return f"{public['kty']} private key with public thumbprint {thumbprint(public)}"
    raise ValueError(f"unexpected key type {kty!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Get a key from the skr sidecar and use it.")
    parser.add_argument("--sidecar", default=DEFAULT_SIDECAR, help=f"sidecar URL (default {DEFAULT_SIDECAR})")
    parser.add_argument("--maa-endpoint", help="MAA host, e.g. sharedeus.eus.attest.azure.net")
    parser.add_argument("--akv-endpoint", help="vault host, e.g. myvault.vault.azure.net")
    parser.add_argument("--kid", help="key name or name/version")
    parser.add_argument("--state-file", type=Path, help="use the stack of `skr dev --state-file`")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the sidecar (default 60)")
    args = parser.parse_args(argv)
    try:
        if args.state_file:
            sidecar, maa, akv, kid = target_from_state(load_state(args.state_file), args.kid)
            maa, akv = args.maa_endpoint or maa, args.akv_endpoint or akv
        else:
            if not (args.maa_endpoint and args.akv_endpoint and args.kid):
                parser.error("--maa-endpoint, --akv-endpoint and --kid are required without --state-file")
            sidecar, maa, akv, kid = args.sidecar.rstrip("/"), args.maa_endpoint, args.akv_endpoint, args.kid
        wait_until_ready(sidecar, timeout=args.wait)
        jwk = release_key(sidecar, maa_endpoint=maa, akv_endpoint=akv, kid=kid)
        print(f"released {kid}: {use_key(jwk, b'hello from a confidential pod')}")
    except (SidecarError, OSError, ValueError, KeyError) as exc:
        print(f"app: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
