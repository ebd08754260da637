"""Memory under stalled readers: clients that send requests and never read the replies.

``python -m reliability.stalled`` starts ``lobbyd serve`` with a raised rate limit
and, in each of ``--rounds`` rounds, connects ``--clients`` stalled readers. Each
logs in with a small receive buffer and a 64-character player id. Then it sends
``leave_queue`` requests at a steady rate and reads nothing, until the daemon drops
it as a slow consumer. The daemon replies to each 22-byte request with a ``not_queued``
error of about 110 bytes, which names the player, so the unread replies pile up
five times faster than the requests. The readers together send
``--total-requests-per-second``. The default of 50,000 is half the rate that
saturated the daemon in the run recorded in docs/reliability.md, because the point
is the memory of unread replies and not a CPU flood. The daemon's RSS is sampled
from /proc all along, while a probe client in its own process keeps pinging.

The run passes when the daemon dropped every stalled reader, the peak RSS growth
of every round stays under ``clients * (max_outgoing_bytes + SESSION_ALLOWANCE)``,
later rounds peak no higher than the first (within ``ROUND_SLACK``) although they
refused as much data again, the probe lost no ping and its p99 stayed under
``--max-p99-ms``, and the log has no error-level event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import socket
import sys
import tempfile
from pathlib import Path
from typing import Final

import msgspec
import uvloop

from lobbyd.client import LobbyClient
from reliability.harness import log_problems, print_report, probe_failures, rss_kib
from reliability.probe import ProbeReport, start_probe, stop_probe
from tests.daemon import HOST, DaemonProcess, running_daemon

# Socket buffers of a stalled reader, in bytes. The small receive buffer makes the
# daemon's writes back up at once. The small send buffer keeps few requests in
# flight, so the bytes sent are close to the bytes the daemon processed.
RECEIVE_BUFFER: Final = 4096
SEND_BUFFER: Final = 65_536
# Milliseconds of unacknowledged sending after which the reader's kernel gives up on
# the connection. A reader with a zero receive window ignores the daemon's reset,
# whose sequence number lies past that window, and would learn of the drop only from
# its next zero-window probe, minutes later after backoff.
USER_TIMEOUT_MS: Final = 3000
REQUESTS_PER_WRITE: Final = 100
# Seconds a stalled reader may send before the run counts it as never dropped.
STALL_DEADLINE: Final = 240.0
# How often the daemon's RSS is sampled, in seconds.
SAMPLE_INTERVAL: Final = 0.05
# Memory a session may use besides its unsent replies, in bytes. It covers a 64 KiB
# read chunk in the stream reader and the codec, and the requests of one chunk
# (about 3,000, some 250 bytes each as objects) waiting in the matchmaker's queue.
# It is an allowance to judge the peak by, not a measured size.
SESSION_ALLOWANCE: Final = 1024 * 1024
# Later rounds may peak this much above the first round's peak, in KiB: the
# allocator's arenas settle over the first rounds.
ROUND_SLACK: Final = 8 * 1024
CLIENTS_PER_SOURCE: Final = 200


class StalledOptions(msgspec.Struct, frozen=True):
    clients: int = 200
    rounds: int = 2
    max_outgoing_bytes: int = 256 * 1024
    total_requests_per_second: int = 50_000
    max_p99_ms: float = 250.0


class RoundFigures(msgspec.Struct, frozen=True):
    bytes_sent: int
    """Request bytes the stalled readers sent."""
    dropped: int
    peak_rss_kib: int
    rss_after_kib: int
    seconds: float


class StalledReport(msgspec.Struct, frozen=True):
    ok: bool
    failures: list[str]
    clients: int
    max_outgoing_bytes: int
    rss_before_kib: int
    rounds: list[RoundFigures]
    slow_consumer_events: int
    """Stalled readers dropped as slow consumers; the rest ended by a heartbeat or frame timeout."""
    unsent_bytes_at_drop: int
    """Sum of the daemon's user-space write buffers when it dropped the stalled readers."""
    probe: ProbeReport


async def run_stalled(options: StalledOptions) -> StalledReport:
    """Start a daemon, run the stalled-reader rounds against it and return the report."""
    env = {
        "LOBBYD_MAX_OUTGOING_BYTES": str(options.max_outgoing_bytes),
        "LOBBYD_RATE_LIMIT_PER_S": "10000000",
        "LOBBYD_RATE_LIMIT_BURST": "10000000",
        "LOBBYD_LOG_LEVEL": "warning",
    }
    with tempfile.TemporaryDirectory(prefix="lobbyd-stalled-") as scratch:
        with running_daemon(Path(scratch), env=env) as daemon:
            probe = start_probe(daemon.address, "probe", interval_ms=20)
            try:
                await asyncio.sleep(1.0)
                before = rss_kib(daemon.process.pid)
                rounds = [await _round(daemon, options, number) for number in range(options.rounds)]
            finally:
                probe_report = await asyncio.to_thread(stop_probe, probe)
        events = [event for event in daemon.log_events() if event.get("event") == "slow_consumer"]
        problems = log_problems(daemon)
    unsent = sum(int(event.get("buffered", 0)) for event in events)
    failures = _failures(options, before, rounds, problems, probe_report)
    return StalledReport(
        ok=not failures,
        failures=failures,
        clients=options.clients,
        max_outgoing_bytes=options.max_outgoing_bytes,
        rss_before_kib=before,
        rounds=rounds,
        slow_consumer_events=len(events),
        unsent_bytes_at_drop=unsent,
        probe=probe_report,
    )


async def _round(daemon: DaemonProcess, options: StalledOptions, number: int) -> RoundFigures:
    loop = asyncio.get_running_loop()
    began = loop.time()
    peak = rss_kib(daemon.process.pid)
    interval = REQUESTS_PER_WRITE * options.clients / options.total_requests_per_second
    readers = [
        asyncio.create_task(
            stalled_reader(daemon.port, f"127.0.3.{n // CLIENTS_PER_SOURCE + 1}", _player_id(number, n), interval)
        )
        for n in range(options.clients)
    ]
    while not all(reader.done() for reader in readers):
        peak = max(peak, rss_kib(daemon.process.pid))
        await asyncio.sleep(SAMPLE_INTERVAL)
    results = [reader.result() for reader in readers]
    seconds = loop.time() - began
    await asyncio.sleep(1.0)
    return RoundFigures(
        bytes_sent=sum(sent for sent, _ in results),
        dropped=sum(1 for _, dropped in results if dropped),
        peak_rss_kib=peak,
        rss_after_kib=rss_kib(daemon.process.pid),
        seconds=round(seconds, 2),
    )


async def stalled_reader(port: int, source: str, player: str, interval: float) -> tuple[int, bool]:
    """Log in, then send REQUESTS_PER_WRITE requests every ``interval`` seconds without reading.

    Returns the bytes sent and whether the daemon dropped the connection. Raises
    ``ClientError`` or ``TimeoutError`` when the login fails.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    sock.bind((source, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    client = LobbyClient(reader, writer, json_lines=False)
    sent = 0
    try:
        await client.hello(player)
        batch = client.encode({"type": "leave_queue"}) * REQUESTS_PER_WRITE
        async with asyncio.timeout(STALL_DEADLINE):
            while True:
                writer.write(batch)
                await writer.drain()
                sent += len(batch)
                await asyncio.sleep(interval)
    except (ConnectionError, RuntimeError):
        # uvloop raises RuntimeError for a write to a transport that the reset closed.
        return sent, True
    except TimeoutError as exc:
        # ETIMEDOUT is USER_TIMEOUT_MS passing with the daemon's side gone; no errno is
        # STALL_DEADLINE passing while the daemon still accepted requests.
        return sent, exc.errno == errno.ETIMEDOUT
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _player_id(round_number: int, reader: int) -> str:
    """Return a player id of the maximum length, 64 characters, so that each error reply is long."""
    return f"stall{round_number}-{reader}-".ljust(64, "x")


def _failures(
    options: StalledOptions,
    before: int,
    rounds: list[RoundFigures],
    problems: list[str],
    probe: ProbeReport,
) -> list[str]:
    failures = [f"daemon log: {problem}" for problem in problems[:20]]
    for number, figures in enumerate(rounds):
        if figures.dropped != options.clients:
            failures.append(f"round {number}: {options.clients - figures.dropped} stalled readers were never dropped")
    bound = options.clients * (options.max_outgoing_bytes + SESSION_ALLOWANCE) // 1024
    for number, figures in enumerate(rounds):
        growth = figures.peak_rss_kib - before
        if growth > bound:
            failures.append(f"round {number}: peak RSS grew {growth} KiB, more than the bound of {bound} KiB")
        if figures.peak_rss_kib > rounds[0].peak_rss_kib + ROUND_SLACK:
            first = rounds[0].peak_rss_kib
            failures.append(f"round {number}: peak RSS {figures.peak_rss_kib} KiB, first round {first} KiB")
    failures += probe_failures(probe, options.max_p99_ms)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.stalled", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="stalled readers per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of stalled readers")
    parser.add_argument("--max-outgoing-bytes", type=int, default=256 * 1024, help="the daemon's max_outgoing_bytes")
    parser.add_argument(
        "--total-requests-per-second", type=int, default=50_000, help="requests per second of all readers together"
    )
    parser.add_argument("--max-p99-ms", type=float, default=250.0, help="largest probe p99 latency that passes")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    options = StalledOptions(
        clients=args.clients,
        rounds=args.rounds,
        max_outgoing_bytes=args.max_outgoing_bytes,
        total_requests_per_second=args.total_requests_per_second,
        max_p99_ms=args.max_p99_ms,
    )
    report = uvloop.run(run_stalled(options))
    return print_report(report, report.ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
