"""The write-behind persistence against a real SQLite file: commits and the flusher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lobbyd.core.model import MatchRecord, MatchState, PlayerRecord
from lobbyd.server.persistence import Persistence
from lobbyd.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "lobbyd.sqlite3")
    await store.open()
    yield store
    await store.close()


def finished_match(now: float) -> MatchRecord:
    return MatchRecord(
        id="m1",
        queue="1v1",
        teams=(("alice",), ("bob",)),
        ratings=((1500,), (1500,)),
        state=MatchState.FINISHED,
        created_at=now,
        ended_at=now,
        ranks=(0, 1),
        ratings_after=((1600,), (1400,)),
    )


def rated(player: str, rating: int, now: float) -> PlayerRecord:
    return PlayerRecord(player, player, rating, now, now, mu=25.0, sigma=8.0, games=1)


async def test_flusher_leaves_pinned_players_to_commit(store: SqliteStore) -> None:
    persistence = Persistence(store, interval=1.0)
    now = time.time()
    persistence.mark_player(rated("alice", 1600, now))
    persistence.mark_player(rated("bob", 1400, now))
    persistence.mark_player(rated("carol", 1500, now))

    # The commit is queued but has not taken the lock yet when the flusher runs.
    commit = asyncio.create_task(persistence.commit_match(finished_match(now), ["alice", "bob"]))
    await asyncio.sleep(0)
    written = await persistence.flush()
    # Only carol: alice's and bob's new ratings go in the match's own transaction.
    assert written == 1

    await commit
    assert persistence.dirty == 0
    stored = await store.load_players(["alice", "bob", "carol"])
    assert {player: record.rating for player, record in stored.items()} == {"alice": 1600, "bob": 1400, "carol": 1500}
    match = await store.load_match("m1")
    assert match is not None
    assert match.state is MatchState.FINISHED


async def test_flusher_writes_players_after_commit(store: SqliteStore) -> None:
    persistence = Persistence(store, interval=1.0)
    now = time.time()
    await persistence.commit_match(finished_match(now), ["alice", "bob"])

    # Once the commit is done, nothing stays pinned.
    persistence.mark_player(rated("alice", 1600, now))
    assert await persistence.flush() == 1
    stored = await store.load_player("alice")
    assert stored is not None
    assert stored.rating == 1600


async def test_flush_waits_for_pinned_commit(store: SqliteStore) -> None:
    persistence = Persistence(store, interval=1.0)
    now = time.time()
    persistence.mark_player(rated("alice", 1600, now))
    commit = asyncio.create_task(persistence.commit_match(finished_match(now), ["alice", "bob"]))
    await asyncio.sleep(0)

    # Only a pinned record is dirty: flush returns once the commit has written it.
    assert await persistence.flush() == 0
    assert persistence.dirty == 0
    stored = await store.load_player("alice")
    assert stored is not None
    assert stored.rating == 1600
    await commit
