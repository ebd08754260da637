"""Run the benchmark suite: ``python -m bench`` (full) or ``python -m bench --quick``.

Steps: pin this process to the load CPU, describe the machine, run each
measurement in turn (a failed one is recorded and the rest still run), evaluate the
targets, print the tables, and write the results. A complete full run writes
``bench/results/latest.json`` and ``BENCHMARKS.md``; a quick or partial run writes
only ``bench/results/quick.json`` or ``bench/results/partial.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import document, machine, report
from bench.client import raise_open_file_limit
from bench.phases import PHASES, Context
from bench.processes import COMMANDS, ROOT, BenchError, pick_cpus
from bench.profiles import FULL, QUICK

RESULTS_DIR = ROOT / "bench" / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the lobbyd benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="smaller counts and fewer configurations (under a minute)")
    parser.add_argument(
        "--only", type=lambda text: text.split(","), default=list(PHASES),
        help=f"comma-separated measurements to run, from: {', '.join(PHASES)}",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(PHASES))
    if unknown:
        parser.error(f"unknown measurement {', '.join(unknown)}: choose from {', '.join(PHASES)}")
    return args


def run_phase(ctx: Context, name: str) -> dict[str, Any]:
    """Run one measurement; a failure becomes an ``error`` entry instead of stopping the run."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    before = machine.CpuUsage.read()
    try:
        result = PHASES[name](ctx)
    except BenchError as exc:
        result = {"error": str(exc)}
    result["background"] = machine.CpuUsage.read().since(before)
    print(f"[bench] {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def output_paths(args: argparse.Namespace) -> tuple[str, bool]:
    """Return the JSON file name and whether BENCHMARKS.md is written."""
    if args.quick:
        return "quick.json", False
    if set(args.only) != set(PHASES):
        return "partial.json", False
    return "latest.json", True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    cpus = pick_cpus()
    os.sched_setaffinity(0, {cpus.load})
    raise_open_file_limit()  # servers and generators inherit it
    started = time.monotonic()

    ctx = Context(profile=profile, cpus=cpus)
    results: dict[str, Any] = {
        "profile": profile.name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "make bench-quick" if args.quick else "make bench",
        "cpus": {"server": cpus.server, "load": cpus.load},
        "machine": machine.describe(),
        "phases": {name: run_phase(ctx, name) for name in PHASES if name in args.only},
    }
    results["daemon_logs"] = ctx.daemon_logs
    results["commands"] = COMMANDS.lines
    results["targets"] = report.verdicts_as_dicts(report.evaluate(results["phases"]))
    results["duration_s"] = time.monotonic() - started

    print(report.render_tables(results))
    json_name, write_document = output_paths(args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / json_name).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n[bench] wrote bench/results/{json_name}", file=sys.stderr)
    if write_document:
        (ROOT / "BENCHMARKS.md").write_text(document.render(results))
        print("[bench] wrote BENCHMARKS.md", file=sys.stderr)
    print(f"[bench] finished in {results['duration_s']:.0f} s", file=sys.stderr)
    return 0
