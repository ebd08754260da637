"""Bounds on what one abusive client can make the daemon send and log."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from lobbyd.client import LobbyClient
from lobbyd.errors import UnknownType
from lobbyd.protocol.codec import MAX_ECHOED_CHARS, Codec
from lobbyd.protocol.messages import CLIENT_TYPES
from tests.conftest import ClientFactory, ServerFactory


async def test_invalid_messages_rate_limited(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(rate_limit_per_s=5, rate_limit_burst=5)
    calm = await connect("calm")
    noisy = await connect("noisy", json_lines=True)
    # Let the bucket refill after hello.
    await asyncio.sleep(1.2)

    noisy.writer.write(b'{"type":"nonsense"}\n' * 40)
    codes = []
    while True:
        reply = await noisy.recv()
        if reply["type"] == "kicked":
            break
        codes.append(reply["code"])
    assert reply == {"type": "kicked", "reason": "rate_limited"}
    assert codes[:5] == ["unknown_type"] * 5
    assert set(codes[5:]) == {"rate_limited"}
    assert len(codes) < 20

    rid = await calm.request("ping")
    assert await calm.recv() == {"type": "pong", "rid": rid}


@pytest.mark.parametrize("length", [MAX_ECHOED_CHARS, 30_000])
def test_unknown_type_echo_clipped(length: int) -> None:
    codec = Codec()
    codec.receive_data(b'{"type":"' + b"y" * length + b'"}\n')
    with pytest.raises(UnknownType) as caught:
        codec.next_message()
    assert "y" * MAX_ECHOED_CHARS in caught.value.message
    assert "y" * (MAX_ECHOED_CHARS + 1) not in caught.value.message
    # The rest of the message is fixed text and the list of known types.
    known = ", ".join(sorted(CLIENT_TYPES))
    assert len(caught.value.message) < 100 + MAX_ECHOED_CHARS + len(known)


async def test_kick_of_stalled_reader_aborts(start_server: ServerFactory) -> None:
    server = await start_server(
        heartbeat_interval_ms=200,
        heartbeat_timeout_ms=600,
        send_timeout_ms=500,
        rate_limit_per_s=1e6,
        rate_limit_burst=1_000_000,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = server.address.rsplit(":", 1)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    sloth = LobbyClient(reader, writer, json_lines=False)
    try:
        await sloth.hello("sloth")
        session = next(iter(server.server.registry))
        session._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        # Pongs pile up unsent, below the slow-consumer limit, then the client goes silent.
        while session._transport.get_write_buffer_size() < 50_000:
            writer.write(sloth.encode({"type": "ping"}) * 500)
            await writer.drain()
            await asyncio.sleep(0.01)
        assert session.open

        # The heartbeat kick cannot flush, so the close is aborted once send_timeout passes.
        deadline = time.monotonic() + 5
        while len(server.server.registry) or server.server.lobby.sessions:
            assert time.monotonic() < deadline, "the kicked session is still registered"
            await asyncio.sleep(0.05)
        assert session.close_reason == "heartbeat_timeout"
        assert session._transport.get_write_buffer_size() == 0
    finally:
        await sloth.close()
