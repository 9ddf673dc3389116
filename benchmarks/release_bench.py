"""Release benchmark (issue 5): the first release against the critical path, and shared flights.

With injected latencies (MAA 150 ms, Entra 100 ms, Key Vault 100 ms) on loopback emulators and the
SIMULATED platform, this prints:

* the first release of a fresh sidecar process, the critical path (report + MAA + Key Vault,
  measured in the same run with the same components) and their ratio (goal ≤ 1.15);
* that the second release makes no MAA call (the token is cached);
* that 100 concurrent identical releases make exactly one MAA call and one Key Vault release call.

Usage: ``python benchmarks/release_bench.py [--runs N] [--json FILE]``. Exit status 1 when a call
count is wrong (those are facts, not timings); timing goals are reported, never enforced here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

# Benchmarks run on the SIMULATED platform by design; they are not production code.
from skr_dev import SIMULATED_BANNER
from skr_dev.bench import BenchOptions, BenchReport, Figure, run_bench


def _ms(figure: Figure | None) -> str:
    if figure is None:
        return "n/a"
    spread = figure.spread
    text = f"{spread.median:.0f} ms"
    return text + (f" [{spread.minimum:.0f}–{spread.maximum:.0f}]" if spread.n > 1 else "")


def _line(report: BenchReport, key: str) -> str:
    figure = report.figure(key)
    if figure is None:
        return "n/a"
    spread = figure.spread
    spread_text = f" [{spread.minimum:.2f}–{spread.maximum:.2f}]" if spread.n > 1 else ""
    goal = f" (goal {figure.goal.text}: {figure.verdict})" if figure.goal is not None else ""
    return f"{spread.median:.2f}×{spread_text}{goal}"


def _steps(report: BenchReport, key: str) -> str:
    figure = report.figure(key)
    return figure.note if figure is not None else ""


def print_report(report: BenchReport) -> int:
    """Print the issue-5 figures; return 1 if a call count is wrong."""
    options = report.options
    n = options.concurrent_releases
    print(f"*** {SIMULATED_BANNER} ***")
    print(f"release benchmark: {options.runs} run(s); injected latencies: {options.latencies.describe()}")
    print()
    print(f"first release, fresh sidecar process:     {_ms(report.figure('first_release_process'))}")
    print(f"critical path (report + MAA + Key Vault): {_ms(report.figure('critical_path'))}")
    print(f"    {_steps(report, 'critical_path')}")
    every, fault_only = _line(report, "first_release_ratio"), _line(report, "first_release_ratio_fault_only")
    print(f"ratio, Key Vault latency on every request (401 challenge included): {every}")
    print(f"ratio, Key Vault latency on authenticated requests only:         {fault_only}")
    print(f"Go-style sequential uncached design:      {_ms(report.figure('go_sequential'))}")
    print(f"    {_steps(report, 'go_sequential')}")
    print(f"speed-up over the Go-style design:        {_line(report, 'speedup_vs_go')}")
    print()
    failures = 0
    second = [run.get("second_release_maa_calls") for run in report.runs]
    ok = all(count == 0 for count in second)
    failures += not ok
    print(f"second release: MAA attest calls per run = {second}  -> {'PASS' if ok else 'FAIL'} (goal 0)")
    concurrent = [run.get("concurrent", {}) for run in report.runs]
    maa = [c.get("maa_attest_calls") for c in concurrent]
    kv = [c.get("keyvault_release_calls") for c in concurrent]
    challenges = [c.get("keyvault_challenges") for c in concurrent]
    distinct = [c.get("distinct_keys") for c in concurrent]
    ok = all(m == 1 for m in maa) and all(k == 1 for k in kv) and all(d == 1 for d in distinct)
    failures += not ok
    wall = _ms(report.figure("concurrent_wall"))
    print(
        f"{n} concurrent identical releases: MAA attest calls {maa}, Key Vault release calls {kv} "
        f"(+ 401 challenges {challenges}), distinct keys returned {distinct}, wall {wall}"
        f"  -> {'PASS' if ok else 'FAIL'} (goal exactly 1 MAA call and 1 Key Vault call)"
    )
    print()
    for note in report.notes:
        print(f"note: {note}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="independent runs (fresh emulators and sidecars each)")
    parser.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    args = parser.parse_args(argv)
    options = BenchOptions(runs=args.runs, sections=frozenset({"first", "fault_only", "concurrent"}))
    report = asyncio.run(run_bench(options, progress=sys.stderr))
    status = print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
