"""Hosted matches over real loopback sockets: a test game server is a TCP client of the daemon.

The game server registers, receives ``allocate``, acknowledges or refuses it, and
reports a result, while two players go from the queue to ``match_start`` and on to
their new ratings. Each failure path (timeout, refusal, no server, server loss) must
leave the players requeued or idle as protocol.md says.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from openskill.models import PlackettLuce

from lobbyd.client import ClientError, LobbyClient
from lobbyd.core.join_ticket import verify
from lobbyd.core.model import MatchState, Place
from lobbyd.errors import ConfigError
from tests.conftest import ClientFactory, RunningServer, ServerFactory, make_config

SERVER_SECRET = "s" * 32
TICKET_SECRET = "t" * 32
GS_ADDRESS = "127.0.0.1:27015"
HOSTED = {
    "game_server_secret": SERVER_SECRET,
    "join_ticket_secret": TICKET_SECRET,
    "allocate_timeout_ms": 2_000,
}


async def game_server(connect: ClientFactory, server_id: str = "gs1", **fields: Any) -> LobbyClient:
    client = await connect()
    registered = await client.register(server_id, SERVER_SECRET, GS_ADDRESS, ["1v1"], **fields)
    assert registered["server"] == server_id
    assert registered["allocate_ms"] > 0
    return client


async def accepted_pair(connect: ClientFactory, names: tuple[str, str] = ("alice", "bob")) -> list[LobbyClient]:
    """Log in two players, queue them for 1v1 and accept the match they are offered."""
    players = [await connect(name) for name in names]
    for player in players:
        await player.request("join_queue", queue="1v1")
        await player.recv_type("queued")
    match = (await players[0].recv_type("match_found"))["match"]
    await players[1].recv_type("match_found")
    for player in players:
        await player.request("accept", match=match)
        await player.recv_type("accepted")
    return players


async def running_match(connect: ClientFactory) -> tuple[LobbyClient, list[LobbyClient], str]:
    """Return a game server, two players and the id of their acknowledged, running match."""
    gs = await game_server(connect)
    players = await accepted_pair(connect)
    allocate = await gs.recv_type("allocate")
    await gs.request("allocated", match=allocate["match"])
    for player in players:
        await player.recv_type("match_start")
    return gs, players, allocate["match"]


async def assert_silent(client: LobbyClient, *types: str, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await client.recv_type(*types, timeout=seconds)


async def assert_requeued(server: RunningServer, players: list[str], reason: str, clients: list[LobbyClient]) -> None:
    """Check that every player got match_cancelled with ``reason`` and waits in 1v1 with priority."""
    for client in clients:
        cancelled = await client.recv_type("match_cancelled")
        assert cancelled["reason"] == reason
        assert cancelled["requeued"] is True
    lobby = server.server.lobby
    for player in players:
        place = lobby.players[player].place
        # With a free slot again, the requeued players may already be offered a new match.
        assert place in (Place.QUEUED, Place.READY_CHECK), f"{player} is {place}"
        if place is Place.QUEUED:
            assert lobby.queues["1v1"][player].priority is True


# The whole cycle.


async def test_hosted_match_full_cycle(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    gs = await game_server(connect)
    alice, bob = await accepted_pair(connect)

    allocate = await gs.recv_type("allocate")
    match = allocate["match"]
    assert allocate["teams"] in ([["alice"], ["bob"]], [["bob"], ["alice"]])
    assert {p["player"]: p["name"] for p in allocate["players"]} == {"alice": "alice", "bob": "bob"}
    now = time.time()
    for entry in allocate["players"]:
        claims = verify(TICKET_SECRET.encode(), entry["ticket"], now)
        assert (claims.player, claims.match) == (entry["player"], match)
    await assert_silent(alice, "match_start")

    await gs.request("allocated", match=match)
    starts = [await alice.recv_type("match_start"), await bob.recv_type("match_start")]
    for name, start in zip(("alice", "bob"), starts, strict=True):
        assert start["server"] == GS_ADDRESS
        claims = verify(TICKET_SECRET.encode(), start["ticket"], 0.0)
        assert (claims.player, claims.match) == (name, match)
    stored = await server.server.store.load_match(match)
    assert stored is not None
    assert stored.state is MatchState.STARTED
    assert stored.server == GS_ADDRESS

    rid = await alice.request("join_queue", queue="1v1")
    error = await alice.recv_type("error")
    assert (error["code"], error["rid"]) == ("in_match", rid)

    winner_team = starts[0]["team"]
    rid = await gs.request("match_result", match=match, winner=winner_team, scores={"alice": 10.0})
    assert await gs.recv_type("result_applied") == {"type": "result_applied", "match": match, "rid": rid}
    assert (await alice.recv_type("match_ended"))["reason"] == "finished"
    alice_change = await alice.recv_type("rating_changed")
    bob_change = await bob.recv_type("rating_changed")

    model = PlackettLuce()
    (won,), (lost,) = model.rate([[model.rating()], [model.rating()]], ranks=[0.0, 1.0])
    assert (alice_change["mu"], alice_change["sigma"]) == (won.mu, won.sigma)
    assert (bob_change["mu"], bob_change["sigma"]) == (lost.mu, lost.sigma)
    assert (alice_change["games"], alice_change["wins"]) == (1, 1)
    assert alice_change["change"] > 0 > bob_change["change"]

    rid = await gs.request("match_result", match=match, winner=1 - winner_team)
    error = await gs.recv_type("error")
    assert (error["code"], error["rid"]) == ("already_reported", rid)
    await alice.request("get_profile")
    profile = await alice.recv_type("profile")
    assert (profile["mu"], profile["games"], profile["wins"]) == (won.mu, 1, 1)

    await alice.request("get_history", limit=5)
    history = await alice.recv_type("history")
    (entry,) = history["matches"]
    assert (entry["match"], entry["state"], entry["rank"], entry["score"]) == (match, "finished", 0, 10.0)
    assert entry["rating_after"] == alice_change["rating"]

    await alice.request("join_queue", queue="1v1")
    assert (await alice.recv_type("queued", "error"))["type"] == "queued"


@pytest.mark.parametrize(
    ("request_type", "fields"),
    [("allocated", {}), ("allocation_refused", {"reason": "late"}), ("release_player", {"player": "alice"})],
)
async def test_request_after_result_already_reported(
    start_server: ServerFactory, connect: ClientFactory, request_type: str, fields: dict[str, Any]
) -> None:
    await start_server(**HOSTED)
    gs, _, match = await running_match(connect)
    await gs.request("match_result", match=match, winner=0)
    await gs.recv_type("result_applied")

    rid = await gs.request(request_type, match=match, **fields)
    error = await gs.recv_type("error")

    assert (error["code"], error["rid"]) == ("already_reported", rid)
    assert match in error["message"]


async def test_replies_after_a_result_wait_for_it(start_server: ServerFactory, connect: ClientFactory) -> None:
    # result_applied waits for the result's commit; the replies to what the server sent
    # after it must not overtake it.
    await start_server(**HOSTED)
    gs, _, match = await running_match(connect)
    batch = [
        {"type": "match_result", "match": match, "winner": 0, "rid": 101},
        {"type": "match_result", "match": match, "winner": 1, "rid": 102},
        {"type": "ping", "rid": 103},
        {"type": "release_player", "match": match, "player": "alice", "rid": 104},
    ]
    gs.writer.write(b"".join(gs.encode(message) for message in batch))

    replies = [await gs.recv_type("result_applied", "error", "pong") for _ in batch]

    assert [(r["type"], r["rid"]) for r in replies] == [
        ("result_applied", 101),
        ("error", 102),
        ("pong", 103),
        ("error", 104),
    ]
    assert [r["code"] for r in replies if r["type"] == "error"] == ["already_reported", "already_reported"]


async def test_ratings_stored(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    gs, (alice, _), match = await running_match(connect)

    await gs.request("match_result", match=match, ranks=[0, 0])
    await gs.recv_type("result_applied")
    change = await alice.recv_type("rating_changed")
    await server.server.persistence.flush()

    record = await server.server.store.load_player("alice")
    assert record is not None
    assert (record.mu, record.sigma, record.games, record.wins) == (change["mu"], change["sigma"], 1, 0)
    stored = await server.server.store.load_match(match)
    assert stored is not None
    assert stored.state is MatchState.FINISHED
    assert stored.ranks == (0, 0)


# Allocation that fails: every player back in the queue with priority.


async def test_allocation_timeout_requeues(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**{**HOSTED, "allocate_timeout_ms": 300})
    gs = await game_server(connect)
    players = await accepted_pair(connect)
    match = (await gs.recv_type("allocate"))["match"]

    deallocate = await gs.recv_type("deallocate")
    assert deallocate == {"type": "deallocate", "match": match, "reason": "timed_out"}
    await assert_requeued(server, ["alice", "bob"], "allocation_failed", players)
    await gs.request("allocated", match=match)
    assert (await gs.recv_type("error"))["code"] == "match_over"
    assert server.server.hosting_counts is not None
    assert server.server.hosting_counts.timed_out == 1


async def test_refusal_requeues(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    gs = await game_server(connect)
    players = await accepted_pair(connect)
    match = (await gs.recv_type("allocate"))["match"]

    await gs.request("allocation_refused", match=match, reason="maintenance")

    await assert_requeued(server, ["alice", "bob"], "allocation_failed", players)
    assert server.server.hosting_counts is not None
    assert server.server.hosting_counts.refused == 1


async def test_players_wait_for_a_free_server(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    players = [await connect(name) for name in ("alice", "bob")]
    for player in players:
        await player.request("join_queue", queue="1v1")
        await player.recv_type("queued")

    # No server: the queue is held and nobody is offered a match they could not play.
    hosting = server.server.lobby.hosting
    assert hosting is not None
    for _ in range(500):
        if "1v1" in hosting.queues_on_hold:
            break
        await asyncio.sleep(0.01)
    assert "1v1" in hosting.queues_on_hold
    assert server.server.lobby.checks == {}

    gs = await game_server(connect)
    assert (await players[0].recv_type("match_found"))["players"] == 2
    assert "1v1" not in hosting.queues_on_hold
    await gs.close()


async def test_no_server_after_the_last_one_left(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    gs = await game_server(connect)
    players = [await connect(name) for name in ("alice", "bob")]
    for player in players:
        await player.request("join_queue", queue="1v1")
        await player.recv_type("queued")
    match = (await players[0].recv_type("match_found"))["match"]
    await players[1].recv_type("match_found")

    # The only server goes away during the ready check.
    hosting = server.server.lobby.hosting
    assert hosting is not None
    await gs.close()
    for _ in range(500):
        if not hosting.pool.servers:
            break
        await asyncio.sleep(0.01)
    for player in players:
        await player.request("accept", match=match)
        await player.recv_type("accepted")

    await assert_requeued(server, ["alice", "bob"], "no_server", players)
    assert server.server.lobby.checks == {}


async def test_server_loss_while_allocating(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    gs = await game_server(connect)
    players = await accepted_pair(connect)
    await gs.recv_type("allocate")

    await gs.close()

    await assert_requeued(server, ["alice", "bob"], "allocation_failed", players)


# Running matches that end without a result.


async def test_server_loss_abandons_match(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    gs, (alice, bob), match = await running_match(connect)

    await gs.close()

    for player in (alice, bob):
        assert await player.recv_type("match_ended") == {"type": "match_ended", "match": match, "reason": "abandoned"}
    await alice.request("get_profile")
    profile = await alice.recv_type("profile")
    assert (profile["rating"], profile["games"]) == (1500, 0)
    assert server.server.lobby.hosting is not None
    assert "gs1" not in server.server.lobby.hosting.pool.servers
    await alice.request("join_queue", queue="1v1")
    assert (await alice.recv_type("queued", "error"))["type"] == "queued"


async def test_missed_heartbeat_abandons_match(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(**HOSTED, heartbeat_interval_ms=100, heartbeat_timeout_ms=400)
    gs, (alice, bob), match = await running_match(connect)

    async def keep_alive(player: LobbyClient) -> None:
        while True:
            await asyncio.sleep(0.1)
            await player.request("ping")

    pingers = [asyncio.create_task(keep_alive(player)) for player in (alice, bob)]
    try:
        assert (await gs.recv_type("kicked"))["reason"] == "heartbeat_timeout"
        ended = await alice.recv_type("match_ended")
    finally:
        for task in pingers:
            task.cancel()
    assert ended == {"type": "match_ended", "match": match, "reason": "abandoned"}


async def test_release_frees_player(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(**HOSTED)
    gs, (alice, bob), match = await running_match(connect)

    rid = await gs.request("release_player", match=match, player="alice")

    assert await gs.recv_type("player_released") == {
        "type": "player_released",
        "match": match,
        "player": "alice",
        "rid": rid,
    }
    assert (await alice.recv_type("match_ended"))["reason"] == "released"
    await alice.request("join_queue", queue="1v1")
    assert (await alice.recv_type("queued", "error"))["type"] == "queued"
    await bob.request("join_queue", queue="1v1")
    assert (await bob.recv_type("queued", "error"))["code"] == "in_match"


# Reconnects, roles and credentials.


async def test_reconnect_gets_match_start(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(**HOSTED)
    _, (alice, _), match = await running_match(connect)
    await alice.close()

    again = await connect("alice")
    start = await again.recv_type("match_start")

    assert start["match"] == match
    assert start["server"] == GS_ADDRESS
    assert verify(TICKET_SECRET.encode(), start["ticket"], 0.0).player == "alice"


async def test_wrong_secret_closes(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(**HOSTED)
    client = await connect()

    with pytest.raises(ClientError, match="invalid_secret"):
        await client.register("gs1", "x" * 32, GS_ADDRESS, ["1v1"])
    with pytest.raises(ClientError, match="closed"):
        await client.recv(timeout=5)


async def test_registration_off_without_secret(connect: ClientFactory) -> None:
    client = await connect()

    with pytest.raises(ClientError, match="invalid_secret"):
        await client.register("gs1", SERVER_SECRET, GS_ADDRESS, ["1v1"])


async def test_roles_enforced(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(**HOSTED)
    gs = await game_server(connect)
    player = await connect("carol")

    rid = await player.request("allocated", match="m1")
    assert (await player.recv_type("error"))["code"] == "wrong_role"
    await gs.request("join_queue", queue="1v1")
    assert (await gs.recv_type("error"))["code"] == "wrong_role"
    await gs.request("get_profile")
    assert (await gs.recv_type("error"))["code"] == "wrong_role"
    await gs.request("match_result", match="m1", winner=0)
    assert (await gs.recv_type("error"))["code"] == "unknown_match"
    await player.request("ping", rid=rid + 1)
    assert (await player.recv_type("pong"))["rid"] == rid + 1


async def test_register_unknown_queue(start_server: ServerFactory, connect: ClientFactory) -> None:
    await start_server(**HOSTED)
    client = await connect()

    with pytest.raises(ClientError, match="unknown_queue"):
        await client.register("gs1", SERVER_SECRET, GS_ADDRESS, ["ranked"])


# Static servers, and no game servers at all.


async def test_static_pool_starts_at_once(start_server: ServerFactory, connect: ClientFactory) -> None:
    static = [{"address": "10.9.8.7:7777", "capacity": 1, "queues": ["1v1"]}]
    await start_server(static_game_servers=static, join_ticket_secret=TICKET_SECRET)
    alice, _ = await accepted_pair(connect)

    start = await alice.recv_type("match_start")

    assert start["server"] == "10.9.8.7:7777"
    assert verify(TICKET_SECRET.encode(), start["ticket"], 0.0).player == "alice"
    await alice.request("join_queue", queue="1v1")
    assert (await alice.recv_type("queued", "error"))["type"] == "queued"


async def test_without_game_servers_no_server_field(connect: ClientFactory) -> None:
    alice, _ = await accepted_pair(connect)

    start = await alice.recv_type("match_start")

    assert "server" not in start
    assert "ticket" not in start


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"game_server_secret": SERVER_SECRET}, "join_ticket_secret"),
        ({"game_server_secret": "short", "join_ticket_secret": TICKET_SECRET}, "at least 32"),
        (
            {"static_game_servers": [{"address": "nowhere", "capacity": 1, "queues": ["1v1"]}]},
            "static_game_servers[0].address",
        ),
        (
            {
                "join_ticket_secret": TICKET_SECRET,
                "static_game_servers": [{"address": "10.0.0.1:1", "capacity": 1, "queues": ["ranked"]}],
            },
            "static_game_servers[0].queues",
        ),
    ],
)
def test_bad_game_server_config(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config(tmp_path, **overrides)


# Cleanup.


async def test_cleanup_keeps_offline_match_players(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED, player_idle_ttl_ms=1)
    gs, players, match = await running_match(connect)
    for player in players:
        await player.close()
    await asyncio.sleep(0.1)

    server.server.cleanup()
    assert {"alice", "bob"} <= set(server.server.lobby.players)

    await gs.request("match_result", match=match, winner=0)
    await gs.recv_type("result_applied")
    await server.server.persistence.flush()
    for name in ("alice", "bob"):
        record = await server.server.store.load_player(name)
        assert record is not None
        assert record.games == 1


async def test_cleanup_repairs_stale_game_server(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(**HOSTED)
    client = await connect()
    registered = await client.register("gs1", SERVER_SECRET, GS_ADDRESS, ["1v1"])
    session = server.server.registry.get(registered["session"])
    assert session is not None

    # A session that vanished without its Gone would be a bug; cleanup must still repair it.
    server.server.registry.remove(session)
    server.server.cleanup()

    assert server.server.lobby.hosting is not None
    assert "gs1" not in server.server.lobby.hosting.pool.servers
