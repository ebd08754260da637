"""Baseline: the textbook asyncio streams server that replies pong to ping.

Same framing as lobbyd: a 4-byte big-endian length, then one msgpack map. Each frame
costs two ``readexactly`` calls, one decode, one write and one ``drain``. The server
runs on uvloop until SIGTERM or SIGINT.

Usage: python bench/baselines/streams_echo.py --listen 127.0.0.1:PORT
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


async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            length = int.from_bytes(await reader.readexactly(4), "big")
            if not 1 <= length <= MAX_FRAME:
                return
            writer.write(reply_to(decode(await reader.readexactly(length))))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError):
        return
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(serve_client, host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
