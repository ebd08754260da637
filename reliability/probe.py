"""A healthy client that pings a daemon at a fixed interval and reports round-trip times.

The load tools run it as a subprocess (``python -m reliability.probe``), so that
the load generator's busy event loop does not delay the pings it measures. It
runs until SIGTERM or ``--seconds``, then prints one JSON report on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from typing import Any, Final

import msgspec
import uvloop

from lobbyd.client import ClientError, LobbyClient
from lobbyd.sim import Distribution, distribution

# Seconds a ping may take before it counts as lost.
PING_TIMEOUT: Final = 2.0
# Seconds the probe waits after a lost connection before it reconnects.
RECONNECT_DELAY: Final = 0.2


class ProbeReport(msgspec.Struct, frozen=True):
    pings: int
    lost: int
    """Pings without a pong within PING_TIMEOUT, or cut off by a lost connection."""
    reconnects: int
    latency_ms: Distribution


async def run_probe(address: str, player: str, interval: float, stop: asyncio.Event) -> ProbeReport:
    """Ping ``address`` as ``player`` every ``interval`` seconds until ``stop`` is set."""
    samples: list[float] = []
    lost = 0
    reconnects = -1
    while not stop.is_set():
        reconnects += 1
        try:
            client = await LobbyClient.connect(address)
            await client.hello(player)
        except (ClientError, OSError, TimeoutError):
            await asyncio.sleep(RECONNECT_DELAY)
            continue
        try:
            while not stop.is_set():
                samples.append(await _ping(client))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        except (ClientError, OSError, TimeoutError):
            lost += 1
        finally:
            await client.close()
    return ProbeReport(pings=len(samples) + lost, lost=lost, reconnects=reconnects, latency_ms=distribution(samples))


async def _ping(client: LobbyClient) -> float:
    began = time.perf_counter()
    rid = await client.request("ping")
    async with asyncio.timeout(PING_TIMEOUT):
        while True:
            reply = await client.recv(timeout=None)
            if reply.get("rid") == rid:
                return (time.perf_counter() - began) * 1000


def start_probe(address: str, player: str, interval_ms: int) -> subprocess.Popen[bytes]:
    """Start the probe as a subprocess of this Python."""
    command = [sys.executable, "-m", "reliability.probe", "--connect", address, "--player", player]
    return subprocess.Popen([*command, "--interval-ms", str(interval_ms)], stdout=subprocess.PIPE)


def stop_probe(process: subprocess.Popen[bytes]) -> ProbeReport:
    """Stop a probe started by ``start_probe`` and return its report."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    return msgspec.json.decode(output, type=ProbeReport)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.probe", description=__doc__)
    parser.add_argument("--connect", required=True, help="HOST:PORT of the daemon")
    parser.add_argument("--player", default="probe", help="player id to log in as")
    parser.add_argument("--interval-ms", type=int, default=20, help="milliseconds between pings")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds (0: at SIGTERM)")
    args = parser.parse_args(argv)
    report = uvloop.run(_main(args))
    sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
    return 0


async def _main(args: Any) -> ProbeReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.seconds > 0:
        loop.call_later(args.seconds, stop.set)
    return await run_probe(args.connect, args.player, args.interval_ms / 1000, stop)


if __name__ == "__main__":
    sys.exit(main())
