"""Load generator: players go through join_queue, match_found, accept and match_start.

Run as a separate process from the daemon. Steps: log in ``--players`` sessions;
send their ``join_queue`` spread evenly over ``--join-seconds``; every player
accepts each ``match_found`` at once. For each match the result is the time from
the last accept written to the last ``match_start`` received, both on this
process's clock. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import uvloop

from bench import procfs
from bench.client import Greeter, Reply, frame, open_sessions, raise_open_file_limit, summarize_ms

BLOCK = 4  # source addresses 127.4.x.y
QUEUE = "5v5"
MATCH_SIZE = 10  # players in one 5v5 match
JOIN_STEP_S = 0.005


@dataclass
class MatchTimes:
    last_accept: float = 0.0
    starts: list[float] = field(default_factory=list)


@dataclass
class Run:
    """Message counts and match timings from every player of the run."""

    expected_starts: int
    matches: dict[str, MatchTimes] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Player(Greeter):
    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run

    def after_welcome(self, message: Reply, now: float) -> None:
        run = self.run
        run.counts[message.type] += 1
        if message.type == "match_found" and message.match is not None:
            self.send(frame({"type": "accept", "match": message.match}))
            run.matches.setdefault(message.match, MatchTimes()).last_accept = time.perf_counter()
        elif message.type == "match_start" and message.match is not None:
            run.matches.setdefault(message.match, MatchTimes()).starts.append(now)
            if run.counts["match_start"] == run.expected_starts:
                run.done.set()
        elif message.type in ("error", "kicked", "match_cancelled"):
            run.problems[f"{message.type}:{message.code or message.reason}"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.run.problems["connection_lost"] += 1


async def join_paced(players: list[Player], seconds: float) -> None:
    """Send every player's join_queue, spread evenly over ``seconds``."""
    join = frame({"type": "join_queue", "queue": QUEUE})
    started, sent = time.perf_counter(), 0
    while sent < len(players):
        elapsed = time.perf_counter() - started
        due = min(len(players), int(elapsed / seconds * len(players)) + 1) if seconds > 0 else len(players)
        for player in players[sent:due]:
            player.send(join)
        sent = due
        await asyncio.sleep(JOIN_STEP_S)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    raise_open_file_limit()
    run = Run(expected_starts=args.players // MATCH_SIZE * MATCH_SIZE)
    login_started = time.perf_counter()
    login_cpu = procfs.cpu_seconds(args.server_pid)
    players = await open_sessions(lambda: Player(run), args.port, BLOCK, range(args.players))

    # Queue everyone, then wait until every matchable player has a match_start.
    started = time.perf_counter()
    matchmaking_cpu = procfs.cpu_seconds(args.server_pid)
    await join_paced(players, args.join_seconds)
    try:
        async with asyncio.timeout(args.timeout):
            await run.done.wait()
    except TimeoutError:
        run.problems["timed_out"] += 1
    finished = time.perf_counter()
    finished_cpu = procfs.cpu_seconds(args.server_pid)
    for player in players:
        player.close()

    complete = [m for m in run.matches.values() if len(m.starts) == MATCH_SIZE]
    return {
        "players": args.players,
        "join_seconds": args.join_seconds,
        "matches_found": len(run.matches),
        "matches_started": len(complete),
        "seconds": finished - started,
        # time.perf_counter readings, comparable with the lag probe's send times.
        "stages": {"login": [login_started, started], "matchmaking": [started, finished]},
        "daemon_cpu_share": {
            "login": (matchmaking_cpu - login_cpu) / (started - login_started),
            "matchmaking": (finished_cpu - matchmaking_cpu) / (finished - started),
        },
        "accept_to_start": summarize_ms([max(m.starts) - m.last_accept for m in complete]),
        "messages": dict(run.counts),
        "problems": dict(run.problems),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="daemon port on 127.0.0.1")
    parser.add_argument("--server-pid", type=int, required=True, help="daemon process whose CPU time is read")
    parser.add_argument("--players", type=int, required=True, help="simulated players")
    parser.add_argument("--join-seconds", type=float, default=2.0, help="time over which joins are spread")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
