"""Session rules over real sockets: deadlines, duplicate logins, ready-check endings, races."""

from __future__ import annotations

import asyncio

import pytest

from lobbyd.client import ClientError, LobbyClient
from lobbyd.core.model import Place
from lobbyd.server.session import Session
from tests.conftest import ClientFactory, RunningServer, ServerFactory

# A tick interval the tests never reach, so they can run ticks by hand.
NO_TICKS = {"tick_interval_ms": 60_000}


def session_of(server: RunningServer, player: str) -> Session:
    for session in server.server.registry:
        if session.player == player and session.open:
            return session
    raise AssertionError(f"no open session for {player}")


async def expect_closed(client: LobbyClient) -> None:
    with pytest.raises(ClientError):
        while True:
            await client.recv(timeout=5)


async def drain_for(client: LobbyClient, seconds: float) -> list[dict[str, object]]:
    seen = []
    try:
        while True:
            seen.append(await client.recv(timeout=seconds))
    except TimeoutError:
        return seen


async def queue_pair(
    connect: ClientFactory, first: str, second: str, queue: str = "1v1"
) -> tuple[LobbyClient, LobbyClient]:
    a = await connect(first)
    b = await connect(second)
    for client in (a, b):
        await client.request("join_queue", queue=queue)
        await client.recv_type("queued")
    return a, b


# Deadlines.


async def test_silent_session_kicked(start_server: ServerFactory) -> None:
    server = await start_server(heartbeat_interval_ms=50, heartbeat_timeout_ms=300)
    client = await LobbyClient.connect(server.address)
    await client.hello("quiet")
    kicked = await client.recv(timeout=3)
    assert kicked == {"type": "kicked", "reason": "heartbeat_timeout"}
    await expect_closed(client)
    await client.close()


async def test_pinging_session_stays(start_server: ServerFactory) -> None:
    server = await start_server(heartbeat_interval_ms=50, heartbeat_timeout_ms=300)
    client = await LobbyClient.connect(server.address)
    await client.hello("chatty")
    for _ in range(10):
        await asyncio.sleep(0.1)
        rid = await client.request("ping")
        assert await client.recv() == {"type": "pong", "rid": rid}
    await client.close()


async def test_missing_hello_kicked(start_server: ServerFactory) -> None:
    server = await start_server(hello_timeout_ms=200)
    # A connection that sent nothing has no framing yet, so the server answers in JSON.
    client = await LobbyClient.connect(server.address, json_lines=True)
    kicked = await client.recv(timeout=3)
    assert kicked == {"type": "kicked", "reason": "hello_timeout"}
    await expect_closed(client)
    await client.close()


async def test_trickled_frame_not_activity(start_server: ServerFactory) -> None:
    server = await start_server(heartbeat_interval_ms=50, heartbeat_timeout_ms=400)
    client = await LobbyClient.connect(server.address, json_lines=True)
    await client.hello("slowloris")
    kicked = None
    for byte in b'{"type":"ping","rid":1,"padding":"' + b"x" * 40:
        client.writer.write(bytes([byte]))
        try:
            kicked = await client.recv(timeout=0.05)
            break
        except TimeoutError:
            continue
    assert kicked == {"type": "kicked", "reason": "heartbeat_timeout"}
    await client.close()


# One session per player.


async def test_duplicate_login_while_queued(server: RunningServer, connect: ClientFactory) -> None:
    old = await connect("dup")
    await old.request("join_queue", queue="5v5")
    await old.recv_type("queued")

    new = await connect("dup", json_lines=True)
    assert await old.recv() == {"type": "kicked", "reason": "logged_in_elsewhere"}
    await expect_closed(old)

    rid = await new.request("leave_queue")
    error = await new.recv()
    assert error["code"] == "not_queued"
    assert error["rid"] == rid
    assert server.server.lobby.queues["5v5"] == {}


async def test_duplicate_login_in_ready_check(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server()
    a = await connect("twin", target=server)
    b = await connect("other", target=server)
    for client in (a, b):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await b.recv_type("match_found"))["match"]
    await a.recv_type("match_found")
    await b.request("accept", match=match)
    await b.recv_type("accepted")

    again = await connect("twin", target=server)
    assert (await a.recv_type("kicked"))["reason"] == "logged_in_elsewhere"
    cancelled = await b.recv_type("match_cancelled")
    assert cancelled == {"type": "match_cancelled", "match": match, "reason": "disconnected", "requeued": True}
    lobby = server.server.lobby
    assert lobby.players["twin"].place is Place.IDLE
    assert lobby.players["other"].place is Place.QUEUED
    assert await drain_for(again, 0.2) == []


# Ready-check endings.


async def test_disconnect_in_ready_check(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await queue_pair(connect, "leaver", "stayer")
    match = (await b.recv_type("match_found"))["match"]
    await a.recv_type("match_found")
    await b.request("accept", match=match)
    await b.recv_type("accepted")
    waiting_since = server.server.lobby.checks[match].tickets["stayer"].waiting_since

    await a.close()
    cancelled = await b.recv_type("match_cancelled")
    assert cancelled["reason"] == "disconnected"
    assert cancelled["requeued"] is True
    ticket = server.server.lobby.queues["1v1"]["stayer"]
    assert ticket.priority is True
    assert ticket.waiting_since == waiting_since


async def test_ready_check_expires(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(ready_check_timeout_ms=300)
    a, b = await queue_pair(connect, "quick", "asleep")
    del server
    match = (await a.recv_type("match_found"))["match"]
    await b.recv_type("match_found")
    await a.request("accept", match=match)
    await a.recv_type("accepted")

    first = await a.recv_type("match_cancelled", timeout=3)
    second = await b.recv_type("match_cancelled", timeout=3)
    assert first == {"type": "match_cancelled", "match": match, "reason": "expired", "requeued": True}
    assert second == {"type": "match_cancelled", "match": match, "reason": "expired", "requeued": False}
    rid = await b.request("accept", match=match)
    late = await b.recv_type("error")
    assert late["code"] == "unknown_match"
    assert late["rid"] == rid
    assert "cancelled" in late["message"]


async def test_requeued_player_goes_first(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**NO_TICKS)
    matchmaker = server.server.matchmaker
    veteran, dropper = await queue_pair(connect, "veteran", "dropper")
    matchmaker.tick()
    match = (await veteran.recv_type("match_found"))["match"]
    await veteran.request("accept", match=match)
    await veteran.recv_type("accepted")
    await dropper.request("decline", match=match)
    assert (await veteran.recv_type("match_cancelled"))["requeued"] is True

    newcomers = [await connect(f"new{i}") for i in range(3)]
    for client in newcomers:
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    matchmaker.tick()
    found = await veteran.recv_type("match_found", timeout=3)
    assert found["players"] == 2
    picked = server.server.lobby.checks[found["match"]].players
    assert "veteran" in picked
    assert "new0" in picked


# Races.


async def test_double_join_one_ticket(server: RunningServer, connect: ClientFactory) -> None:
    client = await connect("eager")
    request = {"type": "join_queue", "queue": "5v5"}
    client.writer.write(client.encode({**request, "rid": 1}) + client.encode({**request, "rid": 2}))
    first, second = await client.recv(), await client.recv()
    assert first == {"type": "queued", "queue": "5v5", "rid": 1}
    assert second["code"] == "already_queued"
    assert second["rid"] == 2
    assert list(server.server.lobby.queues["5v5"]) == ["eager"]


async def test_leave_before_tick_wins(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**NO_TICKS)
    stay, leave = await queue_pair(connect, "stay", "go")
    rid = await leave.request("leave_queue", queue="1v1")
    assert await leave.recv() == {"type": "left_queue", "queue": "1v1", "rid": rid}
    server.server.matchmaker.tick()
    assert await drain_for(stay, 0.2) == []
    assert await drain_for(leave, 0.1) == []


async def expect_offer_then_leave(stay: LobbyClient, leave: LobbyClient, rid: int) -> None:
    """Check that ``leave`` got its offer, then its cancellation, then the reply to its leave_queue."""
    found = await leave.recv()
    assert found["type"] == "match_found"
    cancelled = await leave.recv()
    assert cancelled == {"type": "match_cancelled", "match": found["match"], "reason": "declined", "requeued": False}
    assert await leave.recv() == {"type": "left_queue", "queue": "1v1", "rid": rid}
    assert (await stay.recv_type("match_cancelled"))["requeued"] is False


async def test_tick_before_leave_cancels(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**NO_TICKS)
    stay, leave = await queue_pair(connect, "stay2", "go2")
    rid = await leave.request("leave_queue", queue="1v1")
    # The tick runs before the loop reads the leave_queue already on the wire.
    server.server.matchmaker.tick()
    await expect_offer_then_leave(stay, leave, rid)
    lobby = server.server.lobby
    assert lobby.players["go2"].place is Place.IDLE
    assert lobby.players["stay2"].place is Place.IDLE


async def test_sliced_tick_keeps_order(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**NO_TICKS)
    pairs = [await queue_pair(connect, f"slice{index}a", f"slice{index}b") for index in range(3)]
    stay, leave = pairs[-1]
    rid = await leave.request("leave_queue", queue="1v1")
    # A zero-length slice carries out one effect now and leaves the rest, this
    # pair's offer among them, to later turns of the loop, before the leave_queue.
    server.server.matchmaker.tick(0.0)
    await expect_offer_then_leave(stay, leave, rid)
    for first, second in pairs[:-1]:
        assert (await first.recv_type("match_found"))["match"] == (await second.recv_type("match_found"))["match"]


async def test_gone_before_offer_voids(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**NO_TICKS)
    survivor, doomed = await queue_pair(connect, "survivor", "doomed")
    waiting_since = server.server.lobby.queues["1v1"]["survivor"].waiting_since
    session_of(server, "doomed")._transport.abort()
    server.server.matchmaker.tick()

    assert await drain_for(survivor, 0.2) == []
    ticket = server.server.lobby.queues["1v1"]["survivor"]
    assert ticket.priority is True
    assert ticket.waiting_since == waiting_since
    assert server.server.lobby.checks == {}

    late = await connect("late")
    await late.request("join_queue", queue="1v1")
    await late.recv_type("queued")
    server.server.matchmaker.tick()
    found = await survivor.recv_type("match_found", timeout=3)
    assert found["players"] == 2
    del doomed


async def test_double_accept_starts_once(server: RunningServer, connect: ClientFactory) -> None:
    a, b = await queue_pair(connect, "acc1", "acc2")
    match = (await a.recv_type("match_found"))["match"]
    await b.recv_type("match_found")
    for client in (a, b):
        accept = {"type": "accept", "match": match}
        client.writer.write(client.encode({**accept, "rid": 1}) + client.encode({**accept, "rid": 2}))
    for client in (a, b):
        seen = await drain_for(client, 0.4)
        starts = [m for m in seen if m["type"] == "match_start"]
        assert len(starts) == 1, seen
        replies = [m.get("rid") for m in seen if m["type"] in ("accepted", "error")]
        assert replies == [1, 2], seen
    assert await server.server.store.count_matches() == 1
