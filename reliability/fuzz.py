"""Socket-level fuzzing: mutated frames and noise at a running daemon from many connections.

``python -m reliability.fuzz`` starts ``lobbyd serve`` on a free loopback port and,
for ``--seconds``, opens connections from ``--connections`` workers at once. Each
connection picks a framing by its first byte and sends a mix of valid frames,
structurally mutated frames, byte-mutated frames and noise. It writes them in one
piece, cut at random points or byte by byte, and reads and decodes every reply. Most
connections log in first, with player ids from a small pool so that logins
collide, and accept or decline the matches they are offered, so the fuzz reaches
the lobby and the store as well as the codec.

A probe client in its own process pings the daemon all along. The run fails if
the daemon dies, logs an error-level event or a traceback, sends a reply that does
not decode, if the probe loses a ping, or if the probe's p99 latency exceeds
``--max-p99-ms``. Exit status: 0 when it passed, 1 when it failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import uvloop

from reliability import mutations
from reliability.harness import log_problems, print_report, probe_failures, rss_kib
from reliability.probe import ProbeReport, start_probe, stop_probe
from tests.daemon import HOST, running_daemon

# The daemon's rate limit is raised so that the fuzz reaches the codec and the lobby
# instead of ending most sessions with rate_limited; --default-limits keeps it.
FUZZ_DAEMON_ENV: Final = {
    "LOBBYD_RATE_LIMIT_PER_S": "1000",
    "LOBBYD_RATE_LIMIT_BURST": "2000",
    "LOBBYD_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    "LOBBYD_FRAME_TIMEOUT_MS": "1000",
    "LOBBYD_HELLO_TIMEOUT_MS": "2000",
    "LOBBYD_READY_CHECK_TIMEOUT_MS": "2000",
    "LOBBYD_TICK_INTERVAL_MS": "50",
}
# Seconds a connection keeps reading after its last write before it closes.
REPLY_WAIT: Final = 0.3
# Largest reply the fuzz client accepts, in bytes; a longer one counts as undecodable.
MAX_REPLY: Final = 1 << 24
# Match ids remembered for accept and decline, newest last.
RECENT_MATCHES: Final = 200


@dataclass(frozen=True, slots=True)
class FuzzOptions:
    seconds: float = 60.0
    connections: int = 64
    players: int = 40
    """Size of the player-id pool that logins draw from."""
    seed: int = 1
    default_limits: bool = False
    max_p99_ms: float = 250.0
    data_dir: Path | None = None


@dataclass(slots=True)
class FuzzTally:
    connections: int = 0
    connect_failures: int = 0
    frames_valid: int = 0
    frames_mutated_structure: int = 0
    frames_mutated_bytes: int = 0
    noise_chunks: int = 0
    bytes_sent: int = 0
    replies: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    kicked: collections.Counter[str] = field(default_factory=collections.Counter)
    closed_by_daemon: int = 0
    reset_by_daemon: int = 0
    undecodable_replies: int = 0
    largest_reply: int = 0
    matches: list[str] = field(default_factory=list)


class FuzzReport(msgspec.Struct, frozen=True):
    ok: bool
    failures: list[str]
    seconds: float
    seed: int
    connections: int
    connect_failures: int
    frames: dict[str, int]
    bytes_sent: int
    replies: dict[str, int]
    errors_by_code: dict[str, int]
    kicked_by_reason: dict[str, int]
    closed_by_daemon: int
    reset_by_daemon: int
    undecodable_replies: int
    largest_reply_bytes: int
    daemon_log_lines: int
    daemon_rss_kib: int
    probe: ProbeReport


async def run_fuzz(options: FuzzOptions) -> FuzzReport:
    """Start a daemon, fuzz it for ``options.seconds`` and return the report."""
    with tempfile.TemporaryDirectory(prefix="lobbyd-fuzz-") as scratch:
        data_dir = options.data_dir or Path(scratch)
        env = {"LOBBYD_LOG_LEVEL": "info"} | ({} if options.default_limits else FUZZ_DAEMON_ENV)
        with running_daemon(data_dir, env=env) as daemon:
            probe = start_probe(daemon.address, "probe", interval_ms=20)
            tally = FuzzTally()
            began = time.monotonic()
            deadline = asyncio.get_running_loop().time() + options.seconds
            workers = [fuzz_worker(daemon.port, n, options, tally, deadline) for n in range(options.connections)]
            try:
                await asyncio.gather(*workers)
            finally:
                probe_report = await asyncio.to_thread(stop_probe, probe)
            elapsed = time.monotonic() - began
            alive = daemon.process.poll() is None
            rss = rss_kib(daemon.process.pid) if alive else 0
        failures = _failures(alive, daemon.exit_code, log_problems(daemon), tally, probe_report, options)
        log_lines = len(daemon.log_path.read_text(errors="replace").splitlines())
    return _report(options, tally, probe_report, failures, elapsed, log_lines, rss)


async def fuzz_worker(port: int, number: int, options: FuzzOptions, tally: FuzzTally, deadline: float) -> None:
    """Open one fuzz connection after another until ``deadline`` (event-loop time)."""
    rng = random.Random(f"{options.seed}:{number}")
    source = f"127.0.1.{number % 250 + 1}"
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0), limit=MAX_REPLY)
        except OSError:
            tally.connect_failures += 1
            await asyncio.sleep(0.05)
            continue
        tally.connections += 1
        await fuzz_connection(reader, writer, rng, options, tally)


async def fuzz_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    rng: random.Random,
    options: FuzzOptions,
    tally: FuzzTally,
) -> None:
    stream = build_stream(rng, options, tally)
    # The daemon replies in JSON unless the first byte selected binary framing.
    binary_replies = stream[:1] == b"\x00"
    closing = asyncio.Event()
    replies = asyncio.create_task(read_replies(reader, binary_replies, tally, closing))
    try:
        for chunk in mutations.split_stream(stream, rng):
            if writer.transport.is_closing():
                break
            writer.write(chunk)
            tally.bytes_sent += len(chunk)
            await asyncio.wait_for(writer.drain(), 2.0)
            if len(chunk) < 8:
                await asyncio.sleep(0)
        await asyncio.wait([replies], timeout=REPLY_WAIT)
    except (OSError, TimeoutError):
        pass
    finally:
        closing.set()
        if rng.random() < 0.2:
            writer.transport.abort()
        else:
            writer.close()
        await asyncio.wait([replies], timeout=1.0)
        replies.cancel()


def build_stream(rng: random.Random, options: FuzzOptions, tally: FuzzTally) -> bytes:
    """Return every byte one connection sends."""
    if rng.random() < 0.08:
        tally.noise_chunks += 1
        return mutations.random_bytes(rng)
    binary = rng.random() < 0.5
    frames: list[bytes] = []
    if rng.random() < 0.75:
        hello = {"type": "hello", "v": 1, "player": f"fz{rng.randrange(options.players)}", "rid": 0}
        frames.append(mutations.encode(hello, binary))
        tally.frames_valid += 1
    for _ in range(rng.randint(1, 30)):
        frames.append(_one_frame(rng, options, tally, binary))
    return b"".join(frames)


def _one_frame(rng: random.Random, options: FuzzOptions, tally: FuzzTally, binary: bool) -> bytes:
    message = mutations.valid_message(rng, options.players, tally.matches)
    kind = rng.random()
    if kind < 0.45:
        tally.frames_valid += 1
        return mutations.encode(message, binary)
    if kind < 0.75:
        tally.frames_mutated_structure += 1
        try:
            return mutations.encode(mutations.mutate_message(message, rng), binary)
        except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
            return mutations.encode(message, binary)
    if kind < 0.77:
        tally.frames_mutated_structure += 1
        return mutations.deeply_nested(binary)
    if kind < 0.97:
        tally.frames_mutated_bytes += 1
        return mutations.mutate_bytes(mutations.encode(message, binary), rng, binary)
    tally.noise_chunks += 1
    return mutations.random_bytes(rng)


async def read_replies(reader: asyncio.StreamReader, binary: bool, tally: FuzzTally, closing: asyncio.Event) -> None:
    """Decode and count every reply until the connection ends."""
    try:
        while True:
            message = await _read_binary(reader) if binary else await _read_json(reader)
            if message is None:
                if not closing.is_set():
                    tally.closed_by_daemon += 1
                return
            _record(message, tally)
    except ConnectionError:
        if not closing.is_set():
            tally.reset_by_daemon += 1
    except (msgspec.DecodeError, ValueError, asyncio.LimitOverrunError):
        tally.undecodable_replies += 1


async def _read_binary(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        header = await reader.readexactly(mutations.LENGTH_PREFIX)
        length = int.from_bytes(header, "big")
        if not 1 <= length <= MAX_REPLY:
            msg = f"reply frame length {length} is out of range"
            raise ValueError(msg)
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            msg = "the daemon closed the connection in the middle of a reply frame"
            raise ValueError(msg) from None
        return None
    return msgspec.msgpack.decode(payload, type=dict[str, Any])


async def _read_json(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        msg = "the daemon closed the connection in the middle of a reply line"
        raise ValueError(msg)
    return msgspec.json.decode(line, type=dict[str, Any])


def _record(message: dict[str, Any], tally: FuzzTally) -> None:
    kind = str(message.get("type"))
    tally.replies[kind] += 1
    tally.largest_reply = max(tally.largest_reply, len(str(message)))
    if kind == "error":
        tally.errors[str(message.get("code"))] += 1
    elif kind == "kicked":
        tally.kicked[str(message.get("reason"))] += 1
    elif kind == "match_found":
        tally.matches.append(str(message.get("match")))
        del tally.matches[:-RECENT_MATCHES]


def _failures(
    alive: bool,
    exit_code: int | None,
    problems: list[str],
    tally: FuzzTally,
    probe: ProbeReport,
    options: FuzzOptions,
) -> list[str]:
    failures = []
    if not alive:
        failures.append("the daemon died during the run")
    if exit_code != 0:
        failures.append(f"the daemon exited with status {exit_code} after SIGTERM")
    failures += [f"daemon log: {problem}" for problem in problems[:20]]
    if tally.undecodable_replies:
        failures.append(f"{tally.undecodable_replies} replies did not decode")
    failures += probe_failures(probe, options.max_p99_ms)
    return failures


def _report(
    options: FuzzOptions,
    tally: FuzzTally,
    probe: ProbeReport,
    failures: list[str],
    elapsed: float,
    log_lines: int,
    rss: int,
) -> FuzzReport:
    return FuzzReport(
        ok=not failures,
        failures=failures,
        seconds=round(elapsed, 1),
        seed=options.seed,
        connections=tally.connections,
        connect_failures=tally.connect_failures,
        frames={
            "valid": tally.frames_valid,
            "mutated_structure": tally.frames_mutated_structure,
            "mutated_bytes": tally.frames_mutated_bytes,
            "noise": tally.noise_chunks,
        },
        bytes_sent=tally.bytes_sent,
        replies=dict(tally.replies.most_common()),
        errors_by_code=dict(tally.errors.most_common()),
        kicked_by_reason=dict(tally.kicked.most_common()),
        closed_by_daemon=tally.closed_by_daemon,
        reset_by_daemon=tally.reset_by_daemon,
        undecodable_replies=tally.undecodable_replies,
        largest_reply_bytes=tally.largest_reply,
        daemon_log_lines=log_lines,
        daemon_rss_kib=rss,
        probe=probe,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz, in seconds")
    parser.add_argument("--connections", type=int, default=64, help="fuzz connections open at once")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed (default: the time)")
    parser.add_argument("--default-limits", action="store_true", help="keep the daemon's default rate limit")
    parser.add_argument("--max-p99-ms", type=float, default=250.0, help="largest probe p99 latency that passes")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    options = FuzzOptions(
        seconds=args.seconds,
        connections=args.connections,
        seed=args.seed,
        default_limits=args.default_limits,
        max_p99_ms=args.max_p99_ms,
    )
    report = uvloop.run(run_fuzz(options))
    return print_report(report, report.ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
