"""Import budget: which third-party packages each command loads (no timing; issue 14).

Every module a command imports costs CPU before its first useful work; at the init container's
100m CPU limit each 10 ms of import is 0.1 s of wall time. These tests pin the set of top-level
packages that ``skr --help``, ``skr verify``, ``skr release`` and ``skr serve`` (before ready) load,
so a heavy import cannot creep back unnoticed. Each check runs in a fresh interpreter, because this
test process has already imported everything. Adding a package to an allow-list is a decision:
say why next to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

_PROBE = """
import json, sys
from skr.shell import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
{extra}
print(json.dumps(sorted(sys.modules)))
"""

HELP = frozenset({"skr"})
VERIFY = HELP | {"cryptography"}
_AIOHTTP = {"aiohttp", "aiohappyeyeballs", "aiosignal", "attr", "frozenlist", "multidict", "propcache", "yarl", "idna"}
# msal, requests, urllib3, charset_normalizer and certifi are not used by skr's async path: the
# azure.identity package's __init__ imports its synchronous credentials (and through them msal and
# requests) whenever azure.identity.aio is imported, and no public API imports the aio credentials
# without it. Kept off the critical path in `skr serve` by the warm-up preload; paid by `skr release`.
_AZURE_IDENTITY_SYNC = {"msal", "requests", "urllib3", "charset_normalizer", "certifi"}
RELEASE = VERIFY | _AIOHTTP | _AZURE_IDENTITY_SYNC | {"azure", "isodate", "typing_extensions"}
SERVE = RELEASE | {"prometheus_client"}

# What the release path loads on first use (identity and vault import their SDK clients lazily).
_RELEASE_MODULES = "import skr.shell.initcontainer, skr.shell.logs, azure.identity.aio, azure.keyvault.keys.aio"
_SERVE_MODULES = "import skr.shell.serve, skr.shell.logs, azure.identity.aio, azure.keyvault.keys.aio"


def _loaded(argv: Sequence[str], extra: str = "") -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(extra=extra), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    modules: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return set(modules)


def _third_party(modules: set[str]) -> set[str]:
    """Top-level packages outside the standard library.

    Skipped: private helpers (``_openssl``, ``_cython_3_*``, editable-install finders) and Cython's
    ``cython_runtime`` pseudo-module, which belong to the packages that load them.
    """
    tops = {name.split(".")[0] for name in modules}
    return {name for name in tops - set(sys.stdlib_module_names) - {"cython_runtime"} if not name.startswith("_")}


@pytest.mark.parametrize(
    ("argv", "extra", "allowed"),
    [
        (["--help"], "", HELP),
        (["verify", "/nonexistent/report", "--certs", "/nonexistent/certs"], "", VERIFY),
        (["--version"], _RELEASE_MODULES, RELEASE),
        (["--version"], _SERVE_MODULES, SERVE),
    ],
    ids=["help", "verify", "release", "serve"],
)
def test_command_loads_only_its_allow_list(argv: list[str], extra: str, allowed: frozenset[str]) -> None:
    loaded = _third_party(_loaded(argv, extra))
    assert loaded <= allowed, f"new imports: {sorted(loaded - allowed)}"
    assert "skr" in loaded


def test_help_and_verify_load_no_network_stack() -> None:
    for argv in (["--help"], ["verify", "/nonexistent/report", "--certs", "/nonexistent/certs"]):
        loaded = _loaded(argv)
        assert not {m for m in loaded if m.split(".")[0] in {"aiohttp", "azure", "asyncio"}}, argv


def test_release_loads_no_http_server(tmp_path: Path) -> None:
    """``skr release`` (here failing for want of a device) never loads the sidecar's server or metrics."""
    loaded = _loaded(["release", "--kid", "k", "--out", str(tmp_path), "--timeout", "0.5"])
    assert "skr.shell.initcontainer" in loaded
    assert not {"aiohttp.web", "skr.shell.http_api", "skr.shell.serve", "prometheus_client"} & loaded
    assert not any(m.startswith("skr_dev") for m in loaded)
