"""Load generator: memory of idle authenticated sessions in the daemon.

Run as a separate process from the daemon. First it logs one session in and out and
reads the daemon's memory as the zero-session baseline. Then, for each count in
``--counts``, it opens sessions up to that count, waits until the daemon's CPU time
stops growing, and reads ``Rss`` and ``Pss`` from ``/proc/PID/smaps_rollup``.
Finally every session sends one ping, to prove none was dropped. Prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

import uvloop

from bench import procfs
from bench.client import Greeter, Reply, frame, open_sessions, raise_open_file_limit

BLOCK = 2  # source addresses 127.2.x.y
SETTLE_POLL_S = 0.2
SETTLE_MAX_S = 10.0


class PongCount:
    """Pongs received by all sessions; ``complete`` is set once ``expected`` have arrived."""

    def __init__(self) -> None:
        self.received = 0
        self.expected = 0
        self.complete = asyncio.Event()

    def add(self) -> None:
        self.received += 1
        if self.received >= self.expected:
            self.complete.set()


class IdleSession(Greeter):
    def __init__(self, pongs: PongCount) -> None:
        super().__init__()
        self.pongs = pongs

    def after_welcome(self, message: Reply, now: float) -> None:
        if message.type == "pong":
            self.pongs.add()


async def settle(pid: int) -> float:
    """Wait until ``pid`` used no CPU for three polls in a row; return the seconds waited."""
    started = time.perf_counter()
    quiet, last = 0, procfs.cpu_seconds(pid)
    while quiet < 3 and time.perf_counter() - started < SETTLE_MAX_S:
        await asyncio.sleep(SETTLE_POLL_S)
        now = procfs.cpu_seconds(pid)
        quiet = quiet + 1 if now == last else 0
        last = now
    return time.perf_counter() - started


async def read_point(pid: int, sessions: int, baseline: dict[str, float]) -> dict[str, float]:
    """Read the daemon's memory once it is idle; per-session figures are against ``baseline``."""
    waited = await settle(pid)
    memory = procfs.memory_kb(pid)
    point: dict[str, float] = {"sessions": sessions, **memory, "open_files": procfs.open_files(pid)}
    point["settle_s"] = waited
    if sessions:
        point["rss_kb_per_session"] = (memory["rss"] - baseline["rss"]) / sessions
        point["pss_kb_per_session"] = (memory["pss"] - baseline["pss"]) / sessions
    return point


async def ping_all(sessions: list[IdleSession], pongs: PongCount) -> int:
    """Send one ping on every session; return how many pongs came back within 30 s."""
    pongs.expected = len(sessions)
    ping = frame({"type": "ping", "rid": 1})
    for session in sessions:
        session.send(ping)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await pongs.complete.wait()
    return pongs.received


async def measure(args: argparse.Namespace) -> dict[str, object]:
    raise_open_file_limit()
    pongs = PongCount()

    def new_session() -> IdleSession:
        return IdleSession(pongs)

    # Baseline: the daemon after serving one session, so lazily built code paths exist.
    warmup = await open_sessions(new_session, args.port, BLOCK, [0])
    warmup[0].close()
    baseline = await read_point(args.server_pid, 0, {})
    points = [baseline]

    # Grow the pool to each count and read the daemon's memory once it is idle.
    sessions: list[IdleSession] = []
    for count in args.counts:
        started = time.perf_counter()
        sessions += await open_sessions(new_session, args.port, BLOCK, range(1 + len(sessions), 1 + count))
        point = await read_point(args.server_pid, count, baseline)
        point["open_s"] = time.perf_counter() - started
        point["lost_so_far"] = sum(s.lost for s in sessions)
        points.append(point)

    # Every session must still reply.
    answered = await ping_all(sessions, pongs)
    kicked = sorted({s.kicked for s in sessions if s.kicked})
    for session in sessions:
        session.close()
    return {"points": points, "sessions": len(sessions), "answered_ping": answered, "kicked_reasons": kicked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="daemon port on 127.0.0.1")
    parser.add_argument("--server-pid", type=int, required=True, help="daemon process whose memory is read")
    parser.add_argument(
        "--counts", type=lambda text: [int(n) for n in text.split(",")], required=True,
        help="comma-separated session counts, ascending",
    )
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
