"""Issue 15: the gRPC key provider (ocicrypt protocol, the Go sidecar's formats) on a running sidecar.

A real grpcio client over loopback calls skr's server, which releases through the real Azure SDKs
against the emulators. The Go-format annotation is built here from the documented JSON (not by skr's
own encoder), so a drift in skr's reader shows up as a failure.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from grpc import aio

from skr.core import keyprovider as kp
from skr.errors import BadRequestError
from skr.shell.grpc_api import check_authority
from skr.shell.serve import RunningSidecar
from skr_dev.emulators.stack import EmulatorStack, default_release_policy
from tests.e2e.conftest import VaultAdmin, netloc, start_stack_sidecar

SERVICE = "/keyprovider.KeyProviderService/"
OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
LAYER_KEY = bytes(range(32))

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(e2e_state_dir: Path) -> AsyncIterator[EmulatorStack]:
    keys = [{"name": "hsm-rsa3072", "vault": "managedhsm", "kty": "RSA-HSM", "size": 3072}]
    async with EmulatorStack({"keys": keys}, state_dir=e2e_state_dir) as emulators:
        policy = default_release_policy(emulators.maa.url, bytes.fromhex("ab" * 32))
        await emulators.seed(
            [{"name": "hsm-denied", "vault": "managedhsm", "kty": "RSA-HSM", "size": 3072, "release_policy": policy}]
        )
        yield emulators


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar(stack: EmulatorStack) -> AsyncIterator[RunningSidecar]:
    running = await start_stack_sidecar(stack, grpc_port=0)
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(sidecar: RunningSidecar) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as chan:
        yield chan


def message(payload: bytes) -> bytes:
    """Field 1, wire type 2 — written out by hand, independent of skr's encoder."""
    length = len(payload)
    varint = bytearray()
    while True:
        varint.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return b"\x0a" + bytes(varint) + payload


async def call(chan: aio.Channel, method: str, request: bytes) -> bytes:
    rpc = chan.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    result: bytes = await rpc(request, timeout=20)
    return result


async def call_error(chan: aio.Channel, method: str, request: bytes) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await call(chan, method, request)
    return info.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unwrap_input(annotation: bytes, parameter: bytes = b"aasp") -> bytes:
    document = {
        "op": "keyunwrap",
        "keyunwrapparams": {
            "dc": {"Parameters": {"attestation-agent": [b64(parameter)]}},
            "annotation": b64(annotation),
        },
    }
    return message(json.dumps(document).encode())


def wrap_input(reference: str, optsdata: bytes = LAYER_KEY, provider: str = "attestation-agent") -> bytes:
    document = {
        "op": "keywrap",
        "keywrapparams": {
            "ec": {"Parameters": {provider: [b64(f"aasp:{reference}".encode())]}, "Dc": {"Parameters": None}},
            "optsdata": b64(optsdata),
        },
    }
    return message(json.dumps(document).encode())


def reply_json(reply: bytes) -> dict[str, Any]:
    return json.loads(kp.decode_bytes_message(reply))


async def vault_public_key(vault_admin: VaultAdmin, name: str) -> rsa.RSAPublicKey:
    key = await vault_admin.managedhsm.get_key(name)
    n = int.from_bytes(key.key.n, "big")
    e = int.from_bytes(key.key.e, "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def go_annotation(stack: EmulatorStack, public: rsa.RSAPublicKey, kid: str) -> bytes:
    """The Go sidecar's AnnotationPacket as json.Marshal writes it ([]byte as standard base64)."""
    state = stack.state()
    packet = {
        "kid": kid,
        "wrapped_data": b64(public.encrypt(LAYER_KEY, OAEP)),
        "wrap_type": "rsa_3072",
        "kms_endpoint": netloc(state["managedhsm_url"]),
        "attester_endpoint": netloc(state["maa_url"]),
    }
    return json.dumps(packet).encode()


async def test_go_format_annotation_unwraps(
    stack: EmulatorStack, vault_admin: VaultAdmin, channel: aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    annotation = go_annotation(stack, await vault_public_key(vault_admin, "hsm-rsa3072"), "hsm-rsa3072")
    reply = reply_json(await call(channel, "UnWrapKey", unwrap_input(annotation)))
    assert base64.b64decode(reply["keyunwrapresults"]["optsdata"]) == LAYER_KEY
    for secret in (LAYER_KEY.hex(), b64(LAYER_KEY)):
        assert secret not in caplog.text


async def test_wrap_by_vault_key_then_unwrap(
    stack: EmulatorStack, sidecar: RunningSidecar, channel: aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reference = f"{stack.state()['managedhsm_url'].rstrip('/')}/keys/hsm-rsa3072"
    wrapped = reply_json(await call(channel, "WrapKey", wrap_input(reference)))
    annotation = json.loads(base64.b64decode(wrapped["keywrapresults"]["annotation"]))
    assert annotation["wrap_type"] == "rsa_3072"
    assert annotation["kid"] == "hsm-rsa3072"
    assert annotation["kms_endpoint"] == netloc(stack.state()["managedhsm_url"])
    assert len(base64.b64decode(annotation["wrapped_data"])) == 384  # RSA-3072
    raw = base64.b64decode(wrapped["keywrapresults"]["annotation"])
    reply = reply_json(await call(channel, "UnWrapKey", unwrap_input(raw)))
    assert base64.b64decode(reply["keyunwrapresults"]["optsdata"]) == LAYER_KEY
    assert b64(LAYER_KEY) not in caplog.text
    metrics = sidecar.state.metrics.registry
    assert metrics.get_sample_value("skr_grpc_requests_total", {"method": "UnWrapKey", "code": "OK"}) >= 1


async def test_wrap_from_local_key_file_as_the_go_sidecar(
    stack: EmulatorStack, vault_admin: VaultAdmin, channel: aio.Channel, tmp_path: Path
) -> None:
    public = await vault_public_key(vault_admin, "hsm-rsa3072")
    pem = tmp_path / "hsm-rsa3072.pem"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    state = stack.state()
    info = {
        "public_key_path": str(pem),
        "kms_endpoint": netloc(state["managedhsm_url"]),
        "attester_endpoint": netloc(state["maa_url"]),
    }
    key_path = tmp_path / "hsm-rsa3072"
    Path(f"{key_path}-info.json").write_text(json.dumps(info))
    wrapped = reply_json(await call(channel, "WrapKey", wrap_input(str(key_path))))
    raw = base64.b64decode(wrapped["keywrapresults"]["annotation"])
    assert json.loads(raw)["kid"] == "hsm-rsa3072"
    reply = reply_json(await call(channel, "UnWrapKey", unwrap_input(raw)))
    assert base64.b64decode(reply["keyunwrapresults"]["optsdata"]) == LAYER_KEY


async def test_release_policy_mismatch_is_permission_denied(
    stack: EmulatorStack, vault_admin: VaultAdmin, channel: aio.Channel
) -> None:
    annotation = go_annotation(stack, await vault_public_key(vault_admin, "hsm-denied"), "hsm-denied")
    error = await call_error(channel, "UnWrapKey", unwrap_input(annotation))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "x-ms-sevsnpvm-hostdata" in (error.details() or "").lower() or "polic" in (error.details() or "")


@pytest.mark.parametrize(
    ("method", "request_bytes", "hint"),
    [
        ("WrapKey", b"\x0a\x05", "runs past the end"),
        ("WrapKey", message(b"not json"), "not valid UTF-8 JSON"),
        ("WrapKey", wrap_input("/k", provider="other"), "attestation-agent"),
        ("WrapKey", wrap_input(""), "missing key reference"),
        ("WrapKey", message(b'{"keywrapparams":{"ec":{"Parameters":{"attestation-agent":["%%%"]}}}}'), "base64"),
        (
            "UnWrapKey",
            unwrap_input(b'{"kid":"k","wrapped_data":"AA==","kms_endpoint":"h","wrap_type":"aes"}'),
            "wrap_type",
        ),
        ("UnWrapKey", unwrap_input(b"{}", parameter=b"other"), "aasp"),
        ("UnWrapKey", message(b"x" * (kp.MAX_MESSAGE_BYTES + 1)), "larger than"),
    ],
)
async def test_bad_input_is_invalid_argument_saying_what_to_fix(
    channel: aio.Channel, method: str, request_bytes: bytes, hint: str
) -> None:
    error = await call_error(channel, method, request_bytes)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert hint in (error.details() or "")


async def test_say_hello_and_get_report(channel: aio.Channel) -> None:
    assert kp.decode_bytes_message(await call(channel, "SayHello", message(b"skr"))) == b"Hello skr"
    report = bytes.fromhex(kp.decode_bytes_message(await call(channel, "GetReport", message(b"abc"))).decode())
    import hashlib

    assert report[0x50:0x90] == hashlib.sha256(b"abc").digest() + bytes(32)  # REPORT_DATA (AMD ABI offset 0x50)


def test_origin_rule() -> None:
    """grpcio does not hand :authority to handlers, so the server enforces the peer rule (and the
    authority rule whenever a transport supplies it); both are checked here as a pure function."""
    check_authority("localhost:5000", "ipv4:127.0.0.1:4242", 5000)
    check_authority(None, "ipv6:[::1]:4242", 5000)
    for authority, peer in (
        ("evil.example:5000", "ipv4:127.0.0.1:1"),
        ("127.0.0.1:5001", "ipv4:127.0.0.1:1"),
        (None, "ipv4:10.0.0.5:1"),
    ):
        with pytest.raises(BadRequestError):
            check_authority(authority, peer, 5000)


def fuzz_cases(count: int) -> list[tuple[str, bytes]]:
    """Seeded, reproducible malformed inputs: random bytes, random field 1, wrong JSON, huge fields."""
    rng = random.Random(15)
    methods = ["WrapKey", "UnWrapKey", "GetReport", "GetAttestationData", "SayHello"]
    shapes: list[Any] = [
        lambda: rng.randbytes(rng.randrange(300)),
        lambda: message(rng.randbytes(rng.randrange(300))),
        lambda: message(
            json.dumps({"op": rng.choice(["keywrap", 1, None]), "keywrapparams": rng.choice([[], "x", {}])}).encode()
        ),
        lambda: wrap_input("/nope", optsdata=rng.randbytes(rng.randrange(6000))),
        lambda: unwrap_input(rng.randbytes(rng.randrange(2000))),
        lambda: message(b"[" * rng.randrange(1, 5000)),
        lambda: bytes([0x0A]) + rng.randbytes(10),
        lambda: bytes([rng.randrange(256)]) * rng.randrange(1, 50),
    ]
    return [(rng.choice(methods), rng.choice(shapes)()) for _ in range(count)]


async def test_fuzz_always_answers_a_status(channel: aio.Channel) -> None:
    seen: set[grpc.StatusCode] = set()
    for method, body in fuzz_cases(int(os.environ.get("SKR_GRPC_FUZZ_CASES", "300"))):
        try:
            await call(channel, method, body)
            seen.add(grpc.StatusCode.OK)
        except aio.AioRpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, exc.details())
            seen.add(exc.code())
    assert grpc.StatusCode.INVALID_ARGUMENT in seen
    # The server still answers after the pass.
    assert kp.decode_bytes_message(await call(channel, "SayHello", message(b"after"))) == b"Hello after"
