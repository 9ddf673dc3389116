"""The 50,000-request soak (design.md §7: RSS growth < 5 MB). Slow: runs only with SKR_RUN_SLOW=1.

A sidecar process (the real ``skr serve`` start-up with the SIMULATED platform) serves a mix of
``/status`` and warm ``/key/release`` requests (one in five, round robin over the demo RSA, EC and
oct keys) against the emulators; RSS is read from /proc after a warm-up and again at the end.

Run it with ``SKR_RUN_SLOW=1 pytest tests/dev/test_soak.py -s`` (the figures are printed). The opt-in is
an environment variable because this module cannot add a ``--run-slow`` option (only a conftest can).
"""

from __future__ import annotations

import io
import json
import os
import sys

import pytest

from skr_dev.bench import BenchOptions, measure_soak

SOAK_REQUESTS = int(os.environ.get("SKR_SOAK_REQUESTS", "50000"))
MAX_GROWTH_MIB = 5.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SKR_RUN_SLOW") != "1", reason="slow soak; set SKR_RUN_SLOW=1 to run"),
    pytest.mark.timeout(3600),
]


async def test_soak_rss_growth_stays_under_5_mib() -> None:
    options = BenchOptions(soak_requests=SOAK_REQUESTS)
    soak = await measure_soak(options, io.StringIO())
    summary = {k: v for k, v in soak.items() if k != "rss_samples"}
    sys.stdout.write("[SIMULATED] soak: " + json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(f"[SIMULATED] soak RSS samples (seconds, MiB): {soak['rss_samples']}\n")
    assert soak["requests"] == SOAK_REQUESTS
    assert soak["failures"] == 0
    assert soak["rss_growth_mib"] < MAX_GROWTH_MIB
