"""Event-loop lag probe: one session that pings the daemon every 5 ms.

Run as its own process next to a load generator. It logs in, then sends a ping
every ``--interval-ms`` whether or not the previous pong has come back, until its
standard input closes. The slowest round trip is an upper bound on the longest
stall of the daemon's event loop during the run, because a stalled loop returns no
pong. The bound also includes delays on the probe's side, so the true stall is at
most this. Send times come from ``time.perf_counter``, which on Linux reads the
system-wide monotonic clock, so they compare with other processes' times. Prints
one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import uvloop

from bench.client import Greeter, Reply, frame, open_sessions, summarize_ms

BLOCK = 6  # source address 127.6.0.1


class Probe(Greeter):
    def __init__(self) -> None:
        super().__init__()
        self.sent_at: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []
        """(send time, round trip) per ping that got its pong, in ``time.perf_counter`` seconds."""

    def ping(self, rid: int) -> None:
        self.sent_at[rid] = time.perf_counter()
        self.send(frame({"type": "ping", "rid": rid}))

    def after_welcome(self, message: Reply, now: float) -> None:
        if message.type == "pong" and message.rid in self.sent_at:
            sent = self.sent_at.pop(message.rid)
            self.samples.append((sent, now - sent))


async def wait_for_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    stdin = sys.stdin.fileno()

    def on_readable() -> None:
        if not os.read(stdin, 4096) and not closed.done():
            closed.set_result(None)

    loop.add_reader(stdin, on_readable)
    try:
        await closed
    finally:
        loop.remove_reader(stdin)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    (probe,) = await open_sessions(Probe, args.port, BLOCK, [0])
    print(json.dumps({"ready": True}), flush=True)
    stop = asyncio.ensure_future(wait_for_stdin_eof())

    # Ping on a fixed schedule; a late timer does not send a burst to catch up.
    # Timer lateness is delay on the probe's side, which the round trips include too.
    interval = args.interval_ms / 1000
    rid, next_at, late = 0, time.perf_counter(), 0.0
    while not stop.done() and not probe.lost:
        late = max(late, time.perf_counter() - next_at)
        probe.ping(rid)
        rid += 1
        next_at = max(next_at + interval, time.perf_counter())
        await asyncio.wait([stop], timeout=next_at - time.perf_counter())

    await asyncio.sleep(0.2)  # let the last pongs arrive
    probe.close()
    return {
        "pings": rid,
        "unanswered": len(probe.sent_at),
        "rtt": summarize_ms([rtt for _, rtt in probe.samples]),
        "samples": probe.samples,
        "max_timer_lateness_ms": late * 1000,
        "lost": probe.lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="daemon port on 127.0.0.1")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="time between pings")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
