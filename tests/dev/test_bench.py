"""skr_dev.bench: the figure arithmetic, the remote simulated platform, and one tiny end-to-end run.

No timing is asserted here (speed belongs to ``skr bench`` itself): the smoke run checks that every
section produces its figures, that ratios are computed against same-run baselines, that the JSON
report has its schema, and the deterministic facts (one MAA call for identical concurrent releases,
none on a second release).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import socket
from typing import Any

import pytest

from skr.errors import EXIT_USAGE, PlatformUnavailableError
from skr.snp.report import parse_report
from skr_dev import SIMULATED_BANNER
from skr_dev.bench import (
    SECTIONS,
    BenchOptions,
    Goal,
    Latencies,
    RemoteSimulatedPlatform,
    SimulatedReportServer,
    Spread,
    compute_figures,
    cpu_seconds,
    format_table,
    main,
    options_from_args,
    rss_mib,
    run_bench,
)
from skr_dev.simulated.amd import SimulatedAmd
from skr_dev.simulated.platform import SimulatedPlatform

FIGURE_FIELDS = {
    "key", "label", "unit", "role", "median", "min", "max", "p25", "p75", "n", "samples", "goal", "ratio_to_goal",
    "verdict", "note",
}  # fmt: skip


def test_goal_ratio_and_verdict() -> None:
    at_most = Goal("<=", 1.15, "≤ 1.15×")
    assert at_most.met(1.15) and not at_most.met(1.2)
    assert at_most.ratio(2.3) == pytest.approx(2.0)
    at_least = Goal(">=", 1.0, "> 1×")
    assert at_least.ratio(2.0) == pytest.approx(0.5) and at_least.met(2.0) and not at_least.met(0.9)
    exactly = Goal("==", 1, "1")
    assert exactly.met(1.0) and not exactly.met(2.0) and exactly.ratio(1.0) is None
    assert not Goal("<", 5.0, "< 5").met(5.0)


def test_spread_summarises_samples() -> None:
    spread = Spread.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (spread.median, spread.minimum, spread.maximum, spread.n) == (3.0, 1.0, 5.0, 5)
    assert spread.p25 == pytest.approx(2.0) and spread.p75 == pytest.approx(4.0)
    single = Spread.of([7.0])
    assert single.median == single.p25 == single.p75 == 7.0
    with pytest.raises(ValueError):
        Spread.of([])


def _synthetic_run(first: float, critical: float, warm: list[float], raw: list[float]) -> dict[str, Any]:
    return {
        "process_start_to_ready_s": 0.9,
        "idle_rss_mib": 50.0,
        "first_release_s": first,
        "second_release_maa_calls": 0,
        "critical_path": {"report_s": 0.002, "maa_s": 0.15, "keyvault_s": critical - 0.152, "total_s": critical},
        "go_sequential": {"keygen_s": 0.2, "total_s": 0.8},
        "warm": {"warm_release_s": warm, "keyvault_round_trip_s": raw},
        "status": {
            "sidecar": {"p50_ms": 0.3, "rps": 2000.0, "cpu_us_per_request": 300.0},
            "bare": {"p50_ms": 0.2, "rps": 3000.0, "cpu_us_per_request": 150.0},
        },
        "concurrent": {"maa_attest_calls": 1, "keyvault_release_calls": 1, "keyvault_challenges": 1, "wall_s": 0.4},
    }


def test_figures_use_same_run_baselines() -> None:
    runs = [
        _synthetic_run(0.30, 0.25, [0.104, 0.106, 0.105], [0.101, 0.100, 0.102]),
        _synthetic_run(0.40, 0.40, [0.110], [0.100]),
    ]
    soak = {"requests": 1000, "release_share": 0.2, "rss_before_mib": 60.0, "rss_after_mib": 66.0,
            "rss_growth_mib": 6.0, "failures": 0}  # fmt: skip
    figures = {f.key: f for f in compute_figures(runs, soak, BenchOptions(runs=2))}

    ratio = figures["first_release_ratio"]
    assert ratio.samples == pytest.approx((1.2, 1.0))  # per run, not median ÷ median
    assert ratio.spread.median == pytest.approx(1.1) and ratio.verdict == "PASS"
    assert figures["warm_overhead"].samples == pytest.approx((4.0, 10.0))
    assert figures["warm_overhead"].verdict == "MISS"  # median 7 ms > 5 ms
    assert figures["speedup_vs_go"].samples == pytest.approx((0.8 / 0.3, 2.0))
    assert figures["status_latency_ratio"].samples == pytest.approx((1.5, 1.5))
    assert figures["status_cpu_ratio"].verdict == "MISS"  # 2.0 > 1.5
    assert figures["concurrent_maa_calls"].verdict == "PASS"
    assert figures["soak_rss_growth"].verdict == "MISS"
    assert figures["critical_path"].role == "baseline" and "maa 150 ms" in figures["critical_path"].note
    # Sections that did not run leave no rows rather than rows of zeros.
    assert "first_release_ratio_fault_only" not in figures and "start_to_ready_inprocess" not in figures


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        BenchOptions(runs=0)
    with pytest.raises(ValueError):
        BenchOptions(sections=frozenset({"nonsense"}))
    quick = options_from_args(type("Args", (), {"runs": None, "quick": True, "soak_requests": 10})())
    assert quick.runs == 1 and quick.soak_requests == 10 and quick.sections == SECTIONS


def test_main_refuses_bad_options_before_starting_anything() -> None:
    out = io.StringIO()
    args = argparse.Namespace(runs=0, quick=False, soak_requests=None, json=None)
    assert main(args, out) == EXIT_USAGE
    assert out.getvalue() == ""


def test_rss_and_cpu_of_this_process() -> None:
    assert rss_mib(os.getpid()) > 1.0
    assert cpu_seconds(os.getpid()) > 0.0


async def test_remote_platform_gets_reports_from_the_parent_chip() -> None:
    amd = SimulatedAmd.create()
    server = SimulatedReportServer(SimulatedPlatform(amd, host_data=bytes(range(32))))
    port = await server.start()
    try:
        remote = RemoteSimulatedPlatform(port)
        report_data = hashlib.sha512(b"bench").digest()
        evidence = await asyncio.to_thread(remote.get_report, report_data, vmpl=0, with_certificates=True)
        report = parse_report(evidence.report)
        assert report.report_data == report_data and report.host_data == bytes(range(32))
        assert evidence.certificates == amd.certificate_table()
        bare = await asyncio.to_thread(remote.get_report, report_data, with_certificates=False)
        assert bare.certificates == b""
    finally:
        await server.stop()
    with pytest.raises(PlatformUnavailableError):
        await asyncio.to_thread(RemoteSimulatedPlatform(_closed_port(), timeout=2.0).get_report, bytes(64))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_bench_smoke_every_section() -> None:
    options = BenchOptions(
        runs=1,
        latencies=Latencies(maa=0.03, entra=0.02, keyvault=0.02),
        warm_samples=2,
        status_latency_requests=20,
        status_requests=60,
        status_concurrency=4,
        concurrent_releases=10,
        soak_requests=60,
        soak_concurrency=4,
    )
    progress = io.StringIO()
    report = await run_bench(options, progress=progress)
    document = json.loads(json.dumps(report.to_json()))

    assert document["simulated"] == SIMULATED_BANNER and document["schema"] == "skr-bench/1"
    assert set(document) >= {"environment", "options", "figures", "runs", "soak", "notes"}
    assert sorted(document["options"]["sections"]) == sorted(SECTIONS)
    figures = {figure["key"]: figure for figure in document["figures"]}
    for figure in figures.values():
        assert set(figure) == FIGURE_FIELDS
        assert figure["n"] == len(figure["samples"]) >= 1
        assert figure["min"] <= figure["median"] <= figure["max"]
    for key in ("first_release_ratio", "first_release_ratio_fault_only", "first_release_ratio_inprocess",
                "speedup_vs_go", "warm_overhead", "status_latency_ratio", "status_rps_ratio", "status_cpu_ratio",
                "start_to_ready_process", "start_to_ready_inprocess", "idle_rss", "soak_rss_growth"):  # fmt: skip
        assert figures[key]["ratio_to_goal"] is not None, key
        assert figures[key]["verdict"] in ("PASS", "MISS"), key
    assert figures["first_release_ratio"]["median"] > 0
    run = document["runs"][0]
    assert figures["first_release_ratio"]["median"] == pytest.approx(
        run["first_release_s"] / run["critical_path"]["total_s"]
    )
    # Deterministic facts, not timings: the token is cached, and identical releases share one flight.
    assert figures["second_release_maa_calls"]["median"] == 0
    assert figures["concurrent_maa_calls"]["median"] == 1
    assert run["concurrent"]["distinct_keys"] == 1
    assert [row["route"] for row in run["first_release_timeline"]].count("maa.attest") == 1
    assert document["soak"]["failures"] == 0 and document["soak"]["requests"] == 60

    table = format_table(report)
    assert SIMULATED_BANNER in table and "ratio/verdict" in table
    assert "first release ÷ critical path" in table
    assert "[SIMULATED]" in progress.getvalue()
