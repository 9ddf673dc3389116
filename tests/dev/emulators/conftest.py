"""Fixtures for the emulator tests: the public pytest plugin's fixtures plus a few helpers.

The plugin (``skr_dev.pytest_plugin``) is what users get through the ``skr_emulators``
pytest11 entry point; importing its fixtures here keeps these tests working from a plain checkout.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from skr_dev.emulators.tls import TestCertificateAuthority
from skr_dev.pytest_plugin import (  # noqa: F401 - fixtures are used by name
    certcache_emulator,
    emulator_ca,
    emulator_ca_file,
    emulator_platform,
    emulator_stack,
    entra_emulator,
    imds_emulator,
    kds_emulator,
    maa_emulator,
    workload_identity_env,
)


def b64url_json(segment: str) -> Any:
    """Decode one unpadded base64url JWT segment as JSON."""
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def raw_segment(token: str, index: int) -> bytes:
    """The raw bytes of one JWT segment (to check exact serialisation)."""
    segment = token.split(".")[index]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.fixture
async def https_session(emulator_ca: TestCertificateAuthority) -> AsyncIterator[aiohttp.ClientSession]:  # noqa: F811
    """An aiohttp session trusting the emulator CA (closed after the test)."""
    connector = aiohttp.TCPConnector(ssl=emulator_ca.client_ssl_context())
    session = aiohttp.ClientSession(connector=connector)
    yield session
    await session.close()
