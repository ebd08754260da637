"""Game servers in a cluster of lobbyd processes sharing Redis and PostgreSQL.

A game server connects to one node, and players are spread over the others. The
leader allocates the match to the server, and every player gets ``match_start`` with
the server's address and a join ticket. The result moves ratings exactly once in
PostgreSQL, whichever node it is reported to, and across a leader failover before
the report or while the result is being stored. A node that dies or loses Redis
takes its game server with it: the server's running match is abandoned.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis

from lobbyd.client import ClientError, LobbyClient
from lobbyd.core.join_ticket import verify
from lobbyd.core.model import MatchState, PlayerRecord
from lobbyd.store.postgres import PostgresStore
from tests.cluster import Cluster, join, login, wait_until
from tests.daemon import DaemonProcess
from tests.services import ProcessProxy, host_port, with_host_port

pytestmark = pytest.mark.slow

SERVER_SECRET = "game-server-secret-" + "s" * 16
TICKET_SECRET = "join-ticket-secret-" + "t" * 16
GS_ADDRESS = "127.0.0.1:27015"
# Generous, so that a loaded machine does not time the allocation out.
HOSTED = {
    "game_server_secret": SERVER_SECRET,
    "join_ticket_secret": TICKET_SECRET,
    "allocate_timeout_ms": 20_000,
}
PLAYERS = [f"p{index}" for index in range(10)]
# Long enough for a failover plus a sweep of the dead node on a busy 2-CPU machine.
SLOW_S = 20.0


@pytest.fixture
async def opened() -> AsyncIterator[list[LobbyClient]]:
    """Collect the clients a test opens and close them afterwards, even when it fails."""
    clients: list[LobbyClient] = []
    yield clients
    for client in clients:
        await client.close()


async def game_server(opened: list[LobbyClient], daemon: DaemonProcess, server_id: str = "gs1") -> LobbyClient:
    client = await LobbyClient.connect(daemon.address)
    opened.append(client)
    registered = await client.register(server_id, SERVER_SECRET, GS_ADDRESS, ["5v5"], capacity=2, timeout=SLOW_S)
    assert registered["server"] == server_id
    return client


async def running_match(
    cluster: Cluster, opened: list[LobbyClient], gs: LobbyClient, nodes: list[DaemonProcess]
) -> tuple[str, dict[str, LobbyClient], dict[str, dict[str, Any]]]:
    """Queue ten players spread over ``nodes``, accept, acknowledge the allocation.

    Returns the match id, the clients and the ``match_start`` of each player.
    """
    clients: dict[str, LobbyClient] = {}
    for index, player in enumerate(PLAYERS):
        clients[player] = await login(nodes[index % len(nodes)], player)
        opened.append(clients[player])
    for client in clients.values():
        await join(client, "5v5")
    found = [await client.recv_type("match_found", timeout=SLOW_S) for client in clients.values()]
    match = found[0]["match"]
    assert {message["match"] for message in found} == {match}
    for client in clients.values():
        await client.request("accept", match=match)

    allocate = await gs.recv_type("allocate", timeout=SLOW_S)
    assert allocate["match"] == match
    assert sorted(entry["player"] for entry in allocate["players"]) == PLAYERS
    now = time.time()
    for entry in allocate["players"]:
        claims = verify(TICKET_SECRET.encode(), entry["ticket"], now)
        assert (claims.player, claims.match) == (entry["player"], match)
    rid = await gs.request("allocated", match=match)

    starts = {player: await client.recv_type("match_start", timeout=SLOW_S) for player, client in clients.items()}
    for player, start in starts.items():
        assert start["match"] == match
        assert start["server"] == GS_ADDRESS
        claims = verify(TICKET_SECRET.encode(), start["ticket"], now)
        assert (claims.player, claims.match) == (player, match)
    # The acknowledgement itself has no reply; a ping behind it proves it was applied.
    await gs.request("ping")
    assert (await gs.recv_type("pong", "error", timeout=SLOW_S))["type"] == "pong", rid
    return match, clients, starts


async def stored_players(cluster: Cluster) -> dict[str, PlayerRecord]:
    store = PostgresStore(cluster.pg_dsn, schema=cluster.schema)
    await store.open()
    try:
        return await store.load_players(PLAYERS)
    finally:
        await store.close()


async def stored_match_state(cluster: Cluster, match: str) -> MatchState | None:
    store = PostgresStore(cluster.pg_dsn, schema=cluster.schema)
    await store.open()
    try:
        record = await store.load_match(match)
    finally:
        await store.close()
    return record.state if record is not None else None


async def result_rows(cluster: Cluster, match: str) -> int:
    connection = await asyncpg.connect(cluster.pg_dsn, server_settings={"search_path": cluster.schema})
    try:
        return int(await connection.fetchval("SELECT count(*) FROM results WHERE match_id = $1", match))
    finally:
        await connection.close()


async def wait_for_players_stored(cluster: Cluster, games: int) -> dict[str, PlayerRecord]:
    """Wait until every player's stored record counts ``games`` rated games; return the records."""
    found: dict[str, PlayerRecord] = {}
    deadline = time.monotonic() + SLOW_S
    while time.monotonic() < deadline:
        found = await stored_players(cluster)
        if len(found) == len(PLAYERS) and all(record.games == games for record in found.values()):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"players not stored with {games} games: {found}")


def winners(starts: dict[str, dict[str, Any]]) -> set[str]:
    return {player for player, start in starts.items() if start["team"] == 0}


def check_rated(records: dict[str, PlayerRecord], won: set[str]) -> None:
    for player, record in records.items():
        assert record.games == 1, player
        assert record.mu is not None, player
        assert record.wins == (1 if player in won else 0), player
        assert (record.rating > 1500) == (player in won), player


def secret_in_redis(cluster: Cluster, secret: str) -> bool:
    """Return whether any value or stream entry under the cluster's prefix contains ``secret``."""
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        for key in client.scan_iter(f"{cluster.prefix}:*"):
            kind = client.type(key)
            values: list[bytes] = []
            if kind == b"hash":
                values = list(client.hgetall(key).values())
            elif kind == b"stream":
                values = [fields[b"d"] for _, fields in client.xrange(key)]
            elif kind == b"string":
                values = [client.get(key) or b""]
            if any(secret.encode() in value for value in values):
                return True
        return False
    finally:
        client.close()


async def test_hosted_5v5_across_nodes(cluster: Cluster, opened: list[LobbyClient]) -> None:
    nodes = cluster.start_many(3, **HOSTED)
    await cluster.wait_for_leader()
    gs = await game_server(opened, nodes[0])
    assert not secret_in_redis(cluster, SERVER_SECRET)

    match, clients, starts = await running_match(cluster, opened, gs, nodes)
    assert await stored_match_state(cluster, match) is MatchState.STARTED
    rid = await gs.request("match_result", match=match, winner=0)
    assert await gs.recv_type("result_applied", "error", timeout=SLOW_S) == {
        "type": "result_applied",
        "match": match,
        "rid": rid,
    }

    changes = {}
    for player, client in clients.items():
        assert (await client.recv_type("match_ended", timeout=SLOW_S))["reason"] == "finished"
        changes[player] = await client.recv_type("rating_changed", timeout=SLOW_S)
    won = winners(starts)
    records = await wait_for_players_stored(cluster, games=1)
    check_rated(records, won)
    for player, change in changes.items():
        assert (records[player].mu, records[player].rating) == (change["mu"], change["rating"]), player
    assert await result_rows(cluster, match) == 1
    assert await stored_match_state(cluster, match) is MatchState.FINISHED

    # p1 is on node 1; its profile comes from the leader, wherever that is.
    await clients["p1"].request("get_profile")
    profile = await clients["p1"].recv_type("profile", "error", timeout=SLOW_S)
    assert (profile["type"], profile["games"], profile["mu"]) == ("profile", 1, changes["p1"]["mu"])

    # The server reconnects to another node and reports the same result again.
    again = await game_server(opened, nodes[2])
    assert (await gs.recv_type("kicked", timeout=SLOW_S))["reason"] == "logged_in_elsewhere"
    rid = await again.request("match_result", match=match, winner=1)
    error = await again.recv_type("error", "result_applied", timeout=SLOW_S)
    assert (error["type"], error["code"], error["rid"]) == ("error", "already_reported", rid)
    assert await stored_players(cluster) == records
    assert await result_rows(cluster, match) == 1

    # Released, the players queue again.
    await join(clients["p0"], "5v5")


async def test_leader_killed_before_result(cluster: Cluster, opened: list[LobbyClient]) -> None:
    started = cluster.start_many(3, **HOSTED)
    old_leader, old_token = await cluster.wait_for_leader()
    dead = cluster.nodes[old_leader]
    survivors = [daemon for daemon in started if daemon is not dead]
    gs = await game_server(opened, survivors[0])
    # Players on all three nodes, the leader's too.
    match, clients, starts = await running_match(cluster, opened, gs, [dead, *survivors])
    on_dead = {PLAYERS[index] for index in range(0, 10, 3)}

    dead.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    new_leader, new_token = await cluster.wait_for_leader(not_node=old_leader, timeout=SLOW_S)
    assert new_token > old_token

    rid = await gs.request("match_result", match=match, winner=0)
    reply = await gs.recv_type("result_applied", "error", timeout=SLOW_S)
    assert reply == {"type": "result_applied", "match": match, "rid": rid}
    print(f"result applied {(time.monotonic() - killed_at) * 1000:.0f} ms after the leader was killed")
    for player, client in clients.items():
        if player in on_dead:
            continue
        assert (await client.recv_type("match_ended", timeout=SLOW_S))["reason"] == "finished"
        change = await client.recv_type("rating_changed", timeout=SLOW_S)
        assert change["games"] == 1, player
    records = await wait_for_players_stored(cluster, games=1)
    check_rated(records, winners(starts))
    assert await result_rows(cluster, match) == 1
    (elected,) = [event for event in cluster.events(new_leader, "leader_elected") if event["token"] == new_token]
    assert (elected["game_servers"], elected["hosted_matches"]) == (1, 1)

    rid = await gs.request("match_result", match=match, winner=0)
    error = await gs.recv_type("error", "result_applied", timeout=SLOW_S)
    assert (error["type"], error["code"], error["rid"]) == ("error", "already_reported", rid)
    assert await stored_players(cluster) == records

    # A player of the dead node logs in again elsewhere and gets the new rating.
    back = await login(survivors[1], "p0")
    opened.append(back)
    await back.request("get_profile")
    profile = await back.recv_type("profile", "error", timeout=SLOW_S)
    assert (profile["type"], profile["games"]) == ("profile", 1)


async def test_leader_killed_while_storing_result(cluster: Cluster, opened: list[LobbyClient]) -> None:
    proxy = ProcessProxy(host_port(cluster.pg_dsn))
    try:
        await run_result_failover(cluster, opened, proxy)
    finally:
        proxy.close()


async def run_result_failover(cluster: Cluster, opened: list[LobbyClient], proxy: ProcessProxy) -> None:
    # Every node reaches PostgreSQL through the proxy, so the result cannot be stored.
    started = cluster.start_many(3, postgres_dsn=with_host_port(cluster.pg_dsn, proxy.address), **HOSTED)
    old_leader, _ = await cluster.wait_for_leader()
    dead = cluster.nodes[old_leader]
    survivors = [daemon for daemon in started if daemon is not dead]
    gs = await game_server(opened, survivors[0])
    match, clients, starts = await running_match(cluster, opened, gs, survivors)

    proxy.cut()
    rid = await gs.request("match_result", match=match, winner=0)
    await wait_until(lambda: match in cluster.redis_hash("finishing"), timeout=SLOW_S, message="the result recorded")
    dead.process.send_signal(signal.SIGKILL)
    new_leader, new_token = await cluster.wait_for_leader(not_node=old_leader, timeout=SLOW_S)
    proxy.restore()

    reply = await gs.recv_type("result_applied", "error", timeout=SLOW_S)
    assert reply == {"type": "result_applied", "match": match, "rid": rid}
    for player, client in clients.items():
        assert (await client.recv_type("match_ended", timeout=SLOW_S))["reason"] == "finished", player
        assert (await client.recv_type("rating_changed", timeout=SLOW_S))["games"] == 1, player
    records = await wait_for_players_stored(cluster, games=1)
    check_rated(records, winners(starts))
    assert await result_rows(cluster, match) == 1
    assert cluster.redis_hash("finishing") == {}
    (elected,) = [event for event in cluster.events(new_leader, "leader_elected") if event["token"] == new_token]
    assert elected["finishing"] == 1


async def test_game_server_node_dies(cluster: Cluster, opened: list[LobbyClient]) -> None:
    started = cluster.start_many(3, **HOSTED)
    leader, _ = await cluster.wait_for_leader()
    others = [daemon for daemon in started if daemon is not cluster.nodes[leader]]
    doomed, kept = others
    gs = await game_server(opened, doomed)
    # Players only on the nodes that live, so that each of them hears the outcome.
    match, clients, _ = await running_match(cluster, opened, gs, [cluster.nodes[leader], kept])

    doomed.process.send_signal(signal.SIGKILL)

    for player, client in clients.items():
        ended = await client.recv_type("match_ended", timeout=SLOW_S)
        assert ended == {"type": "match_ended", "match": match, "reason": "abandoned"}, player
    await wait_until(
        lambda: not cluster.redis_hash("servers"), timeout=SLOW_S, message="the lost server removed from Redis"
    )
    assert cluster.redis_hash("hosted") == {}
    await wait_until_stored(cluster, match, MatchState.ABANDONED)
    assert all(record.games == 0 for record in (await stored_players(cluster)).values())
    await join(clients["p0"], "5v5")


async def test_game_server_node_cut_from_redis(cluster: Cluster, opened: list[LobbyClient]) -> None:
    proxy = ProcessProxy(host_port(cluster.redis_url))
    try:
        await run_cut_node(cluster, opened, proxy)
    finally:
        proxy.close()


async def run_cut_node(cluster: Cluster, opened: list[LobbyClient], proxy: ProcessProxy) -> None:
    # n0 leads and has the players; n1 reaches Redis through the proxy and has the server.
    leading = cluster.start("n0", **HOSTED)
    assert (await cluster.wait_for_leader())[0] == "n0"
    through_proxy = with_host_port(cluster.redis_url, proxy.address)
    cut = cluster.start("n1", redis_url=through_proxy, redis_timeout_ms=500, **HOSTED)
    gs = await game_server(opened, cut)
    match, clients, _ = await running_match(cluster, opened, gs, [leading])

    proxy.cut()

    for player, client in clients.items():
        ended = await client.recv_type("match_ended", timeout=SLOW_S)
        assert ended == {"type": "match_ended", "match": match, "reason": "abandoned"}, player
    late = await LobbyClient.connect(cut.address)
    opened.append(late)
    fields = {"v": 1, "server": "gs2", "secret": SERVER_SECRET, "address": GS_ADDRESS, "capacity": 1, "queues": ["5v5"]}
    rid = await late.request("register", **fields)
    error = await late.recv(timeout=SLOW_S)
    assert (error["type"], error["code"], error["rid"]) == ("error", "unavailable", rid)
    assert error["retry_after_ms"] > 0
    with pytest.raises(ClientError):
        await late.recv(timeout=SLOW_S)

    proxy.restore()

    assert (await gs.recv_type("kicked", timeout=SLOW_S))["reason"] == "unavailable"
    again = await game_server(opened, cut)
    assert again is not gs
    await wait_until_stored(cluster, match, MatchState.ABANDONED)


async def wait_until_stored(cluster: Cluster, match: str, state: MatchState) -> None:
    deadline = time.monotonic() + SLOW_S
    found = None
    while time.monotonic() < deadline:
        found = await stored_match_state(cluster, match)
        if found is state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"match {match} stored as {found}, expected {state}")


async def test_result_reply_keeps_request_order(cluster: Cluster, opened: list[LobbyClient]) -> None:
    # result_applied waits for PostgreSQL; the replies to what the server sent after
    # the result must not overtake it, on the leader's node or another one.
    nodes = cluster.start_many(2, **HOSTED)
    leader, _ = await cluster.wait_for_leader()
    follower = next(daemon for name, daemon in cluster.nodes.items() if name != leader)
    gs = await game_server(opened, follower)
    match, _, _ = await running_match(cluster, opened, gs, nodes)
    batch = [
        {"type": "match_result", "match": match, "winner": 0, "rid": 201},
        {"type": "ping", "rid": 202},
        {"type": "match_result", "match": match, "winner": 1, "rid": 203},
        {"type": "ping", "rid": 204},
    ]
    gs.writer.write(b"".join(gs.encode(message) for message in batch))

    replies = [await gs.recv_type("result_applied", "error", "pong", timeout=SLOW_S) for _ in batch]

    assert [(reply["type"], reply["rid"]) for reply in replies] == [
        ("result_applied", 201),
        ("pong", 202),
        ("error", 203),
        ("pong", 204),
    ]
    assert replies[2]["code"] == "already_reported"
