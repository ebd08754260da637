"""Load generator: ping/pong over N connections with D requests in flight on each.

Run as a separate process from the server. Steps: open the connections (and send
hello, for lobbyd), ping for ``--warmup`` seconds, then measure for ``--seconds``:
pongs per second, round-trip percentiles, and the server's CPU time from
``/proc/PID/stat`` over the same window. Prints one JSON object on stdout.

Each connection keeps exactly ``--depth`` pings outstanding: it starts with D pings
in one write and, for every read that brings K pongs, sends K new pings in one write.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from array import array
from collections import deque

import uvloop

from bench import procfs
from bench.client import Greeter, Reply, frame, open_sessions, summarize_ms

BLOCK = 1  # source addresses 127.1.x.y


class Totals:
    """Counters shared by every connection of the run."""

    def __init__(self) -> None:
        self.pongs = 0
        self.other = 0
        self.rid_mismatches = 0
        self.recording = False
        self.stopping = False
        self.rtts = array("d")


class Pinger(Greeter):
    def __init__(self, totals: Totals, depth: int) -> None:
        super().__init__()
        self.totals = totals
        self.depth = depth
        self.next_rid = 0
        self.expected_rid = 0
        self.sent_at: deque[float] = deque()

    def start(self) -> None:
        self.send_pings(self.depth, time.perf_counter())

    def send_pings(self, count: int, now: float) -> None:
        frames = []
        for _ in range(count):
            frames.append(frame({"type": "ping", "rid": self.next_rid}))
            self.sent_at.append(now)
            self.next_rid += 1
        self.send(b"".join(frames))

    def on_messages(self, messages: list[Reply], now: float) -> None:
        if not self.welcomed.done():
            super().on_messages(messages, now)
            return
        totals = self.totals
        answered = 0
        for message in messages:
            if message.type != "pong":
                totals.other += 1
                continue
            if message.rid != self.expected_rid:
                totals.rid_mismatches += 1
            self.expected_rid = (message.rid or 0) + 1
            sent = self.sent_at.popleft()
            if totals.recording:
                totals.rtts.append(now - sent)
            answered += 1
        totals.pongs += answered
        if answered and not totals.stopping:
            self.send_pings(answered, time.perf_counter())


def mark_welcomed(connections: list[Pinger]) -> None:
    """Skip the hello step for servers that have none (the baselines)."""
    now = time.perf_counter()
    for connection in connections:
        connection.welcomed.set_result(now)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    totals = Totals()

    # Open every connection and log in before any ping, so set-up is not measured.
    connections = await open_sessions(
        lambda: Pinger(totals, args.depth), args.port, BLOCK, range(args.conns), hello=args.hello
    )
    if not args.hello:
        mark_welcomed(connections)
    for connection in connections:
        connection.start()
    await asyncio.sleep(args.warmup)

    # The measured window: counters and CPU readings at both ends.
    started, pongs_before = time.perf_counter(), totals.pongs
    server_cpu, load_cpu = procfs.cpu_seconds(args.server_pid), procfs.cpu_seconds(os.getpid())
    totals.recording = True
    await asyncio.sleep(args.seconds)
    totals.recording = False
    elapsed, pongs = time.perf_counter() - started, totals.pongs - pongs_before
    server_cpu = procfs.cpu_seconds(args.server_pid) - server_cpu
    load_cpu = procfs.cpu_seconds(os.getpid()) - load_cpu

    totals.stopping = True
    lost = sum(c.lost for c in connections)
    for connection in connections:
        connection.close()
    return {
        "conns": args.conns,
        "depth": args.depth,
        "seconds": elapsed,
        "pongs": pongs,
        "pongs_per_s": pongs / elapsed,
        "rtt": summarize_ms(totals.rtts),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_ping": server_cpu / pongs * 1e6 if pongs else None,
        "server_cpu_share": server_cpu / elapsed,
        "load_cpu_share": load_cpu / elapsed,
        "unexpected_messages": totals.other,
        "rid_mismatches": totals.rid_mismatches,
        "connections_lost": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--server-pid", type=int, required=True, help="process whose CPU time is read")
    parser.add_argument("--conns", type=int, required=True, help="connections")
    parser.add_argument("--depth", type=int, required=True, help="pings in flight per connection")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the measured window")
    parser.add_argument("--hello", action="store_true", help="say hello first (lobbyd)")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
