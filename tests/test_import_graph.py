"""Production modules never import the simulated platform or the emulators."""

from __future__ import annotations

import json
import subprocess
import sys

PRODUCTION_MODULES = [
    "skr", "skr.cli", "skr.config", "skr.server", "skr.serve", "skr.release", "skr.runtime", "skr.maa",
    "skr.keyvault", "skr.identity", "skr.collateral", "skr.crypto", "skr.jose", "skr.initcontainer",
    "skr.doctor", "skr.snp.verify", "skr.snp.validate", "skr.snp.device", "skr.snp.platform",
]  # fmt: skip


def test_production_import_graph_excludes_fakes() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {PRODUCTION_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('skr.testing', 'skr.emulators')))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []
