"""The whole path over real loopback sockets: hello, queue, ready check, match start."""

from __future__ import annotations

import asyncio

import pytest

from lobbyd.client import LobbyClient
from tests.conftest import ClientFactory, RunningServer


async def _queue_ten(connect: ClientFactory, json_lines: bool, prefix: str) -> list[LobbyClient]:
    clients = []
    for i in range(10):
        client = await connect(f"{prefix}{i}", json_lines=json_lines)
        await client.request("join_queue", queue="5v5")
        queued = await client.recv_type("queued")
        assert queued["queue"] == "5v5"
        clients.append(client)
    return clients


@pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])
async def test_full_5v5_flow(connect: ClientFactory, server: RunningServer, json_lines: bool) -> None:
    clients = await _queue_ten(connect, json_lines, "p")

    found = [await c.recv_type("match_found") for c in clients]
    match = found[0]["match"]
    assert {f["match"] for f in found} == {match}
    assert all(f["players"] == 10 for f in found)
    assert all(f["accept_ms"] == 10_000 for f in found)

    for client in clients:
        rid = await client.request("accept", match=match)
        accepted = await client.recv_type("accepted")
        assert accepted == {"type": "accepted", "match": match, "rid": rid}

    starts = [await c.recv_type("match_start") for c in clients]
    teams = starts[0]["teams"]
    assert sorted(p for team in teams for p in team) == sorted(f"p{i}" for i in range(10))
    assert [len(team) for team in teams] == [5, 5]
    for i, start in enumerate(starts):
        assert start["match"] == match
        assert f"p{i}" in teams[start["team"]]

    stored = await server.server.store.load_match(match)
    assert stored is not None
    assert stored.state.value == "started"


async def test_ping_before_hello_rejected(connect: ClientFactory) -> None:
    client = await connect()
    await client.request("ping", rid=7)
    error = await client.recv()
    assert error["type"] == "error"
    assert error["code"] == "not_authenticated"
    assert error["rid"] == 7


async def test_pipelined_replies_keep_order(connect: ClientFactory) -> None:
    client = await connect()
    batch = b"".join(
        client.encode(message)
        for message in (
            {"type": "hello", "v": 1, "player": "pip", "rid": 1},
            {"type": "ping", "rid": 2},
            {"type": "join_queue", "queue": "1v1", "rid": 3},
            {"type": "ping", "rid": 4},
            {"type": "nope", "rid": 5},
            {"type": "leave_queue", "rid": 6},
        )
    )
    client.writer.write(batch)
    replies = [await client.recv() for _ in range(6)]
    assert [r.get("rid") for r in replies] == [1, 2, 3, 4, 5, 6]
    assert [r["type"] for r in replies] == ["welcome", "pong", "queued", "pong", "error", "left_queue"]


@pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])
async def test_replies_from_store_and_matchmaker_keep_order(connect: ClientFactory, json_lines: bool) -> None:
    # get_history reads the store, get_profile goes through the matchmaker and ping is
    # answered at once: three paths whose replies must still leave in request order.
    client = await connect("hist", json_lines=json_lines)
    batch = b"".join(
        client.encode(message)
        for message in (
            {"type": "ping", "rid": 1},
            {"type": "get_profile", "rid": 2},
            {"type": "get_history", "rid": 3},
            {"type": "ping", "rid": 4},
            {"type": "get_profile", "rid": 5},
            {"type": "get_history", "limit": 1, "rid": 6},
            {"type": "ping", "rid": 7},
        )
    )
    client.writer.write(batch)
    replies = [await client.recv() for _ in range(7)]
    assert [r.get("rid") for r in replies] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["type"] for r in replies] == ["pong", "profile", "history", "pong", "profile", "history", "pong"]


async def test_decline_requeues_acceptors(connect: ClientFactory) -> None:
    clients = await _queue_ten(connect, False, "d")
    match = (await clients[0].recv_type("match_found"))["match"]
    for client in clients[1:]:
        await client.recv_type("match_found")
    for client in clients[:5]:
        await client.request("accept", match=match)
        await client.recv_type("accepted")

    rid = await clients[9].request("decline", match=match)
    mine = await clients[9].recv_type("match_cancelled")
    assert mine["rid"] == rid
    assert mine["requeued"] is False
    for i, client in enumerate(clients[:9]):
        cancelled = await client.recv_type("match_cancelled")
        assert cancelled["reason"] == "declined"
        assert cancelled["requeued"] is (i < 5), f"player d{i}"


async def test_json_and_binary_mix(connect: ClientFactory) -> None:
    text = await connect("t1", json_lines=True)
    binary = await connect("b1", json_lines=False)
    for client in (text, binary):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await text.recv_type("match_found"))["match"]
    assert (await binary.recv_type("match_found"))["match"] == match
    for client in (text, binary):
        await client.request("accept", match=match)
    for client in (text, binary):
        start = await client.recv_type("match_start")
        assert start["match"] == match


async def test_bad_first_byte_closes(connect: ClientFactory) -> None:
    client = await connect()
    client.writer.write(b"hello\n")
    client.json_lines = True
    error = await client.recv()
    assert error["code"] == "bad_frame"
    with pytest.raises(Exception, match="closed"):
        await client.recv(timeout=5)


async def test_other_clients_survive_garbage(connect: ClientFactory) -> None:
    good = await connect("steady")
    bad = await connect()
    bad.writer.write(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")
    error = await bad.recv()
    assert error["code"] == "bad_frame"
    rid = await good.request("ping")
    assert await good.recv() == {"type": "pong", "rid": rid}
    await asyncio.sleep(0)
