"""Load generator: one ping written to every one of N sessions at the same instant.

Run as a separate process from the daemon. This approximates fan-out, one message
to many sessions, from outside the daemon: after N sessions have logged in, each
round writes a ping on every connection in one loop pass (all writes before any
read), then waits for every pong. Per round it reports how long the writes took and
the time from the first write to the last pong. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import uvloop

from bench.client import Greeter, Reply, frame, open_sessions, raise_open_file_limit, summarize_ms

BLOCK = 5  # source addresses 127.5.x.y
ROUND_TIMEOUT_S = 30.0
PAUSE_S = 0.5


class Round:
    """Reply times of one round; ``complete`` is set when every session has replied."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.replied_at: list[float] = []
        self.complete = asyncio.Event()

    def add(self, now: float) -> None:
        self.replied_at.append(now)
        if len(self.replied_at) == self.expected:
            self.complete.set()


class Receiver(Greeter):
    def __init__(self, rounds: list[Round]) -> None:
        super().__init__()
        self.rounds = rounds

    def after_welcome(self, message: Reply, now: float) -> None:
        if message.type == "pong":
            self.rounds[-1].add(now)


async def one_round(sessions: list[Receiver], rounds: list[Round], rid: int) -> dict[str, Any]:
    ping = frame({"type": "ping", "rid": rid})
    tally = Round(len(sessions))
    rounds.append(tally)

    # Write every ping before the loop gets a chance to read any reply.
    started = time.perf_counter()
    for session in sessions:
        session.send(ping)
    written = time.perf_counter()

    try:
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            await tally.complete.wait()
    except TimeoutError:
        pass
    replies = [at - started for at in tally.replied_at]
    return {
        "write_ms": (written - started) * 1000,
        "missing": len(sessions) - len(replies),
        **{f"reply_{key}": value for key, value in summarize_ms(replies).items()},
    }


async def measure(args: argparse.Namespace) -> dict[str, object]:
    raise_open_file_limit()
    tallies: list[Round] = []
    sessions = await open_sessions(lambda: Receiver(tallies), args.port, BLOCK, range(args.sessions))
    await asyncio.sleep(PAUSE_S)

    rounds = []
    for rid in range(args.rounds):
        rounds.append(await one_round(sessions, tallies, rid))
        await asyncio.sleep(PAUSE_S)
    for session in sessions:
        session.close()
    # A round that lost a pong has no last pong; it counts under "missing" instead.
    last_reply = [r["reply_max_ms"] for r in rounds if not r["missing"]]
    return {
        "sessions": args.sessions,
        "rounds": rounds,
        "last_reply_median_ms": statistics.median(last_reply) if last_reply else None,
        "last_reply_max_ms": max(last_reply, default=None),
        "write_median_ms": statistics.median(r["write_ms"] for r in rounds),
        "missing": sum(r["missing"] for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="daemon port on 127.0.0.1")
    parser.add_argument("--sessions", type=int, required=True, help="sessions that each get one ping per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds to run")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
