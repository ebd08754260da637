"""Optional request fields sent as null over real sockets: null means absent, in both framings."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import pytest

from lobbyd.client import LobbyClient
from lobbyd.protocol import messages as m
from tests.conftest import ClientFactory, ServerFactory
from tests.test_codec import REQUIRED_SAMPLES
from tests.test_game_servers import GS_ADDRESS, HOSTED, SERVER_SECRET

framings = pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])


def with_nulls(cls: type[m.ClientMessage]) -> dict[str, Any]:
    """Return a map of ``cls`` with sample required fields and every optional field null."""
    value: dict[str, Any] = {"type": cls.__struct_config__.tag}
    for field in msgspec.structs.fields(cls):
        value[field.encode_name] = REQUIRED_SAMPLES[field.encode_name] if field.required else None
    return value


async def replies_until_pong(client: LobbyClient, rid: int) -> list[dict[str, Any]]:
    """Send a ping with ``rid``; return what arrives before its pong."""
    await client.request("ping", rid=rid)
    received = []
    while True:
        message = await client.recv()
        if message == {"type": "pong", "rid": rid}:
            return received
        received.append(message)


@framings
async def test_every_null_field_accepted(connect: ClientFactory, json_lines: bool) -> None:
    # Each request goes alone, followed by a ping, so any invalid_field it causes
    # arrives before that pong. Replies such as unknown_match or wrong_role show
    # that the request decoded, which is all this test checks.
    client = await connect(json_lines=json_lines)
    hello = with_nulls(m.Hello)
    await client.send(hello)
    assert (await client.recv())["type"] == "welcome"

    for index, cls in enumerate(typing.get_args(m.ClientMessage)):
        message = with_nulls(cls)
        await client.send(message)

        replies = await replies_until_pong(client, 1000 + index)

        invalid = [reply for reply in replies if reply.get("code") in {"invalid_field", "bad_frame"}]
        assert invalid == [], message


@framings
async def test_null_history_limit_returns_history(connect: ClientFactory, json_lines: bool) -> None:
    client = await connect(json_lines=json_lines)
    await client.hello("alice")

    await client.send({"type": "get_history", "limit": None, "rid": 5})
    reply = await client.recv()

    assert reply["type"] == "history"
    assert reply["rid"] == 5


@framings
async def test_null_region_registers(start_server: ServerFactory, connect: ClientFactory, json_lines: bool) -> None:
    await start_server(**HOSTED)
    client = await connect(json_lines=json_lines)
    register = {
        "type": "register",
        "v": 1,
        "server": "gs1",
        "secret": SERVER_SECRET,
        "address": GS_ADDRESS,
        "capacity": 2,
        "queues": ["1v1"],
        "region": None,
        "rid": 6,
    }

    await client.send(register)
    reply = await client.recv()

    assert reply["type"] == "registered"
    assert reply["rid"] == 6


@framings
async def test_control_character_name_rejected(connect: ClientFactory, json_lines: bool) -> None:
    client = await connect(json_lines=json_lines)

    await client.request("hello", v=1, player="alice", name="al\x00ice", rid=3)
    error = await client.recv()
    welcome = await client.hello("alice", name="alice")

    assert (error["type"], error["code"], error["rid"]) == ("error", "invalid_field", 3)
    assert "U+0000" in error["message"]
    assert welcome["player"] == "alice"
