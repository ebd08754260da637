"""Three lobbyd processes serve one player base through Redis and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from lobbyd.client import ClientError, LobbyClient
from lobbyd.store.postgres import PostgresStore
from tests.cluster import Cluster, join, login, wait_until
from tests.conftest import ClientFactory, ServerFactory
from tests.services import Service
from tests.test_bad_frame_order import expect_replies_then_close, send_burst_then_broken_frame

pytestmark = pytest.mark.slow


async def expect_closed(client: LobbyClient) -> None:
    with pytest.raises(ClientError):
        while True:
            await client.recv(timeout=5)


async def test_5v5_across_three_nodes(cluster: Cluster) -> None:
    nodes = cluster.start_many(3)
    await cluster.wait_for_leader()
    players = [await login(nodes[index % 3], f"p{index}") for index in range(10)]

    for client in players:
        await join(client, "5v5")
    found = [await client.recv_type("match_found") for client in players]
    match = found[0]["match"]
    assert {message["match"] for message in found} == {match}
    assert all(message["players"] == 10 for message in found)
    for client in players:
        await client.request("accept", match=match)
    starts = [await client.recv_type("match_start") for client in players]

    teams = starts[0]["teams"]
    assert sorted(player for team in teams for player in team) == sorted(f"p{index}" for index in range(10))
    assert all(start["teams"] == teams for start in starts)
    for index, start in enumerate(starts):
        assert f"p{index}" in teams[start["team"]]
    store = PostgresStore(cluster.pg_dsn, schema=cluster.schema)
    await store.open()
    try:
        stored = await store.load_match(match)
    finally:
        await store.close()
    assert stored is not None
    assert [list(team) for team in stored.teams] == teams
    assert cluster.tickets() == {}
    assert cluster.checks() == {}
    for client in players:
        await client.close()


async def test_login_elsewhere_kicks_queued_session(cluster: Cluster) -> None:
    nodes = cluster.start_many(3)
    await cluster.wait_for_leader()
    old = await login(nodes[0], "dup")
    await join(old, "5v5")
    assert set(cluster.tickets()) == {"dup"}

    new = await login(nodes[1], "dup")

    assert await old.recv_type("kicked") == {"type": "kicked", "reason": "logged_in_elsewhere"}
    await expect_closed(old)
    await wait_until(lambda: cluster.tickets() == {}, message="the old session's ticket removed")
    rid = await new.request("leave_queue")
    error = await new.recv_type("error")
    assert error["code"] == "not_queued"
    assert error["rid"] == rid
    assert cluster.presence()["dup"].node == "n1"
    await join(new, "1v1")
    for client in (old, new):
        await client.close()


async def test_login_elsewhere_cancels_ready_check(cluster: Cluster) -> None:
    nodes = cluster.start_many(3)
    await cluster.wait_for_leader()
    twin = await login(nodes[0], "twin")
    other = await login(nodes[2], "other")
    for client in (twin, other):
        await join(client, "1v1")
    match = (await other.recv_type("match_found"))["match"]
    await other.request("accept", match=match)
    await other.recv_type("accepted")

    again = await login(nodes[1], "twin")

    assert (await twin.recv_type("kicked"))["reason"] == "logged_in_elsewhere"
    cancelled = await other.recv_type("match_cancelled")
    assert cancelled == {"type": "match_cancelled", "match": match, "reason": "disconnected", "requeued": True}
    await wait_until(lambda: set(cluster.tickets()) == {"other"}, message="only the requeued player queued")
    assert cluster.tickets()["other"].priority is True
    with pytest.raises(TimeoutError):
        await again.recv(timeout=0.3)
    for client in (twin, other, again):
        await client.close()


async def test_replies_keep_request_order(cluster: Cluster) -> None:
    (node,) = cluster.start_many(1)
    await cluster.wait_for_leader()
    client = await login(node, "orderly")
    # One write: a forwarded request, a local reply, an invalid message, another forwarded request.
    burst = [
        {"type": "join_queue", "queue": "5v5", "rid": 1},
        {"type": "ping", "rid": 2},
        {"type": "teleport", "rid": 3},
        {"type": "leave_queue", "rid": 4},
        {"type": "ping", "rid": 5},
    ]
    client.writer.write(b"".join(client.encode(message) for message in burst))

    replies = [await client.recv() for _ in burst]

    assert [reply["rid"] for reply in replies] == [1, 2, 3, 4, 5]
    assert [reply["type"] for reply in replies] == ["queued", "pong", "error", "left_queue", "pong"]
    await client.close()


async def test_broken_frame_closes_after_earlier_replies(cluster: Cluster) -> None:
    (node,) = cluster.start_many(1)
    await cluster.wait_for_leader()
    client = await login(node, "careless")

    send_burst_then_broken_frame(client)

    await expect_replies_then_close(client)
    await client.close()


async def test_full_forward_queue_rejects_busy(cluster: Cluster) -> None:
    # A bound of 1: the first request of the burst waits to be forwarded, and every
    # other one arrives before the node's forwarding task runs.
    (node,) = cluster.start_many(1, max_queued_requests=1)
    await cluster.wait_for_leader()
    client = await login(node, "eager")
    burst = [{"type": "get_profile", "rid": rid} for rid in range(1, 6)]
    client.writer.write(b"".join(client.encode(message) for message in burst))

    replies = [await client.recv() for _ in burst]

    assert [reply["rid"] for reply in replies] == [1, 2, 3, 4, 5]
    assert replies[0]["type"] == "profile"
    assert {(reply["type"], reply.get("code")) for reply in replies[1:]} == {("error", "server_busy")}
    assert all(reply["retry_after_ms"] > 0 for reply in replies[1:])
    await join(client, "5v5")
    await client.close()


async def test_hello_then_join_in_one_write(cluster: Cluster) -> None:
    (node,) = cluster.start_many(1)
    await cluster.wait_for_leader()
    client = await LobbyClient.connect(node.address)
    burst = [{"type": "hello", "v": 1, "player": "quick", "rid": 1}, {"type": "join_queue", "queue": "1v1", "rid": 2}]
    client.writer.write(b"".join(client.encode(message) for message in burst))

    welcome = await client.recv()
    queued = await client.recv()

    assert welcome["type"] == "welcome"
    assert queued == {"type": "queued", "queue": "1v1", "rid": 2}
    await asyncio.sleep(0)
    await client.close()


async def test_leader_forgets_idle_players(
    postgres_service: Service,
    redis_service: Service,
    pg_schema: str,
    redis_prefix: str,
    start_server: ServerFactory,
    connect: ClientFactory,
) -> None:
    # In process, so the leader's memory can be inspected; the schema and prefix
    # fixtures come first so that they outlive the server.
    running = await start_server(
        store="postgres",
        postgres_dsn=postgres_service.url,
        postgres_schema=pg_schema,
        cluster="redis",
        redis_url=redis_service.url,
        redis_prefix=redis_prefix,
        node_id="solo",
        cleanup_interval_ms=100,
        player_idle_ttl_ms=100,
    )
    cluster_node = running.server.cluster
    assert cluster_node is not None
    await wait_until(lambda: cluster_node.term is not None, message="the node leads")
    client = await connect("fleeting")
    await join(client, "1v1")
    term = cluster_node.term
    assert term is not None
    assert "fleeting" in term.lobby.players

    await client.close()

    await wait_until(lambda: "fleeting" not in term.lobby.players, message="the idle player forgotten")
    assert term.lobby.sessions == {}
