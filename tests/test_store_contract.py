"""Tests of the ``Store`` contract on every backend, and of what only SQLite or PostgreSQL does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lobbyd.core.model import HistoryEntry, MatchRecord, MatchState, PlayerRecord
from lobbyd.errors import StoreError
from lobbyd.store import sqlite as sqlite_module
from lobbyd.store.base import Store
from lobbyd.store.memory import MemoryStore
from lobbyd.store.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from lobbyd.store.postgres import PenaltyRecord, PostgresStore, ResultRecord
from lobbyd.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore
from tests.services import Service, free_port

ALICE = PlayerRecord(
    id="p-alice",
    name="Alice 🎮",
    rating=1523,
    first_seen=1_700_000_000.125,
    last_seen=1_700_003_600.1,
)
BOB = PlayerRecord(
    id="p-bob",
    name="Bob",
    rating=-7,
    first_seen=0.1,
    last_seen=1e-9,
)

STARTED = MatchRecord(
    id="m-1",
    queue="duel-2v2",
    teams=(("p-alice", "p-carol"), ("p-bob", "p-dave")),
    ratings=((1523, 1490), (1501, 1777)),
    state=MatchState.STARTED,
    created_at=1_700_000_100.5,
    ended_at=1_700_000_104.25,
    reason=None,
    waits=(12.5, 0.1, 3.0, 61.03125),
)
CANCELLED = MatchRecord(
    id="m-2",
    queue="duel-1v1",
    teams=(("p-alice",), ("p-bob",)),
    ratings=((1523,), (1501,)),
    state=MatchState.CANCELLED,
    created_at=1_700_000_200.0,
    ended_at=1_700_000_210.0,
    reason="declined",
    waits=(4.0, 9.5),
)
CAROL_RATED = PlayerRecord("p-carol", "Carol", 1612, 5.0, 9.0, mu=28.25, sigma=4.5, games=12, wins=7)
FINISHED = MatchRecord(
    id="m-3",
    queue="duel-2v2",
    teams=(("p-alice", "p-carol"), ("p-bob", "p-dave")),
    ratings=((1523, 1490), (1501, 1777)),
    state=MatchState.FINISHED,
    created_at=1_700_000_300.0,
    ended_at=1_700_000_900.5,
    waits=(1.0, 2.0, 3.0, 4.0),
    server="10.0.0.7:7777",
    ranks=(1, 0),
    scores=((3.0, None), (10.5, 0.0)),
    ratings_after=((1500, 1470), (1530, 1790)),
)
ABANDONED = MatchRecord(
    id="m-4",
    queue="duel-1v1",
    teams=(("p-alice",), ("p-dave",)),
    ratings=((1500,), (1790,)),
    state=MatchState.ABANDONED,
    created_at=1_700_000_950.0,
    ended_at=1_700_001_000.0,
    reason="server_lost",
    server="10.0.0.7:7777",
)


# Redis stores no players or matches, so it is no Store; the cluster's shared state in
# Redis and in memory runs its own contract suite in test_shared_state.py.
@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SqliteStore(tmp_path / "lobbyd.db")
    else:
        # Looked up only here, so that the other backends need no PostgreSQL.
        dsn = request.getfixturevalue("postgres_service").url
        backend = PostgresStore(dsn, schema=request.getfixturevalue("pg_schema"))
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
async def sqlite_store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    backend = SqliteStore(tmp_path / "lobbyd.db")
    await backend.open()
    yield backend
    await backend.close()


def read_pragma(path: pathlib.Path, name: str) -> object:
    """Return the value of ``PRAGMA name`` read through a separate connection."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (value,) = connection.execute(f"PRAGMA {name}").fetchone()
    return value


# Contract tests, run against every backend.


async def test_unknown_player_is_none(store: Store) -> None:
    assert await store.load_player("p-nobody") is None


async def test_unknown_match_is_none(store: Store) -> None:
    assert await store.load_match("m-nothing") is None


async def test_player_round_trips(store: Store) -> None:
    await store.save([ALICE, BOB], [])

    assert await store.load_player(ALICE.id) == ALICE
    assert await store.load_player(BOB.id) == BOB


@pytest.mark.parametrize(
    "match", [STARTED, CANCELLED, FINISHED, ABANDONED], ids=["started", "cancelled", "finished", "abandoned"]
)
async def test_match_round_trips(store: Store, match: MatchRecord) -> None:
    await store.save([], [match])

    loaded = await store.load_match(match.id)

    assert loaded == match
    # Equality already fails on a list in place of a tuple. These asserts name the broken field.
    assert loaded is not None
    assert isinstance(loaded.teams[0], tuple)
    assert isinstance(loaded.ratings[0], tuple)
    assert isinstance(loaded.waits, tuple)
    assert loaded.state is match.state


async def test_rated_player_round_trips(store: Store) -> None:
    await store.save([CAROL_RATED], [])

    assert await store.load_player(CAROL_RATED.id) == CAROL_RATED


async def test_match_explanation_round_trips(store: Store) -> None:
    why = {"expansion_step": 2, "rating_spread": 150, "win_probability": 0.512, "region": "eu", "anchor_wait": 31.5}
    explained = dataclasses.replace(STARTED, id="m-explained", explanation=why)

    await store.save([], [explained])

    assert await store.load_match(explained.id) == explained


async def test_penalised_player_round_trips(store: Store) -> None:
    dodger = PlayerRecord("p-dan", "Dan", 1500, 1.0, 2.0, penalty_level=2, penalty_since=40.5, locked_until=340.5)

    await store.save([dodger], [])

    assert await store.load_player(dodger.id) == dodger
    assert await store.load_players([dodger.id]) == {dodger.id: dodger}


async def test_history_newest_first(store: Store) -> None:
    await store.save([], [STARTED, CANCELLED, FINISHED, ABANDONED])

    history = await store.load_history("p-alice", 10)

    assert [entry.match for entry in history] == ["m-4", "m-3", "m-1"]
    assert history[1] == HistoryEntry(
        match="m-3",
        queue="duel-2v2",
        state=MatchState.FINISHED,
        reason=None,
        team=0,
        rank=1,
        score=3.0,
        rating_before=1523,
        rating_after=1500,
        created_at=1_700_000_300.0,
        ended_at=1_700_000_900.5,
    )
    assert history[0].reason == "server_lost"
    assert history[0].rank is None
    assert history[2].rating_after is None


async def test_history_limit_and_other_players(store: Store) -> None:
    await store.save([], [STARTED, FINISHED, ABANDONED])

    assert [entry.match for entry in await store.load_history("p-alice", 1)] == ["m-4"]
    dave = await store.load_history("p-dave", 10)
    assert [(entry.match, entry.team, entry.rank, entry.score) for entry in dave] == [
        ("m-4", 1, None, None),
        ("m-3", 1, 0, 0.0),
        ("m-1", 1, None, None),
    ]
    assert await store.load_history("p-nobody", 10) == []


async def test_history_follows_result(store: Store) -> None:
    running = MatchRecord(
        id=FINISHED.id,
        queue=FINISHED.queue,
        teams=FINISHED.teams,
        ratings=FINISHED.ratings,
        state=MatchState.STARTED,
        created_at=FINISHED.created_at,
        ended_at=FINISHED.created_at,
        server=FINISHED.server,
    )
    await store.save([], [running])
    await store.save([], [FINISHED])

    (entry,) = await store.load_history("p-carol", 10)
    assert entry.state is MatchState.FINISHED
    assert entry.rating_after == 1470


async def test_later_save_replaces_player(store: Store) -> None:
    renamed = PlayerRecord(ALICE.id, "Alicia", 1600, ALICE.first_seen + 1, ALICE.last_seen + 60)
    await store.save([ALICE], [])

    await store.save([renamed], [])

    assert await store.load_player(ALICE.id) == renamed


async def test_later_save_replaces_match(store: Store) -> None:
    ended = MatchRecord(
        id=STARTED.id,
        queue="other",
        teams=(("p-x",), ("p-y",)),
        ratings=((1,), (2,)),
        state=MatchState.CANCELLED,
        created_at=1.0,
        ended_at=2.0,
        reason="timeout",
        waits=(),
    )
    await store.save([], [STARTED])

    await store.save([], [ended])

    assert await store.load_match(STARTED.id) == ended
    assert await store.count_matches() == 1


async def test_same_batch_last_wins(store: Store) -> None:
    renamed = PlayerRecord(ALICE.id, "Alicia", 1600, ALICE.first_seen, ALICE.last_seen)

    await store.save([ALICE, renamed], [])

    assert await store.load_player(ALICE.id) == renamed


async def test_empty_save_is_harmless(store: Store) -> None:
    await store.save([], [])

    assert await store.count_matches() == 0


async def test_count_matches_counts_every_state(store: Store) -> None:
    assert await store.count_matches() == 0

    await store.save([ALICE], [STARTED])
    assert await store.count_matches() == 1

    await store.save([], [CANCELLED, STARTED])
    assert await store.count_matches() == 2


async def test_concurrent_saves_all_stored(store: Store) -> None:
    matches = [
        MatchRecord(f"m-{n}", "duel-1v1", (("p-a",), ("p-b",)), ((1,), (2,)), STARTED.state, n, n)
        for n in range(20)
    ]

    await asyncio.gather(*(store.save([], [match]) for match in matches))

    assert await store.count_matches() == len(matches)


async def test_close_twice_is_harmless(store: Store) -> None:
    await store.close()

    await store.close()


# Tests of the SQLite store only.


async def test_sqlite_data_survives_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lobbyd.db"
    first = SqliteStore(path)
    await first.open()
    await first.save([ALICE, BOB], [STARTED, CANCELLED])
    await first.close()

    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.load_player(ALICE.id) == ALICE
        assert await second.load_player(BOB.id) == BOB
        assert await second.load_match(STARTED.id) == STARTED
        assert await second.load_match(CANCELLED.id) == CANCELLED
        assert await second.count_matches() == 2
    finally:
        await second.close()


async def test_sqlite_failed_batch_stores_nothing(sqlite_store: SqliteStore) -> None:
    await sqlite_store.save([ALICE], [])
    renamed = PlayerRecord(ALICE.id, "Alicia", 1600, ALICE.first_seen, ALICE.last_seen)
    nameless = PlayerRecord("p-nameless", None, 1500, 1.0, 1.0)  # type: ignore[arg-type]

    with pytest.raises(StoreError) as caught:
        await sqlite_store.save([renamed, BOB, nameless], [STARTED])

    assert await sqlite_store.load_player(ALICE.id) == ALICE
    assert await sqlite_store.load_player(BOB.id) is None
    assert await sqlite_store.load_player("p-nameless") is None
    assert await sqlite_store.load_match(STARTED.id) is None
    assert await sqlite_store.count_matches() == 0
    assert str(sqlite_store.path) in str(caught.value)
    assert "save" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)


async def test_sqlite_store_usable_after_failure(sqlite_store: SqliteStore) -> None:
    nameless = PlayerRecord("p-nameless", None, 1500, 1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await sqlite_store.save([nameless], [])

    await sqlite_store.save([ALICE], [STARTED])

    assert await sqlite_store.load_player(ALICE.id) == ALICE
    assert await sqlite_store.count_matches() == 1


async def test_sqlite_newer_schema_rejected(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lobbyd.db"
    newer = SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA user_version = {newer}")
    store = SqliteStore(path)

    with pytest.raises(StoreError) as caught:
        await store.open()

    assert str(path) in str(caught.value)
    assert f"schema version {newer}" in str(caught.value)
    assert read_pragma(path, "user_version") == newer
    await store.close()


def test_sqlite_bogus_synchronous_rejected(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="bogus"):
        SqliteStore(tmp_path / "lobbyd.db", synchronous="bogus")


async def test_sqlite_synchronous_full_opens(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "lobbyd.db", synchronous="full")
    await store.open()
    try:
        await store.save([ALICE], [])
        assert await store.load_player(ALICE.id) == ALICE
    finally:
        await store.close()


async def test_sqlite_open_creates_database(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "missing" / "dir" / "lobbyd.db"
    store = SqliteStore(path)

    await store.open()
    await store.close()

    assert path.is_file()
    assert read_pragma(path, "journal_mode") == "wal"
    assert read_pragma(path, "user_version") == SCHEMA_VERSION


async def test_sqlite_checkpoints_beside_saves(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_PAGES", 2)
    path = tmp_path / "lobbyd.db"
    store = SqliteStore(path)
    await store.open()
    try:
        # Commits leave the database file alone until a checkpoint copies the log in.
        before = path.stat().st_size
        players = [dataclasses.replace(ALICE, id=f"p-{index}", name=f"Player {index}") for index in range(500)]
        await store.save(players, [])
        await store.save([BOB], [])
        for _ in range(200):
            if path.stat().st_size > before:
                break
            await asyncio.sleep(0.05)

        assert path.stat().st_size > before
        assert await store.load_player("p-499") == players[-1]
    finally:
        await store.close()


async def test_sqlite_open_twice_keeps_data(sqlite_store: SqliteStore) -> None:
    await sqlite_store.save([ALICE], [])

    await sqlite_store.open()

    assert await sqlite_store.load_player(ALICE.id) == ALICE


async def test_sqlite_closed_store_raises(sqlite_store: SqliteStore) -> None:
    await sqlite_store.close()

    with pytest.raises(StoreError, match="not open"):
        await sqlite_store.load_player(ALICE.id)


async def test_sqlite_invalid_match_row_raises(sqlite_store: SqliteStore) -> None:
    await sqlite_store.save([], [STARTED])
    with contextlib.closing(sqlite3.connect(sqlite_store.path)) as connection:
        connection.execute("UPDATE matches SET state = 'exploded' WHERE id = ?", (STARTED.id,))
        connection.commit()

    with pytest.raises(StoreError, match="exploded"):
        await sqlite_store.load_match(STARTED.id)


async def test_load_players_returns_known(store: Store) -> None:
    await store.save([ALICE, BOB], [])
    found = await store.load_players(["p-alice", "p-nobody", "p-bob"])
    assert found == {"p-alice": ALICE, "p-bob": BOB}


async def test_load_players_many_ids(store: Store) -> None:
    records = [PlayerRecord(f"p{i}", f"P{i}", 1000 + i, 1.0, 2.0) for i in range(1200)]
    await store.save(records, [])
    wanted = [f"p{i}" for i in range(0, 1300, 3)]
    found = await store.load_players(wanted)
    assert sorted(found) == sorted(f"p{i}" for i in range(0, 1200, 3))
    assert found["p999"].rating == 1999
def create_version_1(path: pathlib.Path) -> None:
    """Write a database as schema version 1 left it: one player and one started match."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for statement in MIGRATIONS[1]:
            connection.execute(statement)
        connection.execute("INSERT INTO players VALUES ('p-old', 'Old', 1500, 1.0, 2.0)")
        connection.execute(
            "INSERT INTO matches VALUES ('m-old', '1v1', '[[\"p-old\"],[\"p-x\"]]', '[[1500],[1510]]',"
            " '[1.0,2.0]', 'started', 3.0, 4.0, NULL)"
        )
        connection.execute("PRAGMA user_version = 1")
        connection.commit()


async def test_sqlite_migrates_version_2_with_clean_records(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lobbyd.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for version in (1, 2):
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
        connection.execute(
            "INSERT INTO players (id, name, rating, first_seen, last_seen) VALUES ('p2', 'Two', 1600, 1.0, 2.0)"
        )
        connection.execute("PRAGMA user_version = 2")
        connection.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        player = await store.load_player("p2")
    finally:
        await store.close()

    assert read_pragma(path, "user_version") == SCHEMA_VERSION
    assert player == PlayerRecord("p2", "Two", 1600, 1.0, 2.0, penalty_level=0, penalty_since=0.0, locked_until=0.0)


async def test_sqlite_migrates_version_1(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lobbyd.db"
    create_version_1(path)
    store = SqliteStore(path)
    await store.open()
    try:
        player = await store.load_player("p-old")
        history = await store.load_history("p-x", 10)
    finally:
        await store.close()

    assert read_pragma(path, "user_version") == SCHEMA_VERSION
    assert player == PlayerRecord("p-old", "Old", 1500, 1.0, 2.0)
    assert history == [
        HistoryEntry("m-old", "1v1", MatchState.STARTED, None, 1, None, None, 1510, None, 3.0, 4.0)
    ]


# Tests of the PostgreSQL store only.


@pytest.fixture
async def pg_store(postgres_service: Service, pg_schema: str) -> AsyncIterator[PostgresStore]:
    backend = PostgresStore(postgres_service.url, schema=pg_schema)
    await backend.open()
    yield backend
    await backend.close()


async def test_postgres_nodes_migrate_once(postgres_service: Service, pg_schema: str) -> None:
    nodes = [PostgresStore(postgres_service.url, schema=pg_schema) for _ in range(3)]

    await asyncio.gather(*(node.open() for node in nodes))

    connection = await asyncpg.connect(postgres_service.url)
    try:
        versions = await connection.fetch(f'SELECT version FROM "{pg_schema}".schema_migrations')
    finally:
        await connection.close()
    assert [row["version"] for row in versions] == list(range(1, PG_SCHEMA_VERSION + 1))
    await nodes[0].save([ALICE], [])
    assert await nodes[2].load_player(ALICE.id) == ALICE
    for node in nodes:
        await node.close()


async def test_postgres_data_survives_reopen(postgres_service: Service, pg_schema: str) -> None:
    first = PostgresStore(postgres_service.url, schema=pg_schema)
    await first.open()
    await first.save([ALICE, BOB], [STARTED])
    await first.close()

    second = PostgresStore(postgres_service.url, schema=pg_schema)
    await second.open()
    try:
        assert await second.load_player(BOB.id) == BOB
        assert await second.load_match(STARTED.id) == STARTED
    finally:
        await second.close()


async def test_postgres_newer_schema_rejected(postgres_service: Service, pg_schema: str) -> None:
    store = PostgresStore(postgres_service.url, schema=pg_schema)
    await store.open()
    await store.close()
    connection = await asyncpg.connect(postgres_service.url)
    try:
        await connection.execute(
            f'INSERT INTO "{pg_schema}".schema_migrations (version) VALUES ($1)', PG_SCHEMA_VERSION + 1
        )
    finally:
        await connection.close()

    with pytest.raises(StoreError) as caught:
        await store.open()

    assert f"version {PG_SCHEMA_VERSION + 1}" in str(caught.value)
    assert pg_schema in str(caught.value)


async def test_postgres_failed_batch_stores_nothing(pg_store: PostgresStore) -> None:
    nameless = PlayerRecord("p-nameless", None, 1500, 1.0, 1.0)  # type: ignore[arg-type]

    with pytest.raises(StoreError) as caught:
        await pg_store.save([ALICE, nameless], [STARTED])

    assert await pg_store.load_player(ALICE.id) is None
    assert await pg_store.count_matches() == 0
    assert "save" in str(caught.value)
    await pg_store.save([ALICE], [])
    assert await pg_store.load_player(ALICE.id) == ALICE


async def test_postgres_keeps_later_penalty(pg_store: PostgresStore) -> None:
    penalised = PlayerRecord(
        "p-dodger", "Dodger", 1500, 1.0, 50.0, penalty_level=1, penalty_since=40.0, locked_until=340.0
    )
    # A node's copy read at login, before the dodge, written after the leader's.
    stale = PlayerRecord("p-dodger", "Dodger", 1500, 1.0, 60.0)
    await pg_store.save([penalised], [])

    await pg_store.save([stale], [])

    stored = await pg_store.load_player("p-dodger")
    assert stored is not None
    assert stored.penalty == penalised.penalty
    assert stored.last_seen == 60.0
    again = PlayerRecord(
        "p-dodger", "Dodger", 1500, 1.0, 70.0, penalty_level=2, penalty_since=65.0, locked_until=1865.0
    )
    await pg_store.save([again], [])
    assert (await pg_store.load_player("p-dodger")) == again


async def test_postgres_result_applied_once(postgres_service: Service, pg_store: PostgresStore) -> None:
    await pg_store.save([ALICE, BOB], [STARTED])
    result = ResultRecord(
        match=STARTED.id,
        outcome={"winner": 0},
        rating_changes={ALICE.id: 12, BOB.id: -12},
        reported_at=1_700_000_500.0,
    )
    # Two more stores stand for two more nodes reporting the same result at once.
    others = [PostgresStore(postgres_service.url, schema=pg_store.schema) for _ in range(2)]
    for other in others:
        await other.open()

    applied = await asyncio.gather(*(node.apply_result(result) for node in [pg_store, *others] * 3))

    assert applied.count(True) == 1
    alice = await pg_store.load_player(ALICE.id)
    bob = await pg_store.load_player(BOB.id)
    assert alice is not None
    assert alice.rating == ALICE.rating + 12
    assert bob is not None
    assert bob.rating == BOB.rating - 12
    assert await pg_store.apply_result(result) is False
    for other in others:
        await other.close()


async def test_postgres_match_result_applied_once(postgres_service: Service, pg_store: PostgresStore) -> None:
    await pg_store.save([ALICE, BOB], [STARTED])
    finished = dataclasses.replace(
        STARTED,
        state=MatchState.FINISHED,
        ranks=(0, 1),
        ratings_after=((1512, 1490), (1488, 1777)),
        ended_at=1_700_000_500.0,
    )
    alice = dataclasses.replace(ALICE, rating=1512, mu=26.0, sigma=8.0, games=1, wins=1)
    bob = dataclasses.replace(BOB, rating=1488, mu=24.0, sigma=8.0, games=1)
    # Two more stores stand for two more leaders storing the same result at once.
    others = [PostgresStore(postgres_service.url, schema=pg_store.schema) for _ in range(2)]
    for other in others:
        await other.open()

    nodes = [pg_store, *others] * 3
    applied = await asyncio.gather(*(node.apply_match_result(finished, [alice, bob]) for node in nodes))

    assert applied.count(True) == 1
    assert await pg_store.load_player(ALICE.id) == alice
    assert await pg_store.load_player(BOB.id) == bob
    assert await pg_store.load_match(STARTED.id) == finished
    (entry,) = await pg_store.load_history(ALICE.id, 5)
    assert (entry.rank, entry.rating_after) == (0, 1512)
    other_outcome = dataclasses.replace(finished, ranks=(1, 0))
    assert await pg_store.apply_match_result(other_outcome, [ALICE, BOB]) is False
    assert await pg_store.load_player(ALICE.id) == alice
    for other in others:
        await other.close()


async def test_postgres_stale_player_keeps_rating(pg_store: PostgresStore) -> None:
    rated = dataclasses.replace(ALICE, rating=1512, mu=26.0, sigma=8.0, games=1, wins=1)
    await pg_store.save([rated], [])

    # A node that missed the result writes its older record of the player.
    await pg_store.save([dataclasses.replace(ALICE, last_seen=ALICE.last_seen + 60)], [])

    assert await pg_store.load_player(ALICE.id) == rated


async def test_postgres_active_penalties(pg_store: PostgresStore) -> None:
    expired = PenaltyRecord(ALICE.id, "left_ready_check", created_at=100.0, until=200.0)
    active = PenaltyRecord(ALICE.id, "left_ready_check", created_at=150.0, until=400.0)
    other = PenaltyRecord(BOB.id, "abuse", created_at=150.0, until=900.0)
    for penalty in (expired, active, other):
        await pg_store.add_penalty(penalty)

    assert await pg_store.active_penalties(ALICE.id, now=300.0) == [active]
    assert await pg_store.active_penalties(ALICE.id, now=500.0) == []


async def test_postgres_unreachable_raises(pg_schema: str) -> None:
    closed_port = free_port()
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{closed_port}/postgres", schema=pg_schema)

    with pytest.raises(StoreError, match="open"):
        await store.open()


async def test_postgres_closed_store_raises(pg_store: PostgresStore) -> None:
    await pg_store.close()

    with pytest.raises(StoreError, match="not open"):
        await pg_store.load_player(ALICE.id)
