"""A broken frame closes the connection only after the replies to the requests before it."""

from __future__ import annotations

import pytest

from lobbyd.client import ClientError, LobbyClient
from tests.conftest import ClientFactory

# Broken frames (protocol.md "broken frame"): each gets error bad_frame, then the close.
BROKEN_JSON = b"{bad json}\n"
# A length prefix of 5 and a payload that is not msgpack.
BROKEN_MSGPACK = b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1"


async def expect_closed(client: LobbyClient) -> None:
    with pytest.raises(ClientError):
        while True:
            await client.recv(timeout=5)


def send_burst_then_broken_frame(client: LobbyClient) -> None:
    """Send, in one write: ping, get_profile, get_history, ping and a broken frame."""
    burst = [
        {"type": "ping", "rid": 11},
        {"type": "get_profile", "rid": 12},
        {"type": "get_history", "rid": 13},
        {"type": "ping", "rid": 14},
    ]
    broken = BROKEN_JSON if client.json_lines else BROKEN_MSGPACK
    client.writer.write(b"".join(client.encode(message) for message in burst) + broken)


async def expect_replies_then_close(client: LobbyClient) -> None:
    replies = [await client.recv() for _ in range(5)]

    assert [(reply["type"], reply.get("rid")) for reply in replies[:4]] == [
        ("pong", 11),
        ("profile", 12),
        ("history", 13),
        ("pong", 14),
    ]
    assert replies[4]["type"] == "error"
    assert replies[4]["code"] == "bad_frame"
    await expect_closed(client)


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "msgpack"])
async def test_replies_before_broken_frame_arrive(connect: ClientFactory, json_lines: bool) -> None:
    client = await connect("orderly", json_lines=json_lines)

    send_burst_then_broken_frame(client)

    await expect_replies_then_close(client)


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "msgpack"])
async def test_profile_before_broken_frame_arrives(connect: ClientFactory, json_lines: bool) -> None:
    # A request the matchmaker replies to, then one the session replies to, then the broken frame.
    client = await connect("hasty", json_lines=json_lines)
    burst = [{"type": "get_profile", "rid": 2}, {"type": "ping", "rid": 1}]
    broken = BROKEN_JSON if json_lines else BROKEN_MSGPACK
    client.writer.write(b"".join(client.encode(message) for message in burst) + broken)

    replies = [await client.recv() for _ in range(3)]

    assert [(reply["type"], reply.get("rid")) for reply in replies] == [("profile", 2), ("pong", 1), ("error", None)]
    assert replies[2]["code"] == "bad_frame"
    await expect_closed(client)
