"""A started match is announced only once committed: retries, and the cancel after the last one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from lobbyd.client import LobbyClient
from lobbyd.core.model import MatchRecord, PlayerRecord
from lobbyd.errors import StoreError
from lobbyd.server import matchmaker as matchmaker_module
from lobbyd.server.app import Server
from lobbyd.store.sqlite import SqliteStore
from tests.conftest import make_config


class FailingMatchSaves(SqliteStore):
    """A real SQLite store whose first ``failures`` saves that carry a match fail."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    async def save(self, players: Sequence[PlayerRecord], matches: Sequence[MatchRecord]) -> None:
        if matches and self.failures > 0:
            self.failures -= 1
            raise StoreError(f"sqlite save on {self.path} failed: injected failure")
        await super().save(players, matches)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matchmaker_module, "COMMIT_RETRY_DELAYS", (0.01, 0.01, 0.01))


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, store: SqliteStore) -> AsyncIterator[Server]:
    server = Server(make_config(tmp_path), store=store)
    await server.start()
    task = asyncio.create_task(server.serve())
    try:
        yield server
    finally:
        server.request_stop()
        await asyncio.wait_for(task, 10)


async def play_until_start(server: Server) -> tuple[str, list[dict[str, object]]]:
    """Queue two players for 1v1, accept the match, and return its id and what each got next."""
    assert server.address is not None
    host, port = server.address
    clients = [await LobbyClient.connect(f"{host}:{port}") for _ in range(2)]
    try:
        for index, client in enumerate(clients):
            await client.hello(f"commit{index}")
            await client.request("join_queue", queue="1v1")
            await client.recv_type("queued")
        match = str((await clients[0].recv_type("match_found"))["match"])
        await clients[1].recv_type("match_found")
        for client in clients:
            await client.request("accept", match=match)
        outcomes = []
        for client in clients:
            await client.recv_type("accepted")
            outcomes.append(await client.recv())
        return match, outcomes
    finally:
        for client in clients:
            await client.close()


async def test_commit_retried_then_started(tmp_path: Path, quick_retries: None) -> None:
    store = FailingMatchSaves(tmp_path / "lobbyd.db", failures=2)
    async with serve(tmp_path, store) as server:
        match, outcomes = await play_until_start(server)

        assert [outcome["type"] for outcome in outcomes] == ["match_start", "match_start"]
        assert store.failures == 0
        assert await store.load_match(match) is not None


async def test_commit_failing_cancels_match(tmp_path: Path, quick_retries: None) -> None:
    store = FailingMatchSaves(tmp_path / "lobbyd.db", failures=4)
    async with serve(tmp_path, store) as server:
        match, outcomes = await play_until_start(server)

        for outcome in outcomes:
            assert outcome == {"type": "match_cancelled", "match": match, "reason": "storage_failed", "requeued": False}
        assert server.metrics.matches_cancelled["storage_failed"] == 1
        assert await store.load_match(match) is None
