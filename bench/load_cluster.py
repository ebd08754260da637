"""Load generator for a cluster: matches started per second, and request round trips.

Run as a separate process from the daemons. Two parts:

1. Round trips: on each port in turn, one player sends ``join_queue`` and then
   ``leave_queue``, ``--probes`` times each, one at a time, and the time to each
   reply is recorded. On a cluster node the request travels through Redis to the
   leader and the reply back through the node's inbox, so against a single embedded
   daemon this shows the latency that cross-node delivery adds.
2. Throughput: ``--players`` players, spread round-robin over the ports, log in and
   all join the 5v5 queue at once; each accepts its ``match_found`` at once. The
   result is the matches started per second, from the first ``join_queue`` sent to
   the last ``match_start`` received, and the time from each match's last accept to
   its last ``match_start``.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import uvloop

from bench.client import Greeter, Reply, frame, open_sessions, raise_open_file_limit, summarize_ms

BLOCK = 7  # source addresses 127.7.x.y
QUEUE = "5v5"
MATCH_SIZE = 10


class Prober(Greeter):
    """One player that sends a request and waits for its reply, again and again."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: asyncio.Future[Reply] | None = None

    def after_welcome(self, message: Reply, now: float) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(message)

    async def request(self, message: dict[str, object]) -> Reply:
        self.reply = asyncio.get_running_loop().create_future()
        self.send(frame(message))
        async with asyncio.timeout(10):
            return await self.reply


async def round_trips(port: int, index: int, probes: int) -> dict[str, object]:
    (prober,) = await open_sessions(Prober, port, BLOCK, [100_000 + index])
    samples = []
    for _ in range(probes):
        for message in ({"type": "join_queue", "queue": "1v1"}, {"type": "leave_queue"}):
            started = time.perf_counter()
            reply = await prober.request(message)
            samples.append(time.perf_counter() - started)
            if reply.type not in ("queued", "left_queue"):
                msg = f"probe on port {port} got {reply}"
                raise RuntimeError(msg)
    prober.close()
    return {"port": port, **summarize_ms(samples)}


@dataclass
class Run:
    expected_starts: int
    last_accept: dict[str, float] = field(default_factory=dict)
    starts: dict[str, list[float]] = field(default_factory=dict)
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
            run.last_accept[message.match] = time.perf_counter()
        elif message.type == "match_start" and message.match is not None:
            run.starts.setdefault(message.match, []).append(now)
            if run.counts["match_start"] == run.expected_starts:
                run.done.set()
        elif message.type in ("error", "kicked", "match_cancelled"):
            run.problems[f"{message.type}:{message.code or message.reason}"] += 1


async def throughput(ports: list[int], players: int, limit_s: float) -> dict[str, object]:
    run = Run(expected_starts=players // MATCH_SIZE * MATCH_SIZE)
    opened: list[Player] = []
    for offset, port in enumerate(ports):
        indexes = range(offset, players, len(ports))
        opened += await open_sessions(lambda: Player(run), port, BLOCK, indexes)

    join = frame({"type": "join_queue", "queue": QUEUE})
    started = time.perf_counter()
    for player in opened:
        player.send(join)
    try:
        async with asyncio.timeout(limit_s):
            await run.done.wait()
    except TimeoutError:
        run.problems["timed_out"] += 1
    finished = max((max(times) for times in run.starts.values()), default=time.perf_counter())
    for player in opened:
        player.close()

    complete = {match: times for match, times in run.starts.items() if len(times) == MATCH_SIZE}
    seconds = finished - started
    return {
        "players": players,
        "matches_started": len(complete),
        "seconds": seconds,
        "matches_per_s": len(complete) / seconds if seconds > 0 else None,
        "accept_to_start": summarize_ms([max(times) - run.last_accept[match] for match, times in complete.items()]),
        "messages": dict(run.counts),
        "problems": dict(run.problems),
    }


async def measure(args: argparse.Namespace) -> dict[str, object]:
    raise_open_file_limit()
    ports = [int(port) for port in args.ports.split(",")]
    trips = [await round_trips(port, index, args.probes) for index, port in enumerate(ports)]
    return {"nodes": len(ports), "round_trips": trips, **await throughput(ports, args.players, args.timeout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", required=True, help="comma-separated daemon ports on 127.0.0.1")
    parser.add_argument("--players", type=int, required=True, help="players in the throughput part")
    parser.add_argument("--probes", type=int, default=200, help="join and leave round trips per port")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
