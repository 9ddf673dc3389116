"""The one exception hierarchy of skr.

Every error skr raises on purpose is a :class:`SkrError`. Families are split by *who is at fault*:

* :class:`ConfigError`      the operator's configuration (the operator must change it)
* :class:`RequestError`     the caller's request (the client must change it)
* :class:`DeviceError`      the SEV-SNP platform (device missing, firmware refused)
* :class:`VerificationError` untrusted bytes (report, certificate, token, JWS) failed a check
* :class:`AttestationError` the attestation service refused our evidence
* :class:`KeyReleaseError`  the key service refused to release
* :class:`UpstreamError`    transport or protocol failure talking to a remote service

Each concrete class carries a stable snake_case ``code``. The mapping from code to HTTP status and
to CLI exit code lives here, in one table, so the server and the CLI cannot drift apart.

Messages must be safe to show to a client and to log: they never contain a token, key bytes or any
other secret. Messages say what to fix where that is known.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AttestationError",
    "AttestationRejectedError",
    "BadRequestError",
    "BodyTooLargeError",
    "CollateralUnavailableError",
    "ConfigError",
    "DeviceBusyError",
    "DeviceError",
    "EndpointNotAllowedError",
    "FirmwareError",
    "IdentityUnavailableError",
    "InvalidUpstreamResponseError",
    "KeyNotFoundError",
    "KeyReleaseError",
    "NotReadyError",
    "OriginNotAllowedError",
    "PlatformUnavailableError",
    "ReleaseDeniedError",
    "ReportFormatError",
    "RequestError",
    "SkrError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "ValidationFailedError",
    "VerificationError",
    "exit_code_for",
    "grpc_status_for",
    "http_status_for",
]


class SkrError(Exception):
    """Root of every error skr raises deliberately."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# --- configuration and requests -------------------------------------------------------------------


class ConfigError(SkrError):
    """The configuration is unusable; the operator must change it."""

    code = "config_error"


class RequestError(SkrError):
    """The caller's request is unacceptable; the client, not the operator, must change it.

    Kept apart from :class:`ConfigError` so that a handler (or an alert) can tell "a client sent
    something wrong" from "this deployment is misconfigured". Both still exit with ``EXIT_USAGE``
    from the CLI, where the caller and the operator are the same person.
    """

    code = "bad_request"


class BadRequestError(RequestError):
    """A client request is malformed (wrong type, bad base64, missing field)."""

    code = "bad_request"


class BodyTooLargeError(BadRequestError):
    """A request body exceeds the configured cap."""

    code = "body_too_large"


class EndpointNotAllowedError(RequestError):
    """A request named an endpoint outside the allow-list; nothing was sent to it."""

    code = "endpoint_not_allowed"


class OriginNotAllowedError(RequestError):
    """A request looks browser-borne (Origin, cross-site Sec-Fetch-Site) or names a foreign Host.

    See :mod:`skr.shell.origin`: refused so that no web page, and no DNS-rebound name, can release keys.
    """

    code = "origin_not_allowed"


class NotReadyError(SkrError):
    """The service has not finished starting (platform, collateral or wrapping key not ready)."""

    code = "not_ready"


# --- the platform ---------------------------------------------------------------------------------


class DeviceError(SkrError):
    """The SEV-SNP platform could not produce what was asked."""

    code = "platform_error"


class PlatformUnavailableError(DeviceError):
    """No SEV-SNP guest interface exists here (no configfs-tsm, no /dev/sev-guest)."""

    code = "platform_unavailable"

    def __init__(self, message: str, *, tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.tried = tried


class FirmwareError(DeviceError):
    """The ioctl failed; carries errno, the firmware status and the VMM (hypervisor) error."""

    code = "platform_error"

    def __init__(self, message: str, *, errno: int = 0, fw_error: int = 0, vmm_error: int = 0) -> None:
        super().__init__(message)
        self.errno = errno
        self.fw_error = fw_error
        self.vmm_error = vmm_error


class DeviceBusyError(FirmwareError):
    """The hypervisor stayed busy (VMM BUSY / EAGAIN) through every bounded retry."""

    code = "platform_busy"


# --- untrusted data -------------------------------------------------------------------------------


class VerificationError(SkrError):
    """Untrusted bytes failed a cryptographic or structural check."""

    code = "verification_failed"


class ReportFormatError(VerificationError):
    """An attestation report is malformed (size, version, reserved bytes)."""

    code = "invalid_report"


class ValidationFailedError(VerificationError):
    """A verified report does not meet the validation options; lists every failed check."""

    code = "validation_failed"

    def __init__(self, failures: list[str]) -> None:
        self.failures = tuple(failures)
        super().__init__("report validation failed: " + "; ".join(failures))


class CollateralUnavailableError(SkrError):
    """No source could supply a VCEK/VLEK chain that matches the report."""

    code = "collateral_unavailable"


# --- services -------------------------------------------------------------------------------------


class AttestationError(SkrError):
    """The attestation service did not accept our evidence."""

    code = "attestation_rejected"


class AttestationRejectedError(AttestationError):
    """MAA answered and said no (a 4xx with a reason)."""

    code = "attestation_rejected"


class KeyReleaseError(SkrError):
    """The key service did not release the key."""

    code = "release_denied"


class ReleaseDeniedError(KeyReleaseError):
    """The key's release policy (or the caller's role) refused the release; carries the reason."""

    code = "release_denied"

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class KeyNotFoundError(KeyReleaseError):
    """The named key (or version) does not exist in the vault."""

    code = "key_not_found"


class UpstreamError(SkrError):
    """A remote service could not be used (transport, protocol, bad answer)."""

    code = "upstream_unavailable"

    def __init__(self, message: str, *, service: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.status = status


class UpstreamUnavailableError(UpstreamError):
    """Connection refused, 5xx or 429 after every retry."""

    code = "upstream_unavailable"


class UpstreamTimeoutError(UpstreamError):
    """The remote service did not answer within the configured timeout."""

    code = "upstream_timeout"


class InvalidUpstreamResponseError(UpstreamError):
    """The remote answered, but the answer failed validation (bad JWS, token or wrap)."""

    code = "invalid_upstream_response"


class IdentityUnavailableError(UpstreamError):
    """No access token could be obtained (no token, workload identity or managed identity)."""

    code = "identity_unavailable"


# --- the one mapping ------------------------------------------------------------------------------

_HTTP_STATUS: dict[str, int] = {
    "bad_request": 400,
    "config_error": 500,
    "body_too_large": 413,
    "endpoint_not_allowed": 403,
    "origin_not_allowed": 403,
    "not_ready": 503,
    "platform_unavailable": 503,
    "platform_error": 502,
    "platform_busy": 503,
    "verification_failed": 502,
    "invalid_report": 502,
    "validation_failed": 403,
    "collateral_unavailable": 502,
    "attestation_rejected": 403,
    "release_denied": 403,
    "key_not_found": 404,
    "upstream_unavailable": 502,
    "upstream_timeout": 504,
    "invalid_upstream_response": 502,
    "identity_unavailable": 502,
    "internal_error": 500,
}

# gRPC status (by name, so this module needs no grpc import) for the key-provider API; README documents it.
_GRPC_STATUS: dict[str, str] = {
    "bad_request": "INVALID_ARGUMENT",
    "config_error": "INTERNAL",
    "body_too_large": "INVALID_ARGUMENT",
    "endpoint_not_allowed": "PERMISSION_DENIED",
    "not_ready": "UNAVAILABLE",
    "platform_unavailable": "FAILED_PRECONDITION",
    "platform_error": "INTERNAL",
    "platform_busy": "UNAVAILABLE",
    "verification_failed": "UNAVAILABLE",
    "invalid_report": "INTERNAL",
    "validation_failed": "PERMISSION_DENIED",
    "collateral_unavailable": "UNAVAILABLE",
    "attestation_rejected": "PERMISSION_DENIED",
    "release_denied": "PERMISSION_DENIED",
    "key_not_found": "NOT_FOUND",
    "upstream_unavailable": "UNAVAILABLE",
    "upstream_timeout": "DEADLINE_EXCEEDED",
    "invalid_upstream_response": "UNAVAILABLE",
    "identity_unavailable": "UNAUTHENTICATED",
    "internal_error": "INTERNAL",
}

# CLI exit codes: documented in the README; distinct per failure class.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PLATFORM = 3
EXIT_ATTESTATION = 4
EXIT_RELEASE_DENIED = 5
EXIT_UPSTREAM = 6
EXIT_VERIFICATION = 7

_EXIT_BY_FAMILY: tuple[tuple[type[SkrError], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (RequestError, EXIT_USAGE),
    (DeviceError, EXIT_PLATFORM),
    (VerificationError, EXIT_VERIFICATION),
    (CollateralUnavailableError, EXIT_UPSTREAM),
    (AttestationError, EXIT_ATTESTATION),
    (KeyReleaseError, EXIT_RELEASE_DENIED),
    (UpstreamError, EXIT_UPSTREAM),
)


def http_status_for(error: SkrError) -> int:
    """The HTTP status the local API answers for ``error``."""
    return _HTTP_STATUS.get(error.code, 500)


def grpc_status_for(error: SkrError) -> str:
    """The gRPC status code name the key-provider API answers for ``error``."""
    return _GRPC_STATUS.get(error.code, "INTERNAL")


def exit_code_for(error: SkrError) -> int:
    """The process exit code the CLI uses for ``error``."""
    for family, code in _EXIT_BY_FAMILY:
        if isinstance(error, family):
            return code
    return EXIT_INTERNAL
