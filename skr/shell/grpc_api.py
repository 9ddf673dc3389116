"""The Go sidecar's gRPC key-provider API (``-server_type grpc``) on the same release core as HTTP.

Service ``keyprovider.KeyProviderService``: ``WrapKey``/``UnWrapKey`` (the ocicrypt key-provider
protocol, so skopeo/containerd can encrypt and decrypt image layers), ``GetReport``,
``GetAttestationData`` and ``SayHello``. Formats live in :mod:`skr.core.keyprovider`.

Why no generated code: every message of this service has only bytes/string fields, so a strict,
bounded reader/writer of those (in ``skr.core.keyprovider``) is a few dozen lines, needs no
``protoc`` step at build time and no ``protobuf`` runtime, and refuses malformed input with a clear
message. grpcio is registered with generic handlers whose (de)serialisers are the identity, so the
raw message bytes reach that reader. grpcio is imported only here, and this module only when a gRPC
port is configured, so ``skr release`` and ``skr --help`` never load it.

Origin rule as for HTTP: the listener is loopback unless ``--unsafe-bind``; each call's peer must be
a loopback address and its ``:authority`` a loopback name or literal with the bound port when the
transport exposes it — grpcio 1.85 does not pass ``:authority`` to handlers, so in practice the
loopback listener and the peer check are what enforce the rule.
Logs and errors never carry the layer key or the released key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc import aio

from skr.core import keyprovider as kp
from skr.core.crypto import b64url_decode, rsa_private_key_from_jwk
from skr.core.endpoints import is_loopback_host
from skr.core.release import KeyReleaser
from skr.errors import BadRequestError, ConfigError, NotReadyError, SkrError, grpc_status_for
from skr.shell.http_api import AppState, Metrics

__all__ = ["SERVICE", "GrpcServer", "GrpcState", "check_authority", "start_grpc"]

_logger = logging.getLogger(__name__)

SERVICE: Final = "keyprovider.KeyProviderService"
_MAX_KEY_FILE_BYTES: Final = 64 * 1024
_MAX_REPORT_DATA_CHARS: Final = 4096


@dataclass
class GrpcState:
    """The HTTP app's state (one release core, caches, single flight, metrics, readiness) plus the port."""

    app: AppState
    port: int = 0

    @property
    def releaser(self) -> KeyReleaser:
        return self.app.releaser

    @property
    def metrics(self) -> Metrics:
        return self.app.metrics


def check_authority(authority: str | None, peer: str, port: int) -> None:
    """Refuse calls from a non-loopback peer, or naming a non-loopback ``:authority`` or another port.

    Kept independent of grpcio so it can share the HTTP origin module's host rule.
    """
    host = peer
    if peer.startswith(("ipv4:", "ipv6:")):
        host = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
        if not is_loopback_host(host):
            raise BadRequestError("gRPC calls are accepted from loopback peers only")
    if authority:
        parts = urlsplit("//" + authority)
        try:
            given_port = parts.port
        except ValueError:
            given_port = None
        if not parts.hostname or not is_loopback_host(parts.hostname) or (port and given_port not in (None, port)):
            raise BadRequestError(
                f":authority must be a loopback host with port {port} (localhost, 127.0.0.1 or [::1])"
            )


Handler = Callable[[GrpcState, bytes], Awaitable[bytes]]


def _status(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


def _instrument(state: GrpcState, method: str, handler: Handler) -> Callable[[bytes, Any], Awaitable[bytes]]:
    async def call(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        details = ""
        try:
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            check_authority(metadata.get(":authority"), context.peer() or "", state.port)
            return await handler(state, request)
        except SkrError as exc:
            code, details = _status(grpc_status_for(exc)), exc.message
            level = logging.WARNING if code is grpc.StatusCode.INVALID_ARGUMENT else logging.ERROR
            _logger.log(level, "grpc %s -> %s %s: %s", method, code.name, exc.code, exc.message)
        except Exception:
            code, details = grpc.StatusCode.INTERNAL, "internal error; see the sidecar log"
            _logger.exception("grpc %s failed unexpectedly", method)
        finally:
            state.metrics.grpc_requests.labels(method, code.name).inc()
            state.metrics.grpc_latency.labels(method).observe(time.perf_counter() - started)
        await context.abort(code, details)
        raise AssertionError("abort returns only by raising")  # pragma: no cover

    return call


def _require_platform(state: GrpcState) -> None:
    if not state.app.platform_ready:
        raise NotReadyError(state.app.startup_error or "the SEV-SNP platform is not available")


def _read_small(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise BadRequestError(f"cannot read {what} {str(path)[:200]!r}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise BadRequestError(f"{what} {str(path)[:200]!r} is larger than {_MAX_KEY_FILE_BYTES} bytes")
    return data


def _netloc(text: str) -> str:
    """The Go sidecar's annotation endpoints are host[:port] without a scheme."""
    return urlsplit(text if "://" in text else "//" + text).netloc


async def _wrap_annotation(state: GrpcState, request: kp.WrapRequest) -> kp.Annotation:
    reference = request.key_reference
    if reference.startswith("https://"):
        # A vault key URL: https://<vault host>/keys/<name>[/<version>] — get key, wrap by name.
        parts = urlsplit(reference)
        segments = parts.path.strip("/").split("/")
        if len(segments) not in (2, 3) or segments[0] != "keys":
            raise BadRequestError("a vault key reference must be https://<vault host>/keys/<name>[/<version>]")
        vault, jwk = await state.releaser.public_key(kid="/".join(segments[1:]), akv=f"https://{parts.netloc}")
        public = rsa.RSAPublicNumbers(
            int.from_bytes(b64url_decode(jwk["e"]), "big"), int.from_bytes(b64url_decode(jwk["n"]), "big")
        ).public_key()
        if public.key_size < 2048:
            raise BadRequestError("the vault key must be RSA of at least 2048 bits")
        default_maa = state.releaser.default_maa or ""
        return kp.wrap_layer_key(
            request.optsdata,
            public,
            kid="/".join(segments[1:]),
            kms_endpoint=vault.netloc,
            attester_endpoint=_netloc(default_maa) if default_maa else "",
        )
    # The Go sidecar's form: a local path whose <path>-info.json names the PEM and the endpoints.
    path = Path(reference)
    info = kp.parse_key_info(_read_small(Path(reference + "-info.json"), "key info file"))
    public = kp.load_rsa_public_key(_read_small(Path(info.public_key_path), "public key file"), "public key file")
    return kp.wrap_layer_key(
        request.optsdata,
        public,
        kid=path.name,
        kms_endpoint=info.kms_endpoint,
        attester_endpoint=info.attester_endpoint,
    )


async def wrap_key(state: GrpcState, message: bytes) -> bytes:
    request = kp.parse_wrap_request(kp.decode_bytes_message(message))
    annotation = await _wrap_annotation(state, request)
    _logger.info("wrapped a layer key for %s at %s", annotation.kid, annotation.kms_endpoint)
    return kp.encode_bytes_message(kp.wrap_result(annotation))


async def unwrap_key(state: GrpcState, message: bytes) -> bytes:
    annotation = kp.parse_unwrap_request(kp.decode_bytes_message(message)).annotation
    _require_platform(state)
    try:
        released = await state.releaser.release(
            kid=annotation.kid,
            akv=annotation.kms_endpoint,
            maa=annotation.attester_endpoint or None,
            enc="RSA_AES_KEY_WRAP_256",
        )
    except SkrError as exc:
        state.metrics.releases.labels(exc.code).inc()
        raise
    state.metrics.releases.labels("released").inc()
    jwk = released.jwk.reveal()
    if jwk.get("kty") != "RSA":
        raise BadRequestError(f"key {annotation.kid!r} is {jwk.get('kty')!r}, but rsa_3072 layers need an RSA key")
    layer_key = kp.unwrap_layer_key(annotation, rsa_private_key_from_jwk(jwk))
    _logger.info("unwrapped a layer key with %s", released.kid)
    return kp.encode_bytes_message(kp.unwrap_result(layer_key).reveal())


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError(f"{what} is not UTF-8") from None


async def get_report(state: GrpcState, message: bytes) -> bytes:
    """REPORT_DATA = sha256(the string's bytes) padded to 64 bytes, as the Go sidecar does."""
    text = _utf8(kp.decode_bytes_message(message), "report_data_hex_string")
    if len(text) > _MAX_REPORT_DATA_CHARS:
        raise BadRequestError(f"report_data_hex_string is longer than {_MAX_REPORT_DATA_CHARS} characters")
    _require_platform(state)
    evidence = await state.releaser.raw_report(hashlib.sha256(text.encode()).digest() + bytes(32))
    return kp.encode_bytes_message(evidence.report.hex().encode())


async def get_attestation_data(state: GrpcState, message: bytes) -> bytes:
    """Report, endorsed TCB, certificate chain and UVM reference, as the HTTP /attest/combined does."""
    text = _utf8(kp.decode_bytes_message(message), "b64_runtime_data_string")
    try:
        runtime_data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("b64_runtime_data_string is not standard base64") from None
    _require_platform(state)
    evidence = await state.releaser.evidence(runtime_data)
    reference = state.releaser.security_context_reference() or b""
    return kp.encode_string_fields(
        evidence.collateral.verified.report.reported_tcb.tcbm().lower().encode(),
        base64.b64encode(evidence.collateral.chain_pem),
        base64.b64encode(evidence.raw.report),
        base64.b64encode(reference),
    )


async def say_hello(state: GrpcState, message: bytes) -> bytes:
    name = _utf8(kp.decode_bytes_message(message), "name")
    if len(name) > 256:
        raise BadRequestError("name is longer than 256 characters")
    return kp.encode_bytes_message(("Hello " + name).encode())


_METHODS: Final[dict[str, Handler]] = {
    "WrapKey": wrap_key,
    "UnWrapKey": unwrap_key,
    "GetReport": get_report,
    "GetAttestationData": get_attestation_data,
    "SayHello": say_hello,
}


@dataclass
class GrpcServer:
    """A started gRPC server and its bound port."""

    server: aio.Server
    port: int
    state: GrpcState

    async def stop(self) -> None:
        await self.server.stop(grace=1.0)


async def start_grpc(state: GrpcState, host: str, port: int) -> GrpcServer:
    """Listen on ``host:port`` (0: ephemeral) and serve the key-provider API."""
    limit = kp.MAX_MESSAGE_BYTES + 1024
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=64,
    )
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(_instrument(state, name, handler))
        for name, handler in _METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"cannot listen for gRPC on {address}")
    state.port = bound
    await server.start()
    _logger.info("listening for gRPC (%s) on %s:%d", SERVICE, host, bound)
    return GrpcServer(server, bound, state)
