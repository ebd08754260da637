"""A match start reaches every player even when one of them has stopped reading."""

from __future__ import annotations

import asyncio
import socket
import time

from tests.conftest import ClientFactory, ServerFactory

SMALL_BUFFER = 4096


async def test_stalled_reader_delays_nobody(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(
        send_timeout_ms=600, max_outgoing_bytes=4 * 1024 * 1024, rate_limit_per_s=1e6, rate_limit_burst=1_000_000
    )
    fast = await connect("fast")
    stalled = await connect("stalled")
    stalled_session = next(s for s in server.server.registry if s.player == "stalled")
    # Small kernel buffers on both ends, so the server's own buffer fills quickly.
    stalled_session._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    stalled.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)

    # The stalled player queues first, so its match_start is the first one written.
    for client in (stalled, fast):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await fast.recv_type("match_found"))["match"]
    await stalled.recv_type("match_found")
    await fast.request("accept", match=match)
    await fast.recv_type("accepted")

    # Pongs the stalled client never reads pile up past the transport's high-water mark.
    stalled.writer.write(stalled.encode({"type": "ping"}) * 20_000)
    await stalled.writer.drain()
    deadline = time.monotonic() + 5
    while stalled_session._transport.get_write_buffer_size() < 128 * 1024:
        assert time.monotonic() < deadline, "pongs did not back up"
        await asyncio.sleep(0.01)

    began = time.monotonic()
    await stalled.request("accept", match=match)
    start = await fast.recv_type("match_start", timeout=3)
    assert start["match"] == match
    assert time.monotonic() - began < 0.5

    await asyncio.sleep(1.0)
    assert not stalled_session.open
    assert stalled_session.close_reason == "send_timeout"
    assert await server.server.store.load_match(match) is not None
