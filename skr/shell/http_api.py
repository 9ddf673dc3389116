"""The localhost HTTP API (design.md §2), a drop-in for the Go sidecar's paths and JSON shapes.

Handlers only parse, call :class:`skr.core.release.KeyReleaser`, and serialise. One middleware first applies
the request origin policy (:mod:`skr.shell.origin`: no browser-borne or DNS-rebound request), then turns
every :class:`skr.errors.SkrError` into ``{"error": ..., "code": ...}`` with the status from
:func:`skr.errors.http_status_for`; anything unexpected becomes a 500 without details. Bodies are
capped, JSON is validated, every response carries a request id, and every response is
``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from skr.core.release import KeyReleaser
from skr.errors import BadRequestError, BodyTooLargeError, NotReadyError, SkrError, http_status_for
from skr.primitives.encoding import b64_decode_lenient_alphabet, b64_encode
from skr.shell.logs import request_id_var
from skr.shell.origin import check_request_origin

__all__ = ["AppState", "Metrics", "SidecarRunner", "create_app"]

_logger = logging.getLogger(__name__)

MAX_RUNTIME_DATA_B64: Final = 96 * 1024
ENC_VALUES: Final = frozenset({"CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384"})
_SAFE_REQUEST_ID: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class Metrics:
    """Prometheus metrics of one app (own registry, so tests and several apps do not collide)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("skr_http_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("skr_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry)
        self.upstream = Counter(
            "skr_upstream_requests", "Upstream calls", ["service", "status"], registry=self.registry
        )
        self.upstream_latency = Histogram(
            "skr_upstream_request_seconds", "Upstream call latency", ["service"], registry=self.registry
        )
        self.grpc_requests = Counter(
            "skr_grpc_requests", "gRPC key-provider calls", ["method", "code"], registry=self.registry
        )
        self.grpc_latency = Histogram(
            "skr_grpc_request_seconds", "gRPC key-provider call latency", ["method"], registry=self.registry
        )
        self.releases = Counter("skr_key_releases", "Key releases by outcome", ["outcome"], registry=self.registry)

    def record_upstream(self, service: str, status: int | None, seconds: float) -> None:
        self.upstream.labels(service, str(status) if status is not None else "error").inc()
        self.upstream_latency.labels(service).observe(seconds)


@dataclass
class AppState:
    """What the handlers need; one instance per application."""

    releaser: KeyReleaser
    metrics: Metrics
    max_body_bytes: int = 65536
    simulated_banner: str | None = None  # set only by `skr dev`
    startup_error: str | None = None
    platform_ready: bool = True

    def readiness(self) -> dict[str, bool]:
        return {"platform": self.platform_ready, **self.releaser.readiness()}


STATE: Final = web.AppKey("skr_state", AppState)
_CLOSE_AFTER: Final = web.RequestKey("skr_close_after_response", bool)


def _error_body(message: str, code: str, state: AppState | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code}
    if state is not None and state.simulated_banner:
        body["warning"] = state.simulated_banner
    return body


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if 0 < len(incoming) <= 64 and set(incoming) <= _SAFE_REQUEST_ID else uuid.uuid4().hex
    token = request_id_var.set(request_id)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    try:
        try:
            _check_origin(request)
            response = await handler(request)
        except SkrError as exc:
            status = http_status_for(exc)
            level = logging.WARNING if status < 500 else logging.ERROR
            _logger.log(level, "%s %s -> %d %s: %s", request.method, route, status, exc.code, exc.message)
            response = web.json_response(_error_body(exc.message, exc.code, state), status=status)
        except web.HTTPException as exc:
            code, message = _http_exception_code(exc)
            response = web.json_response(_error_body(message, code, state), status=exc.status)
            if isinstance(exc, web.HTTPMethodNotAllowed):
                response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        except ConnectionError:
            # The client went away mid-request; there is nobody to answer. aiohttp closes the socket.
            _logger.debug("client disconnected during %s %s", request.method, route)
            raise
        except Exception:
            _logger.exception("unexpected error handling %s %s", request.method, route)
            response = web.json_response(
                _error_body("internal error; see the sidecar log", "internal_error", state), status=500
            )
        if request.get(_CLOSE_AFTER):
            response.force_close()
        response.headers["X-Request-Id"] = request_id
        # Nothing this API answers may be cached: keys, tokens, reports, and errors about them.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        if state.simulated_banner:
            response.headers["X-SKR-Simulated"] = state.simulated_banner
        state.metrics.requests.labels(route, str(response.status)).inc()
        state.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response
    finally:
        request_id_var.reset(token)


def _check_origin(request: web.BaseRequest) -> None:
    """Apply :mod:`skr.shell.origin` with the accepting socket's address (before any handler runs)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        local_address, local_port = "", -1  # no socket (closed already): nothing can match, refuse
    else:
        local_address, local_port = str(sockname[0]), int(sockname[1])
    headers = request.headers
    check_request_origin(
        hosts=headers.getall("Host", []),
        origins=headers.getall("Origin", []),
        fetch_sites=headers.getall("Sec-Fetch-Site", []),
        http_version=(request.version.major, request.version.minor),
        local_address=local_address,
        local_port=local_port,
    )


def _http_exception_code(exc: web.HTTPException) -> tuple[str, str]:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return BodyTooLargeError.code, "request body is too large"
    if isinstance(exc, web.HTTPNotFound):
        return "not_found", "no such endpoint; see GET /status and the README for the API"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return "method_not_allowed", f"method not allowed; use {', '.join(sorted(exc.allowed_methods))}"
    return "bad_request", exc.reason or "bad request"


async def _json_body(request: web.Request) -> dict[str, Any]:
    state = request.app[STATE]
    if request.content_length is not None and request.content_length > state.max_body_bytes:
        raise BodyTooLargeError(f"request body exceeds {state.max_body_bytes} bytes (SKR_MAX_BODY_BYTES)")
    try:
        # The whole body, however it arrives (segments, chunks); aiohttp enforces client_max_size.
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLargeError(f"request body exceeds {state.max_body_bytes} bytes (SKR_MAX_BODY_BYTES)") from None
    except (RequestPayloadError, BadHttpMessage):
        # The rest of the body cannot be parsed: stop aiohttp from draining it after we answer, and
        # close the connection once the 400 is sent (framing is lost).
        request.content.feed_eof()
        request[_CLOSE_AFTER] = True
        raise BadRequestError("request body could not be read (bad framing or content encoding)") from None
    if not raw.strip():
        raise BadRequestError("request body must be a JSON object")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequestError("request body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(document, dict):
        raise BadRequestError("request body must be a JSON object")
    return document


def _string_field(body: dict[str, Any], name: str, *, required: bool, max_length: int = 4096) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise BadRequestError(f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"'{name}' must be a string")
    if len(value) > max_length:
        raise BadRequestError(f"'{name}' is longer than {max_length} characters")
    return value


def _runtime_data(body: dict[str, Any]) -> bytes:
    """``runtime_data``: standard base64 as the Go sidecar documents; URL-safe accepted too."""
    text = _string_field(body, "runtime_data", required=True, max_length=MAX_RUNTIME_DATA_B64)
    assert text is not None
    try:
        return b64_decode_lenient_alphabet(text)
    except ValueError:
        raise BadRequestError("'runtime_data' is not valid base64") from None


# --- handlers -------------------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    readiness = state.readiness()
    if all(readiness.values()):
        return _json(state, {"message": "STATUS OK"})
    body: dict[str, Any] = {"message": "STATUS NOT OK", "ready": readiness}
    if state.startup_error:
        body["reason"] = state.startup_error
    return _json(state, body, status=503)


async def healthz(request: web.Request) -> web.Response:
    return _json(request.app[STATE], {"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    readiness = state.readiness()
    ready = all(readiness.values())
    return _json(state, {"ready": ready, **readiness}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    response = web.Response(body=generate_latest(state.metrics.registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _require_platform(state: AppState) -> None:
    if not state.platform_ready:
        raise NotReadyError(state.startup_error or "the SEV-SNP platform is not available")


async def attest_raw(request: web.Request) -> web.Response:
    state = request.app[STATE]
    runtime_data = _runtime_data(await _json_body(request))
    _require_platform(state)
    report_data = hashlib.sha256(runtime_data).digest() + bytes(32)
    evidence = await state.releaser.raw_report(report_data, with_certificates=False)
    return _json(state, {"report": evidence.report.hex()})


async def attest_combined(request: web.Request) -> web.Response:
    state = request.app[STATE]
    runtime_data = _runtime_data(await _json_body(request))
    _require_platform(state)
    evidence = await state.releaser.evidence(runtime_data)
    reference = state.releaser.security_context_reference()
    return _json(
        state,
        {
            "endorsed_tcb": evidence.collateral.verified.report.reported_tcb.tcbm().lower(),
            "endorsements": b64_encode(evidence.collateral.chain_pem),
            "evidence": b64_encode(evidence.raw.report),
            "uvm_endorsements": b64_encode(reference) if reference else "",
        },
    )


async def attest_maa(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _json_body(request)
    maa = _string_field(body, "maa_endpoint", required=False, max_length=300)
    runtime_data = _runtime_data(body)
    _require_platform(state)
    token = await state.releaser.attest(maa, runtime_data)
    return _json(state, {"token": token.raw.reveal()})


async def key_release(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _json_body(request)
    kid = _string_field(body, "kid", required=True, max_length=300)
    assert kid is not None
    maa = _string_field(body, "maa_endpoint", required=False, max_length=300)
    akv = _string_field(body, "akv_endpoint", required=False, max_length=300)
    access_token = _string_field(body, "access_token", required=False, max_length=16 * 1024)
    if access_token is not None and not (access_token.isascii() and access_token.isprintable()):
        # It becomes an Authorization header: CR/LF or other controls would be refused by the HTTP
        # client later as a misleading upstream error (issue 13 item 6). The value is not echoed.
        raise BadRequestError("'access_token' must be printable ASCII (no CR, LF or other control characters)")
    enc = _string_field(body, "enc", required=False, max_length=64) or "CKM_RSA_AES_KEY_WRAP"
    if enc not in ENC_VALUES:
        raise BadRequestError(f"'enc' must be one of {', '.join(sorted(ENC_VALUES))}")
    _require_platform(state)
    try:
        released = await state.releaser.release(kid=kid, akv=akv, maa=maa, access_token=access_token, enc=enc)
    except SkrError as exc:
        state.metrics.releases.labels(exc.code).inc()
        raise
    state.metrics.releases.labels("released").inc()
    _logger.info("released key %s (%s)", released.kid, released.kty)
    # The Go sidecar's shape: the JWK serialised as a JSON string inside {"key": ...}.
    return _json(state, {"key": json.dumps(released.jwk.reveal(), separators=(",", ":"))})


def _json(state: AppState, body: dict[str, Any], *, status: int = 200) -> web.Response:
    if state.simulated_banner:
        body = {**body, "warning": state.simulated_banner}
    return web.json_response(body, status=status)


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's protocol handler, answering unparsable requests with the API's JSON error body.

    Errors the HTTP parser detects (bad request line, framing, oversized headers, unknown methods)
    never reach the middleware; aiohttp answers them itself with text. This keeps its logging and
    connection handling and replaces only the body.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if a response was sent
        code = "bad_request" if status < 500 else "internal_error"
        text = "malformed HTTP request" if status < 500 else "internal error; see the sidecar log"
        response = web.json_response({"error": text, "code": code}, status=status)
        response.headers["X-Request-Id"] = uuid.uuid4().hex
        response.headers["Cache-Control"] = "no-store"
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class SidecarRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol-level errors with JSON too.

    Relies on aiohttp's ``Server.__call__`` / ``_loop`` / ``_kwargs`` (aiohttp is pinned; the HTTP
    fuzzer in tests/fuzz fails loudly if this stops working).
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server


def create_app(state: AppState) -> web.Application:
    """The sidecar application; the caller owns the releaser's life cycle."""
    app = web.Application(middlewares=[_middleware], client_max_size=state.max_body_bytes)
    app[STATE] = state
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/attest/raw", attest_raw)
    app.router.add_post("/attest/combined", attest_combined)
    app.router.add_post("/attest/maa", attest_maa)
    app.router.add_post("/key/release", key_release)
    return app
