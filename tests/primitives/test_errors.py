"""The error families and their one mapping to HTTP status and CLI exit code."""

from __future__ import annotations

import pytest

from skr.errors import (
    EXIT_USAGE,
    BadRequestError,
    BodyTooLargeError,
    ConfigError,
    EndpointNotAllowedError,
    RequestError,
    SkrError,
    exit_code_for,
    http_status_for,
)


@pytest.mark.parametrize("cls", [BadRequestError, BodyTooLargeError, EndpointNotAllowedError])
def test_client_faults_are_not_operator_faults(cls: type[SkrError]) -> None:
    assert issubclass(cls, RequestError)
    assert not issubclass(cls, ConfigError)
    assert not issubclass(ConfigError, RequestError)


@pytest.mark.parametrize(
    ("error", "status", "exit_code"),
    [
        # The values these errors had while they were ConfigError subclasses: unchanged on purpose.
        (BadRequestError("x"), 400, EXIT_USAGE),
        (BodyTooLargeError("x"), 413, EXIT_USAGE),
        (EndpointNotAllowedError("x"), 403, EXIT_USAGE),
        (ConfigError("x"), 500, EXIT_USAGE),
        (SkrError("x"), 500, 1),
    ],
)
def test_status_and_exit_code_are_as_before(error: SkrError, status: int, exit_code: int) -> None:
    assert http_status_for(error) == status
    assert exit_code_for(error) == exit_code
