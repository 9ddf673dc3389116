"""The request origin policy (skr/shell/origin.py) against a real sidecar over real sockets.

Why: issue 13 item 1 — a web page could take the keys (DNS rebinding, cross-site simple POSTs).
Every case here answered 200 before the policy existed; requests are written byte for byte on a
raw socket so the exact Host / Origin / Sec-Fetch-Site / Content-Type go on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import subprocess
from collections.abc import AsyncIterator

import pytest

from skr.shell.config import Settings
from skr.shell.serve import RunningSidecar, start_sidecar
from skr_dev.simulated.amd import SimulatedAmd
from skr_dev.simulated.platform import SimulatedPlatform

AMD = SimulatedAmd.create()
BODY = json.dumps({"runtime_data": base64.b64encode(b"origin policy").decode()}).encode()


@pytest.fixture
async def sidecar() -> AsyncIterator[RunningSidecar]:
    settings = Settings(port=0, thim_url="", azcache_url="", kds_url="")
    platform = SimulatedPlatform(AMD, host_data=hashlib.sha256(b"policy").digest())
    running = await start_sidecar(settings, platform=platform, amd_roots=AMD.trusted_roots(), environ={})
    await running.warm_up
    yield running
    await running.stop()


async def _send(
    port: int, headers: list[tuple[str, str]], *, path: str = "/attest/raw", version: str = "1.1"
) -> tuple[int, dict[str, object]]:
    lines = [f"POST {path} HTTP/{version}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    lines.append(f"Content-Length: {len(BODY)}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + BODY)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _assert_refused(status: int, body: dict[str, object]) -> None:
    assert status == 403, body
    assert body["code"] == "origin_not_allowed"
    assert "report" not in body and "key" not in body


async def test_browser_style_request_matrix(sidecar: RunningSidecar) -> None:
    port = sidecar.port
    hosts = {
        f"localhost:{port}": True,
        f"127.0.0.1:{port}": True,
        f"[::1]:{port}": True,
        f"LOCALHOST:{port}": True,
        f"evil.example:{port}": False,  # DNS rebinding: the attacker's name resolved to loopback
        f"localhost:{port + 1}": False,
        "localhost": False,  # no port means 80, not ours
        f"127.0.0.1:{port}0": False,
        f"127.0.0.1:\u00b9{port}": False,  # a superscript digit is not a digit here
    }
    origins = {None: True, f"http://evil.example:{port}": False, "null": False, f"http://localhost:{port}": False}
    sites = {None: True, "none": True, "same-origin": True, "same-site": False, "cross-site": False}
    types = (
        None,
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json",
    )
    checked = 0
    for (host, host_ok), (origin, origin_ok), (site, site_ok), ctype in itertools.product(
        hosts.items(), origins.items(), sites.items(), types
    ):
        headers = [("Host", host)]
        headers += [("Origin", origin)] if origin is not None else []
        headers += [("Sec-Fetch-Site", site)] if site is not None else []
        headers += [("Content-Type", ctype)] if ctype is not None else []
        status, body = await _send(port, headers)
        where = f"{headers}: {status} {body}"
        if host_ok and origin_ok and site_ok:
            assert status == 200 and "report" in body, where
        else:
            assert status == 403 and body["code"] == "origin_not_allowed", where
        checked += 1
    assert checked == 9 * 4 * 5 * 5


async def test_dns_rebinding_shaped_release_is_refused(sidecar: RunningSidecar) -> None:
    """What issue 13 reproduced: a rebound page's simple POST to /key/release."""
    port = sidecar.port
    rebound = [("Host", f"evil.example:{port}"), ("Content-Type", "text/plain")]
    _assert_refused(*await _send(port, rebound, path="/key/release"))
    _assert_refused(*await _send(port, [*rebound, ("Origin", f"http://evil.example:{port}")], path="/key/release"))
    # Same for GET routes and unknown paths: the policy runs before routing.
    _assert_refused(*await _send(port, rebound, path="/nowhere"))


async def test_host_header_presence_rules(sidecar: RunningSidecar) -> None:
    port = sidecar.port
    status, body = await _send(port, [])  # HTTP/1.1 without Host: aiohttp's parser answers 400 first
    assert status == 400 and body["code"] == "bad_request" and "report" not in body
    status, body = await _send(port, [], version="1.0")  # HTTP/1.0 predates Host
    assert status == 200 and "report" in body
    status, body = await _send(port, [("Host", f"localhost:{port}"), ("Host", f"evil.example:{port}")])
    assert status == 400 and "report" not in body  # the parser refuses a repeated Host; so would the policy
    _assert_refused(
        *await _send(
            port, [("Host", f"localhost:{port}"), ("Sec-Fetch-Site", "none"), ("Sec-Fetch-Site", "cross-site")]
        )
    )


async def test_curl_default_form_post_still_works(sidecar: RunningSidecar) -> None:
    """``curl localhost:PORT/... -d '{...}'``: form content type, Host localhost:PORT, no Origin."""
    url = f"http://localhost:{sidecar.port}/attest/raw"
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--noproxy", "*", "-4", url, "-d", BODY.decode(), stdout=subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert "report" in json.loads(out)
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-4",
        url,
        "-H",
        f"Origin: http://evil.example:{sidecar.port}",
        "-d",
        BODY.decode(),
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert json.loads(out)["code"] == "origin_not_allowed"
