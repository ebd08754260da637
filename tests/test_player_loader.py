"""Simultaneous logins share one store query."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lobbyd.client import LobbyClient
from lobbyd.core.model import PlayerRecord
from lobbyd.server.player_loader import PlayerLoader
from lobbyd.store.sqlite import SqliteStore
from tests.conftest import ServerFactory


async def test_concurrent_loads_batched(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "players.sqlite3")
    await store.open()
    await store.save([PlayerRecord("known", "Known", 1700, 1.0, 2.0)], [])
    loader = PlayerLoader(store)

    results = await asyncio.gather(*(loader.load(name) for name in ["known", "new1", "known", "new2"]))
    await store.close()

    assert results[0] == PlayerRecord("known", "Known", 1700, 1.0, 2.0)
    assert results[1] is None
    assert results[2] == results[0]
    assert results[3] is None
    assert loader.batches == 1


async def test_login_storm_few_queries(start_server: ServerFactory) -> None:
    server = await start_server()
    clients = await asyncio.gather(*(LobbyClient.connect(server.address) for _ in range(60)))
    try:
        # Every session is accepted and every hello on the wire before the server
        # reads any of them, as in a storm.
        await asyncio.sleep(0.2)
        for i, client in enumerate(clients):
            client.writer.write(client.encode({"type": "hello", "v": 1, "player": f"storm{i}"}))
        await asyncio.sleep(0.2)
        welcomes = await asyncio.gather(*(client.recv() for client in clients))
        assert [w["player"] for w in welcomes] == [f"storm{i}" for i in range(60)]
        assert server.server.players.batches < 10
    finally:
        for client in clients:
            await client.close()
