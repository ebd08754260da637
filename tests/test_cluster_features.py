"""Role and latency queues, dodge penalties and parties on a cluster of three lobbyd processes.

Each feature works across nodes as on one daemon, and survives the leader's death,
because the new leader rebuilds it from Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from lobbyd.client import LobbyClient
from lobbyd.core.model import PlayerRecord
from lobbyd.store.postgres import PostgresStore
from tests.cluster import Cluster, login, wait_until
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.slow

QUEUES = """
dodge_lockouts_s = [600]

[queues.1v1]
team_count = 2
team_size = 1

[queues.pair]
team_count = 2
team_size = 2
window_start = 1000.0
party_sizes = [1, 2]

[queues.pair_b]
team_count = 2
team_size = 2
party_sizes = [1, 2]

[queues.duo]
team_count = 2
team_size = 2
window_start = 1000.0
roles = ["tank", "healer"]
latency_steps = [{after_s = 0, limit = 80}]
party_sizes = [1, 2]
"""

# Long enough that a ready check outlives a failover on a busy machine.
READY_MS = 30_000


@pytest.fixture
async def opened() -> Any:
    """Collect the clients a test opens and close them afterwards, even when it fails."""
    clients: list[LobbyClient] = []
    yield clients
    for client in clients:
        await client.close()


async def track(opened: list[LobbyClient], daemon: DaemonProcess, player: str) -> LobbyClient:
    client = await login(daemon, player)
    opened.append(client)
    return client


async def start_three(cluster: Cluster, **settings: Any) -> tuple[DaemonProcess, list[DaemonProcess]]:
    """Start three nodes; return the leader's node and the two others."""
    nodes = cluster.start_many(3, config=QUEUES, ready_check_timeout_ms=READY_MS, **settings)
    leader, _ = await cluster.wait_for_leader()
    dead = cluster.nodes[leader]
    return dead, [daemon for daemon in nodes if daemon is not dead]


async def stored_player(cluster: Cluster, player: str) -> PlayerRecord | None:
    store = PostgresStore(cluster.pg_dsn, schema=cluster.schema)
    await store.open()
    try:
        return await store.load_player(player)
    finally:
        await store.close()


async def expect_locked(client: LobbyClient) -> dict[str, Any]:
    rid = await client.request("join_queue", queue="1v1")
    error = await client.recv_type("queued", "error", timeout=15)
    assert error["type"] == "error", error
    assert error["code"] == "queue_locked"
    assert error["rid"] == rid
    assert 0 < error["retry_after_ms"] <= 600_000
    return error


async def kill_leader(cluster: Cluster, leader: DaemonProcess) -> None:
    old = next(node for node, daemon in cluster.nodes.items() if daemon is leader)
    leader.process.send_signal(signal.SIGKILL)
    await cluster.wait_for_leader(timeout=20, not_node=old)


async def test_roles_region_survive_leader_kill(cluster: Cluster, opened: list[LobbyClient]) -> None:
    dead, survivors = await start_three(cluster)
    prefs = {"ann": ["tank"], "bob": ["healer"], "cat": ["tank"], "dan": ["healer"]}
    clients = {player: await track(opened, survivors[index % 2], player) for index, player in enumerate(prefs)}
    latency = {"eu": 30.0, "us": 60.0}
    for player, client in clients.items():
        rid = await client.request("join_queue", queue="duo", roles=prefs[player], latency=latency)
        assert await client.recv_type("queued", "error") == {"type": "queued", "queue": "duo", "rid": rid}
    found = {player: await client.recv_type("match_found", timeout=15) for player, client in clients.items()}
    match = found["ann"]["match"]
    assert {message["region"] for message in found.values()} == {"eu"}
    assert {player: message["role"] for player, message in found.items()} == {
        player: roles[0] for player, roles in prefs.items()
    }
    for player in ("ann", "bob"):
        await clients[player].request("accept", match=match)
        await clients[player].recv_type("accepted")
    # A fifth player waits in the queue with a latency that fits no one else's region.
    eve = await track(opened, survivors[0], "eve")
    await eve.request("join_queue", queue="duo", roles=["healer", "tank"], latency={"us": 20.0})
    await eve.recv_type("queued")
    await wait_until(lambda: "eve" in cluster.tickets(), message="eve's ticket in Redis")

    await kill_leader(cluster, dead)

    await wait_until(lambda: cluster.leader() is not None, timeout=20, message="a new leader")
    ticket = cluster.tickets()["eve"]
    assert ticket.role_prefs == [["healer", "tank"]]
    assert ticket.latency == {"us": 20.0}
    check = cluster.checks()[match]
    assert check.region == "eu"
    assert {player: given.role for player, given in check.roles.items()} == {
        player: roles[0] for player, roles in prefs.items()
    }
    assert sorted(check.accepted) == ["ann", "bob"]
    for player in ("cat", "dan"):
        await clients[player].request("accept", match=match)
    starts = {player: await client.recv_type("match_start", timeout=15) for player, client in clients.items()}
    for player, start in starts.items():
        assert start["match"] == match
        assert start["region"] == "eu"
        assert start["role"] == prefs[player][0]


async def test_decline_locks_out_on_other_node(cluster: Cluster, opened: list[LobbyClient]) -> None:
    dead, (node_a, node_b) = await start_three(cluster)
    dodger = await track(opened, node_a, "dodger")
    partner = await track(opened, node_b, "partner")
    for client in (dodger, partner):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await dodger.recv_type("match_found", timeout=15))["match"]
    await dodger.request("decline", match=match)
    cancelled = await dodger.recv_type("match_cancelled")
    assert cancelled["penalty_level"] == 1
    assert cancelled["lockout_ms"] > 590_000

    # The leader's flusher stores the penalty in PostgreSQL.
    async def penalised() -> bool:
        record = await stored_player(cluster, "dodger")
        return record is not None and record.penalty_level == 1

    for _ in range(100):
        if await penalised():
            break
        await asyncio.sleep(0.1)
    record = await stored_player(cluster, "dodger")
    assert record is not None
    assert record.penalty_level == 1
    assert record.locked_until > time.time() + 590

    # The same player on another node is locked out, by the leader's memory.
    await dodger.close()
    moved = await track(opened, node_b, "dodger")
    await expect_locked(moved)

    await kill_leader(cluster, dead)

    # A new leader rebuilds the penalty of a connected player and of a new login.
    await expect_locked(moved)
    await moved.close()
    back = await track(opened, node_a, "dodger")
    await expect_locked(back)
    # Logins on other nodes wrote the player again without undoing the penalty.
    record = await stored_player(cluster, "dodger")
    assert record is not None
    assert record.penalty_level == 1
    # The partner, who did not decline, is free to queue.
    rid = await partner.request("join_queue", queue="1v1")
    assert await partner.recv_type("queued", "error", timeout=15) == {"type": "queued", "queue": "1v1", "rid": rid}


async def form_party(leader: LobbyClient, member: LobbyClient, member_id: str) -> str:
    """Make a party of ``leader`` and ``member``, who are on different nodes; return its id."""
    await leader.request("create_party")
    party = (await leader.recv_type("party"))["party"]
    await leader.request("invite_to_party", player=member_id)
    assert (await leader.recv_type("party"))["reason"] == "invited"
    invite = await member.recv_type("party_invite", timeout=15)
    assert invite["party"] == party
    await member.request("join_party", party=party)
    for client in (leader, member):
        roster = await client.recv_type("party", timeout=15)
        assert roster["reason"] == "joined"
        assert roster["members"][1] == member_id
    return party


async def queue_party(leader: LobbyClient, member: LobbyClient, queue: str = "pair") -> None:
    await leader.request("join_queue", queue=queue)
    for client in (leader, member):
        assert (await client.recv_type("queued", timeout=15))["queue"] == queue


async def play_pair(clients: dict[str, LobbyClient]) -> list[list[str]]:
    """Accept the match the four ``clients`` were found for; return its teams."""
    found = {player: await client.recv_type("match_found", timeout=15) for player, client in clients.items()}
    match = found[next(iter(found))]["match"]
    assert {message["match"] for message in found.values()} == {match}
    for client in clients.values():
        await client.request("accept", match=match)
    starts = [await client.recv_type("match_start", timeout=15) for client in clients.values()]
    teams: list[list[str]] = starts[0]["teams"]
    return teams


async def test_party_across_nodes(cluster: Cluster, opened: list[LobbyClient]) -> None:
    _, (node_a, node_b) = await start_three(cluster)
    lea = await track(opened, node_a, "lea")
    mem = await track(opened, node_b, "mem")
    party = await form_party(lea, mem, "mem")
    await wait_until(lambda: "party" in str(cluster.redis_hash("parties")), message="the party in Redis")
    assert list(cluster.redis_hash("parties")) == [party]

    # A member leaving the queued party takes the ticket out and tells both.
    await queue_party(lea, mem)
    await wait_until(lambda: cluster.tickets().get("lea") is not None, message="the party ticket in Redis")
    assert cluster.tickets()["lea"].members == ["lea", "mem"]
    await mem.request("leave_party")
    for client in (lea, mem):
        left = await client.recv_type("left_queue", timeout=15)
        assert left["reason"] == "party_changed"
    assert (await mem.recv_type("party_left"))["reason"] == "left"
    assert (await lea.recv_type("party"))["members"] == ["lea"]
    await wait_until(lambda: cluster.tickets() == {}, message="the party ticket removed")

    # Together again, the party plays on one team against two solo players.
    await lea.request("invite_to_party", player="mem")
    await lea.recv_type("party")
    await mem.recv_type("party_invite", timeout=15)
    await mem.request("join_party", party=party)
    for client in (lea, mem):
        await client.recv_type("party", timeout=15)
    await queue_party(lea, mem)
    solos = {player: await track(opened, node, player) for player, node in (("s1", node_a), ("s2", node_b))}
    for client in solos.values():
        await client.request("join_queue", queue="pair")
        await client.recv_type("queued")
    teams = await play_pair({"lea": lea, "mem": mem, **solos})
    assert sorted(["lea", "mem"]) in [sorted(team) for team in teams]


async def test_party_survives_leader_kill(cluster: Cluster, opened: list[LobbyClient]) -> None:
    dead, (node_a, node_b) = await start_three(cluster)
    lea = await track(opened, node_a, "lea")
    mem = await track(opened, node_b, "mem")
    party = await form_party(lea, mem, "mem")
    await queue_party(lea, mem)
    # A second party, in a queue of its own, whose member is on the leader's node, which dies.
    boss = await track(opened, node_a, "boss")
    doomed = await track(opened, dead, "doomed")
    await form_party(boss, doomed, "doomed")
    await queue_party(boss, doomed, "pair_b")
    await wait_until(lambda: set(cluster.tickets()) == {"lea", "boss"}, message="both party tickets in Redis")

    await kill_leader(cluster, dead)

    # The dead node's member is disconnected: their party's ticket ends.
    left = await boss.recv_type("left_queue", timeout=20)
    assert left["reason"] == "party_changed"
    roster = await boss.recv_type("party", timeout=15)
    assert roster["members"] == ["boss"]
    assert roster["reason"] == "disconnected"
    await wait_until(lambda: set(cluster.tickets()) == {"lea"}, timeout=15, message="only lea's party queued")
    # The other party is still queued whole, and plays on one team.
    solos = {player: await track(opened, node, player) for player, node in (("s1", node_a), ("s2", node_b))}
    for client in solos.values():
        await client.request("join_queue", queue="pair")
        await client.recv_type("queued", timeout=15)
    teams = await play_pair({"lea": lea, "mem": mem, **solos})
    assert sorted(["lea", "mem"]) in [sorted(team) for team in teams]
    await lea.request("leave_party")
    assert (await mem.recv_type("party", timeout=15)) == {
        "type": "party", "party": party, "leader": "mem", "members": ["mem"], "invited": [], "reason": "left"
    }
