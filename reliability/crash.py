"""Durability under kill -9: no match that a client saw start is lost, no result is applied twice.

``python -m reliability.crash`` runs ``--kills`` generations against one data
directory. In each, it starts ``lobbyd serve`` with game servers enabled, registers
bot game servers (``reliability/crash_servers.py``), lets ``--bots`` churning bots
play (queue, accept, decline, disconnect, queue again when their match ends), and
sends SIGKILL at a random moment. The game servers host every match and report a
result. Some reports are sent twice on purpose, and after each restart every result
of the generation before is reported again. Bots log in with the same player ids in
every generation, so ratings stored before a kill are loaded and moved again after
it. Half of the kills wait for a moment when a worker thread of the daemon is inside
a store call (a flush or a commit), seen from ``/proc/PID/task/*/syscall``. The
flush interval is short, so that many dirty records are written often, and the
generations alternate between ``sqlite_synchronous`` normal and full.

After every kill the database must pass ``PRAGMA integrity_check``, hold every
match that a bot received ``match_start`` for, as started or finished and with the
same teams, and hold every result a game server got ``result_applied`` for. Each
player's stored rating, skill, games and wins must equal a replay of the stored
results (``reliability/results_check.py``), and no report may get a second
``result_applied``. After the last kill the daemon must start again, reject the
last generation's results once more and serve a client. Exit status: 0 when every
check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import msgspec
import uvloop

from lobbyd.client import LobbyClient
from lobbyd.server.app import DATABASE_FILE
from reliability.bots import CONNECTION_ERRORS, Behaviour, BotRecord, spawn_bots
from reliability.crash_servers import GAME_SERVER_SECRET, CrashServer, ResultLedger, ServerPlan, crash_servers
from reliability.harness import print_report
from reliability.results_check import check_results
from tests.daemon import DaemonProcess, running_daemon

# Seconds a generation runs before its kill, drawn uniformly from this range.
KILL_DELAY: Final = (0.4, 2.0)
# Seconds an aimed kill waits for a store call before it fires anyway.
AIM_WINDOW: Final = 1.0
# Linux x86-64 system call number of futex, where idle worker threads wait.
SYS_FUTEX: Final = "202"
# The daemon's join ticket key; 32 characters at least.
JOIN_TICKET_SECRET: Final = "crash-test-join-ticket-secret-0123456789"
QUEUES: Final = ("1v1", "5v5")
# Seconds to wait for the bot game servers to register, and for replies to repeated reports.
SERVER_WAIT: Final = 5.0


class CrashOptions(msgspec.Struct, frozen=True):
    kills: int = 50
    bots: int = 200
    seed: int = 1
    flush_interval_ms: int = 10
    game_servers_per_queue: int = 2
    repeat_share: float = 0.2
    """Share of results a game server reports twice in a row."""
    data_dir: Path | None = None


class CrashReport(msgspec.Struct, frozen=True):
    ok: bool
    failures: list[str]
    seed: int
    kills: int
    kills_during_store_call: int
    restarts: int
    matches_seen_started: int
    matches_stored_started: int
    matches_missing: int
    teams_mismatched: int
    integrity_checks_ok: int
    results_acknowledged: int
    """Results whose first report got ``result_applied``."""
    results_stored: int
    """Finished matches in the database after the last kill, all replayed."""
    players_rated: int
    results_applied_twice: int
    report_replies: dict[str, int]
    """Replies to the game servers' reports, by report kind and outcome."""
    bot_counts: dict[str, int]
    seconds: float


async def run_crash_test(options: CrashOptions) -> CrashReport:
    """Kill and restart a daemon ``options.kills`` times and check its database after each kill."""
    rng = random.Random(options.seed)
    record = BotRecord()
    ledger = ResultLedger()
    failures: list[str] = []
    in_store_call = integrity_ok = restarts = 0
    results_stored = players_rated = 0
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lobbyd-crash-") as scratch:
        data_dir = options.data_dir or Path(scratch)
        database = data_dir / DATABASE_FILE
        for generation in range(options.kills):
            env = _daemon_env(options, generation)
            with running_daemon(data_dir, env=env) as daemon:
                restarts += 1
                aim = rng.random() < 0.5
                in_store_call += await _play_and_kill(daemon, options, generation, aim, rng, record, ledger)
            problems = check_database(database, record.started)
            integrity_ok += "integrity" not in " ".join(problems)
            verdict = check_results(database, ledger.applied)
            results_stored, players_rated = verdict.results_replayed, verdict.players_rated
            problems += verdict.problems
            problems += [f"the result of match {match} was applied twice" for match in ledger.applied_twice]
            failures += [f"after kill {generation + 1}: {problem}" for problem in problems]
            if problems:
                break

        failures += await _check_restart(data_dir, options, ledger, rng)
        stored = stored_started_matches(database)
    missing = [match for match in record.started if match not in stored]
    mismatched = [match for match, teams in record.started.items() if match in stored and stored[match] != teams]
    return CrashReport(
        ok=not failures,
        failures=failures,
        seed=options.seed,
        kills=restarts,
        kills_during_store_call=in_store_call,
        restarts=restarts + 1,
        matches_seen_started=len(record.started),
        matches_stored_started=len(stored),
        matches_missing=len(missing),
        teams_mismatched=len(mismatched),
        integrity_checks_ok=integrity_ok,
        results_acknowledged=len(ledger.applied),
        results_stored=results_stored,
        players_rated=players_rated,
        results_applied_twice=len(ledger.applied_twice),
        report_replies=dict(sorted(ledger.replies.items())),
        bot_counts=dict(sorted(record.counts.items())),
        seconds=round(time.monotonic() - began, 1),
    )


def _daemon_env(options: CrashOptions, generation: int) -> dict[str, str]:
    return {
        "LOBBYD_TICK_INTERVAL_MS": "20",
        "LOBBYD_FLUSH_INTERVAL_MS": str(options.flush_interval_ms),
        "LOBBYD_READY_CHECK_TIMEOUT_MS": "2000",
        "LOBBYD_LOG_LEVEL": "warning",
        "LOBBYD_SQLITE_SYNCHRONOUS": "full" if generation % 2 else "normal",
        "LOBBYD_GAME_SERVER_SECRET": GAME_SERVER_SECRET,
        "LOBBYD_JOIN_TICKET_SECRET": JOIN_TICKET_SECRET,
    }


async def _play_and_kill(
    daemon: DaemonProcess,
    options: CrashOptions,
    generation: int,
    aim: bool,
    rng: random.Random,
    record: BotRecord,
    ledger: ResultLedger,
) -> bool:
    """Run the game servers and the bots, kill the daemon, wait for all to end.

    Returns True if a store call was under way at the kill.
    """
    servers = crash_servers(daemon.address, _plan(options), ledger, rng)
    hosts = [asyncio.create_task(_host(server)) for server in servers]
    await _wait_registered(servers)

    # The same ids in every generation: player n of each generation is player n of the one before.
    stop = asyncio.Event()
    behaviour = Behaviour(queues=QUEUES, stop_when_lost=True, hosted=True)
    players = (f"p{n}" for n in itertools.count())
    bots = spawn_bots(options.bots, daemon.address, "127.0.2", players.__next__, behaviour, record, stop, rng)
    await asyncio.sleep(rng.uniform(*KILL_DELAY))
    store_call = await _kill(daemon, aim)
    await asyncio.to_thread(daemon.process.wait)
    stop.set()
    await asyncio.wait([*bots, *hosts], timeout=10)
    for task in [*bots, *hosts]:
        task.cancel()
    return store_call


def _plan(options: CrashOptions) -> ServerPlan:
    return ServerPlan(QUEUES, options.game_servers_per_queue, options.repeat_share)


async def _host(server: CrashServer) -> None:
    """Run one bot game server until the daemon goes away."""
    with contextlib.suppress(*CONNECTION_ERRORS):
        await server.run()


async def _wait_registered(servers: list[CrashServer]) -> None:
    """Wait up to SERVER_WAIT seconds until every server registered; a late one still registers later."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SERVER_WAIT):
            for server in servers:
                await server.registered.wait()


async def _kill(daemon: DaemonProcess, aim: bool) -> bool:
    """Send SIGKILL, after waiting up to AIM_WINDOW for a store call when ``aim``; return whether one was under way."""
    deadline = time.monotonic() + (AIM_WINDOW if aim else 0.0)
    while True:
        busy = worker_thread_busy(daemon.process.pid)
        if busy or time.monotonic() >= deadline:
            daemon.process.send_signal(signal.SIGKILL)
            return busy
        await asyncio.sleep(0.0005)


def worker_thread_busy(pid: int) -> bool:
    """Return True when a thread other than the main one is outside a futex wait.

    The daemon's worker threads run only store calls (``asyncio.to_thread``) and sit
    in a futex wait between them, so a worker in any other state is inside SQLite.
    """
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            if task == str(pid):
                continue
            with contextlib.suppress(OSError):
                state = Path(f"/proc/{pid}/task/{task}/syscall").read_text().split(maxsplit=1)
                if state and state[0] != SYS_FUTEX:
                    return True
    return False


def check_database(database: Path, started: dict[str, list[list[str]]]) -> list[str]:
    """Return what is wrong with the database: integrity, then matches seen but not stored.

    A match counts as stored when it is started or finished: a finished match started first.
    """
    problems = []
    with contextlib.closing(sqlite3.connect(database)) as db:
        verdict = db.execute("PRAGMA integrity_check").fetchall()
    if verdict != [("ok",)]:
        problems.append(f"integrity_check returned {verdict[:5]}")
    stored = stored_started_matches(database)
    for match, teams in started.items():
        if match not in stored:
            problems.append(f"match {match} was announced as started but is not stored")
        elif stored[match] != teams:
            problems.append(f"match {match} is stored with teams {stored[match]}, announced with {teams}")
    return problems


def stored_started_matches(database: Path) -> dict[str, list[list[str]]]:
    """Return the teams of every match that started, and is still running or finished, by match id."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT id, teams FROM matches WHERE state IN ('started', 'finished')").fetchall()
    return {match: msgspec.json.decode(teams) for match, teams in rows}


async def _check_restart(
    data_dir: Path, options: CrashOptions, ledger: ResultLedger, rng: random.Random
) -> list[str]:
    """Start the daemon once more, report the last results again and log a player in; return problems."""
    with running_daemon(data_dir, env=_daemon_env(options, 0)) as daemon:
        servers = crash_servers(daemon.address, _plan(options), ledger, rng)
        hosts = [asyncio.create_task(_host(server)) for server in servers]
        await _wait_answered(servers)
        for host in hosts:
            host.cancel()
        client = await LobbyClient.connect(daemon.address)
        welcome = await client.hello("p0")
        await client.close()
    problems = [f"the result of match {match} was applied twice" for match in ledger.applied_twice]
    unanswered = sum(server.unanswered_again for server in servers)
    if unanswered:
        problems.append(f"after the last restart, {unanswered} repeated reports got no reply")
    if welcome.get("type") != "welcome":
        problems.append(f"after the last restart, hello got {welcome}")
    if daemon.exit_code != 0:
        problems.append(f"the last restart exited with status {daemon.exit_code} after SIGTERM")
    return problems


async def _wait_answered(servers: list[CrashServer]) -> None:
    """Wait up to SERVER_WAIT seconds until every server got a reply to each report of the generation before."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SERVER_WAIT):
            for server in servers:
                await server.again_answered.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="number of kill -9 and restart cycles")
    parser.add_argument("--bots", type=int, default=200, help="bot players churning during each cycle")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed (default: the time)")
    parser.add_argument("--flush-interval-ms", type=int, default=10, help="the daemon's flush_interval_ms")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    options = CrashOptions(kills=args.kills, bots=args.bots, seed=args.seed, flush_interval_ms=args.flush_interval_ms)
    report = uvloop.run(run_crash_test(options))
    return print_report(report, report.ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
