"""Soak: thousands of churning clients for minutes, then the daemon's memory at the same load.

``python -m reliability.soak`` starts ``lobbyd serve`` with a short cleanup interval
and idle TTL, and runs ``--bots`` churning bots (see ``reliability.bots``) for
``--minutes``. Bots accept, decline and drop matches, and a share of them
disconnects after each match and logs in again, half of the time under a new
player id, so per-player state is created and must be dropped all along.

The daemon's RSS is sampled every second. The run compares the median RSS of the
``WINDOW_SECONDS`` that end the warm-up with the median of the last
``WINDOW_SECONDS`` of the run, both at full load. The warm-up lasts longer than the
lobby's 300-second memory of finished ready checks, so both windows hold a full
set of them. After the load, every bot disconnects. Once the idle TTL and a
cleanup have passed, the daemon's ``cleanup_done`` event must count one player and
one session, which are the probe's. The run fails on a difference above ``--max-growth-percent``, on state
left behind, on an error-level log event, or when the probe client loses a ping.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import msgspec
import uvloop

from reliability.bots import Behaviour, BotRecord, spawn_bots
from reliability.harness import log_problems, print_report, rss_kib
from reliability.probe import ProbeReport, start_probe, stop_probe
from tests.daemon import DaemonProcess, running_daemon

# Seconds of RSS samples whose median stands for one load level.
WINDOW_SECONDS: Final = 60
# The lobby remembers finished ready checks for 300 s (LobbySettings.finished_ttl),
# so the warm-up must outlast that for its window to be a steady state.
MIN_WARMUP_SECONDS: Final = 330
# Settings that make the daemon drop idle state quickly, so leaks show within minutes.
SOAK_DAEMON_ENV: Final = {
    "LOBBYD_LOG_LEVEL": "info",
    "LOBBYD_CLEANUP_INTERVAL_MS": "5000",
    "LOBBYD_PLAYER_IDLE_TTL_MS": "10000",
    "LOBBYD_READY_CHECK_TIMEOUT_MS": "5000",
    "LOBBYD_MAX_CONNECTIONS": "20000",
    "LOBBYD_RATE_LIMIT_PER_S": "50",
    "LOBBYD_RATE_LIMIT_BURST": "100",
}
# Seconds to wait after the load for the idle TTL and one cleanup to pass.
DRAIN_SECONDS: Final = 20


class SoakOptions(msgspec.Struct, frozen=True):
    minutes: float = 15.0
    bots: int = 2000
    seed: int = 1
    max_growth_percent: float = 5.0
    warmup_seconds: float | None = None
    """Warm-up length; None for half the run, and at least MIN_WARMUP_SECONDS."""
    window_seconds: int = WINDOW_SECONDS


class SoakReport(msgspec.Struct, frozen=True):
    ok: bool
    failures: list[str]
    seed: int
    bots: int
    seconds: float
    sessions: int
    """Client sessions opened over the run."""
    players: int
    """Distinct player ids that logged in."""
    matches_started: int
    bot_counts: dict[str, int]
    rss_warm_kib: int
    """Median RSS of the last WINDOW_SECONDS of the warm-up, at full load."""
    rss_end_kib: int
    """Median RSS of the last WINDOW_SECONDS of the run, at the same load."""
    growth_percent: float
    rss_idle_start_kib: int
    rss_idle_end_kib: int
    cleanup_after: dict[str, Any]
    """The daemon's last cleanup_done event after every bot left."""
    probe: ProbeReport


class PlayerIds:
    """Player ids for logins: a returning player half of the time, a new one otherwise."""

    def __init__(self, rng: random.Random, prefix: str) -> None:
        self.rng = rng
        self.prefix = prefix
        self.counter = itertools.count()
        self.issued: list[str] = []

    def next(self) -> str:
        if self.issued and self.rng.random() < 0.5:
            return self.rng.choice(self.issued)
        player = f"{self.prefix}{next(self.counter)}"
        self.issued.append(player)
        return player


async def run_soak(options: SoakOptions) -> SoakReport:
    """Start a daemon, churn bots against it for ``options.minutes`` and return the report."""
    with tempfile.TemporaryDirectory(prefix="lobbyd-soak-") as scratch:
        with running_daemon(Path(scratch), env=SOAK_DAEMON_ENV) as daemon:
            probe = start_probe(daemon.address, "probe", interval_ms=100)
            try:
                figures = await _load(daemon, options)
            finally:
                probe_report = await asyncio.to_thread(stop_probe, probe)
        cleanups = _events_named(daemon, "cleanup_done")
        problems = log_problems(daemon)
    return _report(options, figures, cleanups[-1] if cleanups else {}, problems, probe_report)


async def _load(daemon: DaemonProcess, options: SoakOptions) -> dict[str, Any]:
    """Run the bots, sample RSS, stop the bots and wait for the cleanup."""
    rng = random.Random(options.seed)
    record = BotRecord()
    ids = PlayerIds(rng, "soak")
    stop = asyncio.Event()
    behaviour = Behaviour(decline_rate=0.1, drop_rate=0.05, leave_after_match=0.5, think=(0.2, 2.0))
    pid = daemon.process.pid
    idle_start = rss_kib(pid)

    began = time.monotonic()
    bots = spawn_bots(options.bots, daemon.address, "127.0.4", ids.next, behaviour, record, stop, rng)
    total = options.minutes * 60
    warmup = options.warmup_seconds or max(MIN_WARMUP_SECONDS, total / 2)
    window = options.window_seconds
    samples: list[tuple[float, int]] = []
    while (elapsed := time.monotonic() - began) < max(total, warmup + window):
        samples.append((elapsed, rss_kib(pid)))
        await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait(bots, timeout=30)
    for bot in bots:
        bot.cancel()
    seconds = time.monotonic() - began

    await asyncio.sleep(DRAIN_SECONDS)
    return {
        "seconds": seconds,
        "record": record,
        "players": len(ids.issued),
        "warm": _median_before(samples, warmup, window),
        "end": _median_before(samples, samples[-1][0] + 1, window),
        "idle_start": idle_start,
        "idle_end": rss_kib(pid),
    }


def _events_named(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    """Return the log events called ``name``; parsing only matching lines keeps a large log cheap."""
    marker = f'"event": "{name}"'
    with daemon.log_path.open(errors="replace") as log:
        return [msgspec.json.decode(line) for line in log if marker in line]


def _median_before(samples: list[tuple[float, int]], end: float, window: int) -> int:
    return round(statistics.median(rss for at, rss in samples if end - window <= at < end))


def _report(
    options: SoakOptions,
    figures: dict[str, Any],
    cleanup: dict[str, Any],
    problems: list[str],
    probe: ProbeReport,
) -> SoakReport:
    record: BotRecord = figures["record"]
    growth = (figures["end"] - figures["warm"]) / figures["warm"] * 100
    failures = [f"daemon log: {problem}" for problem in problems[:20]]
    if growth > options.max_growth_percent:
        failures.append(f"RSS grew {growth:.1f}% between the same loads, more than {options.max_growth_percent:g}%")
    # The probe is still connected: it is the one player and session left.
    if cleanup.get("players") != 1 or cleanup.get("sessions") != 1:
        failures.append(f"after every bot left, the last cleanup_done was {cleanup}")
    if probe.lost:
        failures.append(f"the probe lost {probe.lost} of {probe.pings} pings")
    return SoakReport(
        ok=not failures,
        failures=failures,
        seed=options.seed,
        bots=options.bots,
        seconds=round(figures["seconds"], 1),
        sessions=record.counts["sessions"],
        players=figures["players"],
        matches_started=len(record.started),
        bot_counts=dict(sorted(record.counts.items())),
        rss_warm_kib=figures["warm"],
        rss_end_kib=figures["end"],
        growth_percent=round(growth, 2),
        rss_idle_start_kib=figures["idle_start"],
        rss_idle_end_kib=figures["idle_end"],
        cleanup_after={key: cleanup.get(key) for key in ("players", "sessions", "dropped")},
        probe=probe,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="length of the load, in minutes (at least 6.5)")
    parser.add_argument("--bots", type=int, default=2000, help="bot players connected at once")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed (default: the time)")
    parser.add_argument("--max-growth-percent", type=float, default=5.0, help="largest RSS growth that passes")
    parser.add_argument("--warmup-seconds", type=float, help="warm-up length (default: half the run, at least 330)")
    parser.add_argument("--window-seconds", type=int, default=WINDOW_SECONDS, help="seconds of RSS samples per median")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    options = SoakOptions(
        minutes=args.minutes,
        bots=args.bots,
        seed=args.seed,
        max_growth_percent=args.max_growth_percent,
        warmup_seconds=args.warmup_seconds,
        window_seconds=args.window_seconds,
    )
    report = uvloop.run(run_soak(options))
    return print_report(report, report.ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
