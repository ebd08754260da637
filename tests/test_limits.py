"""Each limit refuses what is over it while every other session keeps working."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from structlog.testing import capture_logs

from lobbyd.client import ClientError, LobbyClient
from tests.conftest import RunningServer, ServerFactory


async def ping_ok(client: LobbyClient) -> None:
    rid = await client.request("ping")
    assert await client.recv() == {"type": "pong", "rid": rid}


async def logged_in(server: RunningServer, player: str, **kwargs: object) -> LobbyClient:
    client = await LobbyClient.connect(server.address, **kwargs)  # type: ignore[arg-type]
    await client.hello(player)
    return client


async def expect_closed(client: LobbyClient) -> None:
    with pytest.raises(ClientError):
        while True:
            await client.recv(timeout=5)


@pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])
async def test_connection_limit_refuses(start_server: ServerFactory, json_lines: bool) -> None:
    server = await start_server(max_connections=3, server_full_retry_ms=1234)
    members = [await logged_in(server, f"m{i}") for i in range(3)]

    extra = await LobbyClient.connect(server.address, json_lines=json_lines)
    await extra.request("hello", v=1, player="late")
    error = await extra.recv()
    assert error["code"] == "server_full"
    assert error["retry_after_ms"] == 1234
    await expect_closed(extra)

    for client in members:
        await ping_ok(client)
    await members[0].close()
    await asyncio.sleep(0.05)
    again = await logged_in(server, "late")
    await ping_ok(again)
    for client in [*members, extra, again]:
        await client.close()


async def test_address_limit_refuses(start_server: ServerFactory) -> None:
    server = await start_server(max_connections_per_address=2)
    members = [await logged_in(server, f"a{i}") for i in range(2)]
    extra = await LobbyClient.connect(server.address)
    await extra.request("hello", v=1, player="third")
    assert (await extra.recv())["code"] == "server_full"

    host, port = server.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.2", 0))
    other_address = LobbyClient(reader, writer, json_lines=False)
    await other_address.hello("elsewhere")
    for client in [*members, other_address]:
        await ping_ok(client)
        await client.close()
    await extra.close()


async def test_refusal_logs_peer_as_host_port(start_server: ServerFactory) -> None:
    server = await start_server(max_connections=1)
    member = await logged_in(server, "m0")

    with capture_logs() as captured:
        extra = await LobbyClient.connect(server.address)
        await extra.request("hello", v=1, player="late")
        await extra.recv()
    refused = [entry for entry in captured if entry["event"] == "connection_refused"]

    local_host, local_port = extra.writer.get_extra_info("sockname")[:2]
    assert len(refused) == 1
    assert refused[0]["peer"] == f"{local_host}:{local_port}"
    await extra.close()
    await member.close()


async def test_rate_limit_then_kick(start_server: ServerFactory) -> None:
    server = await start_server(rate_limit_per_s=5, rate_limit_burst=5)
    calm = await logged_in(server, "calm")
    noisy = await logged_in(server, "noisy")
    await asyncio.sleep(1.2)

    noisy.writer.write(b"".join(noisy.encode({"type": "ping", "rid": i}) for i in range(8)))
    replies = [await noisy.recv() for _ in range(8)]
    assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"] * 3
    assert all(r["code"] == "rate_limited" for r in replies[5:])
    assert [r["rid"] for r in replies] == list(range(8))
    assert replies[5]["retry_after_ms"] > 0
    await ping_ok(calm)

    noisy.writer.write(b"".join(noisy.encode({"type": "ping"}) for _ in range(40)))
    kicked = await noisy.recv_type("kicked")
    assert kicked["reason"] == "rate_limited"
    await expect_closed(noisy)
    await ping_ok(calm)
    await calm.close()
    await noisy.close()


async def test_unfinished_frame_kicked(start_server: ServerFactory) -> None:
    server = await start_server(frame_timeout_ms=300)
    client = await logged_in(server, "stuck")
    began = time.monotonic()
    client.writer.write(b"\x00\x00\x00\x20\x81")
    kicked = await client.recv(timeout=3)
    assert kicked == {"type": "kicked", "reason": "frame_timeout"}
    assert time.monotonic() - began < 2
    await expect_closed(client)
    await client.close()


@pytest.mark.parametrize("partial", [b"\x00", b"\x00\x00", b"\x00\x00\x00"], ids=["1 byte", "2 bytes", "3 bytes"])
async def test_partial_length_prefix_kicked(start_server: ServerFactory, partial: bytes) -> None:
    # The frame timeout runs from a frame's first byte, so half a length prefix counts.
    server = await start_server(frame_timeout_ms=300)
    client = await logged_in(server, "stuck")

    client.writer.write(partial)
    kicked = await client.recv(timeout=5)

    assert kicked == {"type": "kicked", "reason": "frame_timeout"}
    await expect_closed(client)
    await client.close()


@pytest.mark.parametrize(
    ("hello_ms", "frame_ms", "reason"), [(300, 5000, "hello_timeout"), (5000, 300, "frame_timeout")]
)
async def test_partial_frame_before_hello(
    start_server: ServerFactory, hello_ms: int, frame_ms: int, reason: str
) -> None:
    # Before hello both deadlines run, and the one that comes first closes the connection.
    server = await start_server(hello_timeout_ms=hello_ms, frame_timeout_ms=frame_ms)
    client = await LobbyClient.connect(server.address)

    client.writer.write(b"\x00\x00")
    kicked = await client.recv(timeout=5)

    assert kicked == {"type": "kicked", "reason": reason}
    await client.close()


async def test_slow_consumer_dropped(start_server: ServerFactory) -> None:
    limit = 64 * 1024
    server = await start_server(max_outgoing_bytes=limit, rate_limit_per_s=1e6, rate_limit_burst=1_000_000)
    healthy = await logged_in(server, "healthy")
    sloth = await logged_in(server, "sloth")
    session = next(s for s in server.server.registry if s.player == "sloth")
    session._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sloth.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    peak = 0
    deadline = time.monotonic() + 10
    while session.open:
        assert time.monotonic() < deadline, "the stalled session was never dropped"
        sloth.writer.write(sloth.encode({"type": "ping"}) * 2000)
        await sloth.writer.drain()
        peak = max(peak, session._transport.get_write_buffer_size())
        await ping_ok(healthy)

    assert session.close_reason == "slow_consumer"
    # One batch of pongs may land on top of the bound before the check runs.
    assert peak <= limit + 2000 * 32
    await ping_ok(healthy)
    await healthy.close()
    await sloth.close()


async def test_full_request_queue_rejects_busy(start_server: ServerFactory) -> None:
    server = await start_server(max_queued_requests=4)
    flooder = await logged_in(server, "flooder")
    other = await logged_in(server, "other")

    # Twelve requests in one write: the session hands each to the matchmaker before the
    # matchmaker runs again, so the queue fills at 4 and the other 8 are rejected.
    count = 12
    frames = b"".join(flooder.encode({"type": "leave_queue", "rid": rid}) for rid in range(1, count + 1))
    flooder.writer.write(frames)
    await flooder.writer.drain()
    replies = [await flooder.recv() for _ in range(count)]

    assert [reply["rid"] for reply in replies] == list(range(1, count + 1))
    assert [reply["code"] for reply in replies[:4]] == ["not_queued"] * 4
    assert [reply["code"] for reply in replies[4:]] == ["server_busy"] * 8
    for reply in replies[4:]:
        assert reply["retry_after_ms"] > 0
        assert "retry" in reply["message"]

    # The daemon keeps serving both sessions once the queue has drained.
    await ping_ok(flooder)
    await other.request("join_queue", queue="1v1")
    assert (await other.recv_type("queued"))["queue"] == "1v1"
    await flooder.request("join_queue", queue="1v1")
    assert (await flooder.recv_type("queued"))["queue"] == "1v1"
    assert server.server.matchmaker.requests.empty()
    await flooder.close()
    await other.close()
