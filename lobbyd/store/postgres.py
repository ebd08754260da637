"""The PostgreSQL store: players, matches, penalties and results shared by every node.

It implements the ``Store`` interface on a pool of asyncpg connections. The schema
is versioned: ``MIGRATIONS`` maps each version to the statements that reach it from
the one before, and ``open`` applies the missing ones in one transaction while
holding an advisory lock, so nodes that start together migrate once. The table
``schema_migrations`` records every applied version.

Every driver or network failure reaches the caller as ``StoreError``. A connection
that broke (the server restarted) is discarded by the pool, and the next call opens
a fresh one, so callers recover by retrying.

A match result is applied exactly once however many nodes report it: its row in
``results`` is keyed by the match id, and the rating changes are written in the same
transaction as that row, only when the insert created it.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec

from lobbyd.core.model import MatchRecord, MatchState, PlayerRecord
from lobbyd.errors import StoreError

SCHEMA_VERSION: Final = 1

# Statements that migrate the schema from version ``n - 1`` to ``n``, keyed by ``n``.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """
        CREATE TABLE players (
            id text PRIMARY KEY,
            name text NOT NULL,
            rating integer NOT NULL,
            first_seen double precision NOT NULL,
            last_seen double precision NOT NULL
        )
        """,
        """
        CREATE TABLE matches (
            id text PRIMARY KEY,
            queue text NOT NULL,
            teams jsonb NOT NULL,    -- list of teams, each a list of player ids
            ratings jsonb NOT NULL,  -- list of teams, each a list of ratings
            waits jsonb NOT NULL,    -- seconds waited, in team order
            state text NOT NULL,
            created_at double precision NOT NULL,
            ended_at double precision NOT NULL,
            reason text
        )
        """,
        """
        CREATE TABLE penalties (
            id bigserial PRIMARY KEY,
            player text NOT NULL,
            reason text NOT NULL,
            created_at double precision NOT NULL,
            until double precision NOT NULL
        )
        """,
        "CREATE INDEX penalties_player_until ON penalties (player, until)",
        """
        CREATE TABLE results (
            match_id text PRIMARY KEY,
            outcome jsonb NOT NULL,           -- the reported result as it arrived
            rating_changes jsonb NOT NULL,    -- player id to rating points added
            applied_at double precision NOT NULL
        )
        """,
    ),
}

_CREATE_MIGRATIONS_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""

_UPSERT_PLAYER: Final = """
    INSERT INTO players (id, name, rating, first_seen, last_seen)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (id) DO UPDATE SET
        name = excluded.name,
        rating = excluded.rating,
        first_seen = excluded.first_seen,
        last_seen = excluded.last_seen
"""

_UPSERT_MATCH: Final = """
    INSERT INTO matches (id, queue, teams, ratings, waits, state, created_at, ended_at, reason)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (id) DO UPDATE SET
        queue = excluded.queue,
        teams = excluded.teams,
        ratings = excluded.ratings,
        waits = excluded.waits,
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        reason = excluded.reason
"""

_SELECT_PLAYERS: Final = "SELECT id, name, rating, first_seen, last_seen FROM players WHERE id = ANY($1::text[])"

# Seconds to wait for a connection, and for one statement. A server that does not
# answer within them is treated as down, so callers retry instead of hanging.
CONNECT_TIMEOUT_S: Final = 5.0
COMMAND_TIMEOUT_S: Final = 10.0

# The failures that mean "the database could not be used": server errors, a broken
# or closed connection, a refused or timed-out connect.
_DRIVER_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_json_encoder: Final = msgspec.json.Encoder()
_teams_decoder: Final = msgspec.json.Decoder(tuple[tuple[str, ...], ...])
_ratings_decoder: Final = msgspec.json.Decoder(tuple[tuple[int, ...], ...])
_waits_decoder: Final = msgspec.json.Decoder(tuple[float, ...])


@dataclass(frozen=True, slots=True)
class PenaltyRecord:
    """A sanction against a player, such as a queue ban for leaving ready checks."""

    player: str
    reason: str
    created_at: float
    until: float
    """Seconds since the Unix epoch when the penalty ends."""


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """The outcome of a played match and the rating points it moves."""

    match: str
    outcome: Mapping[str, Any]
    rating_changes: Mapping[str, int]
    """Player id to the rating points added (negative to subtract)."""
    reported_at: float


class PostgresStore:
    """The ``Store`` interface on PostgreSQL, for clusters of nodes.

    ``schema`` names the schema of the tables (created when missing), so that one
    database can hold several independent installations, or test runs.
    """

    def __init__(self, dsn: str, *, schema: str = "public", pool_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the connection pool and bring the schema to ``SCHEMA_VERSION``.

        Raises ``StoreError`` when the server cannot be reached, or its schema is newer
        than this code. Calling it again while open does nothing.
        """
        if self._pool is not None:
            return
        with self._translate_errors("open"):
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings={"search_path": self.schema, "application_name": "lobbyd"},
            )
        try:
            await self._migrate(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close every connection. Calling it twice is harmless."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await pool.close()

    async def load_player(self, player_id: str) -> PlayerRecord | None:
        found = await self.load_players([player_id])
        return found.get(player_id)

    async def load_players(self, player_ids: Sequence[str]) -> dict[str, PlayerRecord]:
        """Return the stored records of ``player_ids``, in one query."""
        async with self._connection("load_players") as connection:
            rows = await connection.fetch(_SELECT_PLAYERS, list(player_ids))
        return {row["id"]: PlayerRecord(*row.values()) for row in rows}

    async def save(self, players: Sequence[PlayerRecord], matches: Sequence[MatchRecord]) -> None:
        """Upsert ``players`` and ``matches`` in one transaction: all of them or none."""
        player_rows = [(p.id, p.name, p.rating, p.first_seen, p.last_seen) for p in players]
        match_rows = [_match_row(record) for record in matches]
        if not player_rows and not match_rows:
            return
        async with self._connection("save") as connection, connection.transaction():
            if player_rows:
                await connection.executemany(_UPSERT_PLAYER, player_rows)
            if match_rows:
                await connection.executemany(_UPSERT_MATCH, match_rows)

    async def load_match(self, match_id: str) -> MatchRecord | None:
        """Return the stored match ``match_id``, or ``None``.

        Raises ``StoreError`` when the stored row does not decode into a ``MatchRecord``.
        """
        async with self._connection("load_match") as connection:
            row = await connection.fetchrow(
                "SELECT queue, teams::text, ratings::text, waits::text, state, created_at, ended_at, reason"
                " FROM matches WHERE id = $1",
                match_id,
            )
        if row is None:
            return None
        try:
            return _match_from_row(match_id, tuple(row.values()))
        except (msgspec.DecodeError, ValueError) as exc:
            msg = f"postgres load_match failed: match {match_id!r} is invalid: {exc}"
            raise StoreError(msg) from exc

    async def count_matches(self) -> int:
        async with self._connection("count_matches") as connection:
            count = await connection.fetchval("SELECT count(*) FROM matches")
        return int(count)

    # Beyond the Store interface: penalties and results.

    async def add_penalty(self, penalty: PenaltyRecord) -> None:
        async with self._connection("add_penalty") as connection:
            await connection.execute(
                "INSERT INTO penalties (player, reason, created_at, until) VALUES ($1, $2, $3, $4)",
                penalty.player,
                penalty.reason,
                penalty.created_at,
                penalty.until,
            )

    async def active_penalties(self, player_id: str, now: float) -> list[PenaltyRecord]:
        """Return the penalties of ``player_id`` that have not ended at ``now``, oldest first."""
        async with self._connection("active_penalties") as connection:
            rows = await connection.fetch(
                "SELECT player, reason, created_at, until FROM penalties"
                " WHERE player = $1 AND until > $2 ORDER BY created_at, id",
                player_id,
                now,
            )
        return [PenaltyRecord(*row.values()) for row in rows]

    async def apply_result(self, result: ResultRecord) -> bool:
        """Store ``result`` and add its rating changes, once per match id.

        Returns False, changing nothing, when a result for that match was applied
        before, by this node or any other. Concurrent calls for one match are
        serialized by the primary key, so exactly one of them returns True.
        """
        outcome = _json_encoder.encode(result.outcome).decode()
        changes = _json_encoder.encode(result.rating_changes).decode()
        async with self._connection("apply_result") as connection, connection.transaction():
            created = await connection.fetchval(
                "INSERT INTO results (match_id, outcome, rating_changes, applied_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (match_id) DO NOTHING RETURNING true",
                result.match,
                outcome,
                changes,
                result.reported_at,
            )
            if not created:
                return False
            await connection.executemany(
                "UPDATE players SET rating = rating + $2 WHERE id = $1", list(result.rating_changes.items())
            )
        return True

    # Internals.

    @contextlib.asynccontextmanager
    async def _connection(self, operation: str) -> AsyncIterator[Any]:
        """Lend a pooled connection, translating every driver failure to ``StoreError``."""
        if self._pool is None:
            msg = f"postgres {operation} failed: the store is not open"
            raise StoreError(msg)
        with self._translate_errors(operation):
            async with self._pool.acquire() as connection:
                yield connection

    @contextlib.contextmanager
    def _translate_errors(self, operation: str) -> Any:
        try:
            yield
        except _DRIVER_ERRORS as exc:
            msg = f"postgres {operation} on schema {self.schema!r} failed: {type(exc).__name__}: {exc}"
            raise StoreError(msg) from exc

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        """Apply the missing migrations in one transaction, under an advisory lock.

        The lock is per schema and is released with the transaction, so nodes that
        start at once take turns and each later one finds nothing left to do.
        """
        lock_key = zlib.crc32(f"lobbyd-migrate:{self.schema}".encode())
        with self._translate_errors("open"):
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
                # A bare identifier checked by the config pattern; schemas take no bind parameters.
                await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await connection.execute(_CREATE_MIGRATIONS_TABLE)
                version = await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
                if version > SCHEMA_VERSION:
                    msg = (
                        f"postgres open failed: schema {self.schema!r} is at version {version}, newer than "
                        f"{SCHEMA_VERSION}, the newest this lobbyd supports. Upgrade lobbyd or use another schema."
                    )
                    raise StoreError(msg)
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target]:
                        await connection.execute(statement)
                    await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", target)


def _match_row(record: MatchRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.queue,
        _json_encoder.encode(record.teams).decode(),
        _json_encoder.encode(record.ratings).decode(),
        _json_encoder.encode(record.waits).decode(),
        record.state.value,
        record.created_at,
        record.ended_at,
        record.reason,
    )


def _match_from_row(match_id: str, row: tuple[Any, ...]) -> MatchRecord:
    """Build a ``MatchRecord``, raising ``msgspec.DecodeError`` or ``ValueError`` on bad data."""
    queue, teams, ratings, waits, state, created_at, ended_at, reason = row
    return MatchRecord(
        id=match_id,
        queue=queue,
        teams=_teams_decoder.decode(teams),
        ratings=_ratings_decoder.decode(ratings),
        state=MatchState(state),
        created_at=created_at,
        ended_at=ended_at,
        reason=reason,
        waits=_waits_decoder.decode(waits),
    )
