"""The load generators' side of the wire: framing, lean connections, helpers.

A connection is a bare ``asyncio.Protocol`` that splits incoming bytes into msgpack
maps and passes the messages of each read to ``on_messages``. Replies are decoded into ``Reply``, which
keeps only the fields the generators look at, so decoding stays cheap.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import msgspec

HEADER_BYTES = 4
CONNECT_BATCH = 500
"""Connections opened at once while building a pool: fewer than the listen backlog of 1,024
that lobbyd and both baselines use, so the kernel's listen queue does not overflow."""

_encode = msgspec.msgpack.Encoder().encode


class Reply(msgspec.Struct):
    """A server message, reduced to the fields the generators read; the rest are skipped."""

    type: str
    rid: int | None = None
    match: str | None = None
    code: str | None = None
    reason: str | None = None


_decode_reply = msgspec.msgpack.Decoder(Reply).decode


def frame(message: dict[str, Any]) -> bytes:
    """Encode ``message`` as one binary frame: a 4-byte big-endian length, then msgpack."""
    payload = _encode(message)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def source_address(block: int, index: int) -> str:
    """Return a loopback source address for connection ``index`` of a generator.

    Each of the first 62,500 indexes gets its own address, 127.BLOCK.X.Y, so no
    address runs out of ephemeral ports however many of its connections wait in
    TIME_WAIT from earlier runs, and lobbyd's per-address connection limit never
    applies. Each measurement uses its own ``block`` (1 to 254).
    """
    return f"127.{block}.{index // 250 % 250}.{index % 250 + 1}"


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Connection(asyncio.Protocol):
    """One client connection; subclasses override ``on_messages``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        buffer = self.buffer
        messages = []
        offset = 0
        while len(buffer) - offset >= HEADER_BYTES:
            end = offset + HEADER_BYTES + int.from_bytes(buffer[offset : offset + HEADER_BYTES], "big")
            if end > len(buffer):
                break
            messages.append(_decode_reply(buffer[offset + HEADER_BYTES : end]))
            offset = end
        del buffer[:offset]
        if messages:
            self.on_messages(messages, time.perf_counter())

    def on_messages(self, messages: list[Reply], now: float) -> None:
        """Handle the messages of one read; ``now`` is when the read returned."""


class Greeter(Connection):
    """A connection that sends hello and resolves ``welcomed`` with the welcome time.

    After the welcome, messages go to ``after_welcome``. Any other message before
    the welcome, or a closed connection, fails ``welcomed``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.welcomed: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.kicked: str | None = None

    def hello(self, player: str) -> None:
        self.send(frame({"type": "hello", "v": 1, "player": player}))

    def on_messages(self, messages: list[Reply], now: float) -> None:
        for message in messages:
            if message.type == "kicked":
                self.kicked = message.reason
            if not self.welcomed.done():
                if message.type == "welcome":
                    self.welcomed.set_result(now)
                else:
                    self.welcomed.set_exception(RuntimeError(f"expected welcome, got {message}"))
                continue
            self.after_welcome(message, now)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError("connection closed before welcome"))

    def after_welcome(self, message: Reply, now: float) -> None:
        """Handle one message received after the welcome."""


C = TypeVar("C", bound=Connection)


async def open_connection(factory: Callable[[], C], port: int, source: str) -> C:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(factory, "127.0.0.1", port, local_addr=(source, 0))
    return protocol


async def open_sessions(
    factory: Callable[[], C], port: int, block: int, indexes: Iterable[int], *, hello: bool = True
) -> list[C]:
    """Open one connection per index, in batches, and send hello on each if ``hello``.

    Player ids are ``bench-BLOCK-INDEX``. Raises if any connection fails or gets no
    welcome within 30 s.
    """
    opened: list[C] = []
    pending = list(indexes)
    for start in range(0, len(pending), CONNECT_BATCH):
        batch = pending[start : start + CONNECT_BATCH]
        connections = await asyncio.gather(
            *(open_connection(factory, port, source_address(block, i)) for i in batch)
        )
        if hello:
            for index, connection in zip(batch, connections, strict=True):
                assert isinstance(connection, Greeter)
                connection.hello(f"bench-{block}-{index}")
            async with asyncio.timeout(30):
                await asyncio.gather(*(c.welcomed for c in connections if isinstance(c, Greeter)))
        opened.extend(connections)
    return opened


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (nearest rank) of the sorted, non-empty ``ordered``."""
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def summarize_ms(samples: Sequence[float]) -> dict[str, float | None]:
    """Return count, p50, p99, max and mean of ``samples`` (seconds) in milliseconds.

    With no samples every figure but the count is None, which JSON keeps as null.
    """
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 0.50) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }
