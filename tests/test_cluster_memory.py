"""Three cluster nodes in one process, sharing a ``MemoryState`` and a ``MemoryStore``.

These tests need neither Redis nor PostgreSQL, so they run everywhere, fast, and let
a test look into every node and the leader's lobby.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lobbyd.client import LobbyClient
from lobbyd.server.app import Server
from lobbyd.store.memory import MemoryStore
from lobbyd.store.shared import MemoryState
from tests.cluster import join, wait_until
from tests.conftest import make_config


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[Server]]:
    state, store = MemoryState(), MemoryStore()
    servers: list[Server] = []
    tasks: list[asyncio.Task[None]] = []
    for index in range(3):
        # The store setting only passes the cluster check; the shared memory store is used.
        # Each node in this one process needs its own admin socket.
        config = make_config(
            tmp_path,
            store="postgres",
            cluster="redis",
            node_id=f"m{index}",
            leader_lease_ms=500,
            node_ttl_ms=500,
            admin_socket=str(tmp_path / f"admin-{index}.sock"),
        )
        server = Server(config, store=store, shared_state=state)
        await server.start()
        servers.append(server)
        tasks.append(asyncio.create_task(server.serve()))
    await wait_until(lambda: any(s.cluster is not None and s.cluster.term for s in servers), message="a leader")
    yield servers
    for server in servers:
        server.request_stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def connect(server: Server, player: str) -> LobbyClient:
    assert server.address is not None
    client = await LobbyClient.connect(f"{server.address[0]}:{server.address[1]}")
    await client.hello(player)
    return client


async def test_match_across_memory_nodes(nodes: list[Server]) -> None:
    clients = [await connect(nodes[index], f"p{index}") for index in (0, 1)]
    for client in clients:
        await join(client, "1v1")
    found = [await client.recv_type("match_found") for client in clients]
    for client, message in zip(clients, found, strict=True):
        await client.request("accept", match=message["match"])

    starts = [await client.recv_type("match_start") for client in clients]

    assert starts[0]["teams"] == starts[1]["teams"]
    assert {player for team in starts[0]["teams"] for player in team} == {"p0", "p1"}
    for client in clients:
        await client.close()


async def test_duplicate_login_across_memory_nodes(nodes: list[Server]) -> None:
    old = await connect(nodes[0], "twin")
    await join(old, "5v5")

    new = await connect(nodes[2], "twin")

    assert await old.recv_type("kicked") == {"type": "kicked", "reason": "logged_in_elsewhere"}
    leader = next(s.cluster.term for s in nodes if s.cluster is not None and s.cluster.term is not None)
    await wait_until(lambda: "twin" not in leader.lobby.queues["5v5"], message="the old ticket removed")
    for client in (old, new):
        await client.close()
