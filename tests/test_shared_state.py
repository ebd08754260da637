"""The ``SharedState`` contract on memory and Redis: lease and fencing, presence, streams, snapshots.

Redis stores no players or matches, so the ``Store`` contract in test_store_contract.py
does not apply to it. The cluster's shared state has this contract of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lobbyd.errors import SharedStateError
from lobbyd.protocol import cluster as c
from lobbyd.store.redis_state import RedisState
from lobbyd.store.shared import Commit, Fenced, MemoryState, SharedState
from tests.services import Service, TcpProxy

LEASE_MS = 300
ALICE = c.PlayerInfo("alice", "Alice", 1500, 1.0, 2.0)


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    shared: SharedState
    if request.param == "memory":
        shared = MemoryState()
    else:
        # Looked up only here, so that the memory state needs no Redis.
        url = request.getfixturevalue("redis_service").url
        shared = RedisState(url, request.getfixturevalue("redis_prefix"), timeout=1.0)
    yield shared
    await shared.close()


def ticket(player: c.PlayerInfo, waiting_since: float = 10.0) -> c.TicketState:
    return c.TicketState(player, "node-a/s1", "1v1", waiting_since, seq=1, priority=False)


async def test_lease_held_by_one_node(state: SharedState) -> None:
    first = await state.acquire_lease("node-a", LEASE_MS)
    second = await state.acquire_lease("node-b", LEASE_MS)

    assert first is not None
    assert second is None
    assert await state.leader() == f"node-a:{first}"


async def test_lease_expires_and_token_grows(state: SharedState) -> None:
    first = await state.acquire_lease("node-a", LEASE_MS)
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)

    second = await state.acquire_lease("node-b", LEASE_MS)

    assert first is not None
    assert second is not None
    assert second > first
    assert await state.renew_lease(f"node-a:{first}", LEASE_MS) is False
    assert await state.renew_lease(f"node-b:{second}", LEASE_MS) is True


async def test_old_leader_commit_fenced(state: SharedState) -> None:
    old = await state.acquire_lease("node-a", LEASE_MS)
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    new = await state.acquire_lease("node-b", LEASE_MS)
    stale = Commit(tickets={"alice": c.ENCODER.encode(ticket(ALICE))}, deliveries={"node-a": [b"x"]})

    with pytest.raises(Fenced):
        await state.commit(f"node-a:{old}", stale)

    snapshot = await state.snapshot()
    assert snapshot.tickets == []
    assert await state.read_inbox("node-a", "0-0", block_ms=10) == []
    await state.commit(f"node-b:{new}", stale)
    assert [t.player.id for t in (await state.snapshot()).tickets] == ["alice"]


async def test_lapsed_lease_fences_commit(state: SharedState) -> None:
    token = await state.acquire_lease("node-a", LEASE_MS)
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)

    with pytest.raises(Fenced):
        await state.commit(f"node-a:{token}", Commit(cursor="5-0"))


async def test_commit_writes_state_and_deliveries(state: SharedState) -> None:
    token = await state.acquire_lease("node-a", LEASE_MS)
    owner = f"node-a:{token}"
    check = c.CheckSnapshot("m1", "1v1", [["alice"], ["bob"]], [ticket(ALICE)], 1.0, 11.0, ["alice"])
    await state.commit(owner, Commit(tickets={"alice": c.ENCODER.encode(ticket(ALICE))}))

    await state.commit(
        owner,
        Commit(
            cursor="7-1",
            ticket_deletes={"alice"},
            checks={"m1": c.ENCODER.encode(check)},
            deliveries={"node-b": [b"first", b"second"]},
        ),
    )

    snapshot = await state.snapshot()
    assert snapshot.tickets == []
    assert snapshot.checks == [check]
    assert snapshot.cursor == "7-1"
    entries = await state.read_inbox("node-b", "0-0", block_ms=10)
    assert [payload for _, payload in entries] == [b"first", b"second"]
    assert await state.last_inbox_id("node-b") == entries[-1][0]


async def test_later_login_keeps_presence(state: SharedState) -> None:
    early = c.Presence("node-a", "s1", 100.0, ALICE)
    late = c.Presence("node-b", "s9", 200.0, ALICE)

    assert await state.claim_presence(early) == (True, None)
    assert await state.claim_presence(late) == (True, early)
    assert await state.claim_presence(early) == (False, late)
    assert await state.presence("alice") == late


async def test_release_presence_of_own_session(state: SharedState) -> None:
    await state.claim_presence(c.Presence("node-b", "s9", 200.0, ALICE))

    await state.release_presence("alice", "node-a", "s1")
    assert await state.presence("alice") is not None

    await state.release_presence("alice", "node-b", "s9")
    assert await state.presence("alice") is None


async def test_commit_deletes_presence_of_session(state: SharedState) -> None:
    token = await state.acquire_lease("node-a", LEASE_MS)
    await state.claim_presence(c.Presence("node-b", "s9", 200.0, ALICE))

    await state.commit(f"node-a:{token}", Commit(presence_deletes=[("alice", "node-b/s1")]))
    assert await state.presence("alice") is not None

    await state.commit(f"node-a:{token}", Commit(presence_deletes=[("alice", "node-b/s9")]))
    assert await state.presence("alice") is None


async def test_requests_read_in_order(state: SharedState) -> None:
    await state.forward([b"one", b"two", b"three"])

    first = await state.read_requests("0-0", block_ms=10, count=2)
    rest = await state.read_requests(first[-1][0], block_ms=10)

    assert [payload for _, payload in first] == [b"one", b"two"]
    assert [payload for _, payload in rest] == [b"three"]


async def test_live_nodes_expire(state: SharedState) -> None:
    await state.refresh_node("node-a", 200)
    await state.refresh_node("node-b", 5000)

    assert await state.live_nodes(["node-a", "node-b", "node-c"]) == {"node-a", "node-b"}
    await asyncio.sleep(0.3)
    assert await state.live_nodes(["node-a", "node-b"]) == {"node-b"}


async def test_unreachable_memory_raises() -> None:
    shared = MemoryState()
    shared.reachable = False

    with pytest.raises(SharedStateError):
        await shared.acquire_lease("node-a", LEASE_MS)
    with pytest.raises(SharedStateError):
        await shared.read_inbox("node-a", "0-0", block_ms=10)


async def test_blocked_read_wakes_on_entry(state: SharedState) -> None:
    reader = asyncio.create_task(state.read_requests("0-0", block_ms=2000))
    await asyncio.sleep(0.05)

    await state.forward([b"late"])

    entries = await asyncio.wait_for(reader, 1.0)
    assert [payload for _, payload in entries] == [b"late"]


async def test_unreachable_redis_raises(redis_service: Service, redis_prefix: str) -> None:
    host, port = redis_service.url.removeprefix("redis://").split("/")[0].split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    shared = RedisState(f"redis://{proxy.address}/0", redis_prefix, timeout=0.5)
    try:
        await shared.ping()
        await proxy.cut()

        with pytest.raises(SharedStateError):
            await shared.ping()
        with pytest.raises(SharedStateError):
            await shared.read_inbox("node-a", "0-0", block_ms=100)

        await proxy.restore()
        await shared.ping()
    finally:
        await shared.close()
        await proxy.close()
