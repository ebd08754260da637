"""Baseline: an ``asyncio.Protocol`` server that replies pong to ping.

Same framing as lobbyd: a 4-byte big-endian length, then one msgpack map.
``data_received`` appends to a buffer, decodes every complete frame in it and
sends all replies in one write. The server runs on uvloop until SIGTERM or SIGINT.

Usage: python bench/baselines/protocol_echo.py --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import msgspec
import uvloop

MAX_FRAME = 65_536  # the same limit as lobbyd's default max_frame_bytes
decode = msgspec.msgpack.Decoder().decode
encode = msgspec.msgpack.Encoder().encode


def reply_to(message: object) -> bytes:
    """Return the framed reply: pong for ping, echoing rid, else an error."""
    if isinstance(message, dict) and message.get("type") == "ping":
        reply = {"type": "pong"}
    else:
        reply = {"type": "error", "code": "unknown_type", "message": "this baseline answers ping only"}
    if isinstance(message, dict) and "rid" in message:
        reply["rid"] = message["rid"]
    payload = encode(reply)
    return len(payload).to_bytes(4, "big") + payload


class PingProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies = []
        offset = 0

        # Decode every complete frame, then drop the consumed bytes once.
        while len(self.buffer) - offset >= 4:
            length = int.from_bytes(self.buffer[offset : offset + 4], "big")
            if not 1 <= length <= MAX_FRAME:
                self.transport.close()
                return
            end = offset + 4 + length
            if end > len(self.buffer):
                break
            try:
                replies.append(reply_to(decode(self.buffer[offset + 4 : end])))
            except msgspec.DecodeError:
                self.transport.close()
                return
            offset = end
        del self.buffer[:offset]
        if replies:
            self.transport.write(b"".join(replies))


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PingProtocol, host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept clients on")
    args = parser.parse_args()
    listen_host, _, listen_port = args.listen.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(listen_host, int(listen_port)))
