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
transaction as that row, only when the insert created it (``apply_result`` adds
rating points, ``apply_match_result`` writes the rated players and the finished match).
A player row is never overwritten by a record with fewer rated games, so a late
write from a stale node cannot roll a result back. For the same reason a player's
dodge penalty is only replaced by one with a later ``penalty_since``.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec

from lobbyd.core.model import HistoryEntry, MatchRecord, MatchState, PlayerRecord
from lobbyd.errors import StoreError

SCHEMA_VERSION: Final = 3

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
    # Ratings as OpenSkill mu and sigma with counts, what a game server reported, and
    # one history row per player of every started match.
    2: (
        "ALTER TABLE players ADD COLUMN mu double precision",
        "ALTER TABLE players ADD COLUMN sigma double precision",
        "ALTER TABLE players ADD COLUMN games integer NOT NULL DEFAULT 0",
        "ALTER TABLE players ADD COLUMN wins integer NOT NULL DEFAULT 0",
        "ALTER TABLE matches ADD COLUMN server text",
        # ranks is one place per team (0 first); scores and ratings_after are lists of
        # teams, parallel to teams.
        "ALTER TABLE matches ADD COLUMN ranks jsonb",
        "ALTER TABLE matches ADD COLUMN scores jsonb",
        "ALTER TABLE matches ADD COLUMN ratings_after jsonb",
        """
        CREATE TABLE match_players (
            match_id text NOT NULL,
            player_id text NOT NULL,
            team integer NOT NULL,
            rank integer,
            score double precision,
            rating_before integer NOT NULL,
            rating_after integer,
            created_at double precision NOT NULL,
            PRIMARY KEY (match_id, player_id)
        )
        """,
        "CREATE INDEX match_players_by_player ON match_players (player_id, created_at)",
        """
        INSERT INTO match_players (match_id, player_id, team, rating_before, created_at)
        SELECT m.id, p.value, t.index - 1, (m.ratings -> (t.index - 1)::int ->> (p.index - 1)::int)::integer,
               m.created_at
        FROM matches AS m,
             jsonb_array_elements(m.teams) WITH ORDINALITY AS t(value, index),
             jsonb_array_elements_text(t.value) WITH ORDINALITY AS p(value, index)
        WHERE m.state = 'started'
        """,
    ),
    # The dodge-penalty ladder of each player.
    3: (
        "ALTER TABLE players ADD COLUMN penalty_level integer NOT NULL DEFAULT 0",
        "ALTER TABLE players ADD COLUMN penalty_since double precision NOT NULL DEFAULT 0",
        "ALTER TABLE players ADD COLUMN locked_until double precision NOT NULL DEFAULT 0",
        # How the matchmaker justified each started match, as a JSON object.
        "ALTER TABLE matches ADD COLUMN explanation jsonb",
    ),
}

_CREATE_MIGRATIONS_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""

_UPSERT_PLAYER: Final = """
    INSERT INTO players (
        id, name, rating, first_seen, last_seen, mu, sigma, games, wins, penalty_level, penalty_since, locked_until
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (id) DO UPDATE SET
        -- A penalty only grows by a dodge, which moves penalty_since forward, so the
        -- later one stands: a node's login-time copy never undoes a leader's penalty.
        penalty_level = CASE WHEN excluded.penalty_since >= players.penalty_since
            THEN excluded.penalty_level ELSE players.penalty_level END,
        penalty_since = GREATEST(excluded.penalty_since, players.penalty_since),
        locked_until = CASE WHEN excluded.penalty_since >= players.penalty_since
            THEN excluded.locked_until ELSE players.locked_until END,
        name = excluded.name,
        rating = excluded.rating,
        first_seen = excluded.first_seen,
        last_seen = excluded.last_seen,
        mu = excluded.mu,
        sigma = excluded.sigma,
        games = excluded.games,
        wins = excluded.wins
    -- A record with fewer rated games than the stored one predates a result that
    -- another node already wrote, so it must not roll the ratings back.
    WHERE excluded.games >= players.games
"""

_UPSERT_MATCH: Final = """
    INSERT INTO matches (
        id, queue, teams, ratings, waits, state, created_at, ended_at, reason, server, ranks, scores, ratings_after,
        explanation
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
    ON CONFLICT (id) DO UPDATE SET
        explanation = excluded.explanation,
        server = excluded.server,
        ranks = excluded.ranks,
        scores = excluded.scores,
        ratings_after = excluded.ratings_after,
        queue = excluded.queue,
        teams = excluded.teams,
        ratings = excluded.ratings,
        waits = excluded.waits,
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        reason = excluded.reason
"""

# Returns true only when this statement created the row: the once-per-match gate.
_INSERT_RESULT: Final = (
    "INSERT INTO results (match_id, outcome, rating_changes, applied_at) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (match_id) DO NOTHING RETURNING true"
)

_SELECT_PLAYERS: Final = (
    "SELECT id, name, rating, first_seen, last_seen, mu, sigma, games, wins, penalty_level, penalty_since,"
    " locked_until FROM players WHERE id = ANY($1::text[])"
)

_UPSERT_MATCH_PLAYER: Final = """
    INSERT INTO match_players (match_id, player_id, team, rank, score, rating_before, rating_after, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (match_id, player_id) DO UPDATE SET
        team = excluded.team,
        rank = excluded.rank,
        score = excluded.score,
        rating_before = excluded.rating_before,
        rating_after = excluded.rating_after,
        created_at = excluded.created_at
"""

_SELECT_HISTORY: Final = """
    SELECT mp.match_id, m.queue, m.state, m.reason, mp.team, mp.rank, mp.score,
           mp.rating_before, mp.rating_after, m.created_at, m.ended_at
    FROM match_players AS mp JOIN matches AS m ON m.id = mp.match_id
    WHERE mp.player_id = $1
    ORDER BY mp.created_at DESC, mp.match_id DESC
    LIMIT $2
"""

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
_ranks_decoder: Final = msgspec.json.Decoder(tuple[int, ...])
_scores_decoder: Final = msgspec.json.Decoder(tuple[tuple[float | None, ...], ...])
_explanation_decoder: Final = msgspec.json.Decoder(dict[str, object])


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
        player_rows = [_player_row(player) for player in players]
        match_rows = [_match_row(record) for record in matches]
        history_rows = [row for record in matches for row in _match_player_rows(record)]
        if not player_rows and not match_rows:
            return
        async with self._connection("save") as connection, connection.transaction():
            if player_rows:
                await connection.executemany(_UPSERT_PLAYER, player_rows)
            if match_rows:
                await connection.executemany(_UPSERT_MATCH, match_rows)
            if history_rows:
                await connection.executemany(_UPSERT_MATCH_PLAYER, history_rows)

    async def load_history(self, player_id: str, limit: int) -> list[HistoryEntry]:
        """Return the player's last ``limit`` started matches, newest first."""
        async with self._connection("load_history") as connection:
            rows = await connection.fetch(_SELECT_HISTORY, player_id, limit)
        try:
            return [_history_from_row(tuple(row.values())) for row in rows]
        except ValueError as exc:
            msg = f"postgres load_history failed: a match of player {player_id!r} is invalid: {exc}"
            raise StoreError(msg) from exc

    async def load_match(self, match_id: str) -> MatchRecord | None:
        """Return the stored match ``match_id``, or ``None``.

        Raises ``StoreError`` when the stored row does not decode into a ``MatchRecord``.
        """
        async with self._connection("load_match") as connection:
            row = await connection.fetchrow(
                "SELECT queue, teams::text, ratings::text, waits::text, state, created_at, ended_at, reason,"
                " server, ranks::text, scores::text, ratings_after::text, explanation::text FROM matches WHERE id = $1",
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
                _INSERT_RESULT,
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

    async def apply_match_result(self, record: MatchRecord, players: Sequence[PlayerRecord]) -> bool:
        """Store the finished match ``record`` and its rated ``players``, once per match id.

        One transaction inserts the ``results`` row, then, only if the insert created
        it, writes the players, the match and its history rows. Returns False, changing
        nothing, when a result for that match was stored before, by any node.
        """
        outcome = _json_encoder.encode({"ranks": record.ranks, "scores": record.scores}).decode()
        changes = _json_encoder.encode(_rating_changes(record)).decode()
        player_rows = [_player_row(player) for player in players]
        async with self._connection("apply_match_result") as connection, connection.transaction():
            created = await connection.fetchval(
                _INSERT_RESULT,
                record.id,
                outcome,
                changes,
                record.ended_at,
            )
            if not created:
                return False
            await connection.executemany(_UPSERT_PLAYER, player_rows)
            await connection.execute(_UPSERT_MATCH, *_match_row(record))
            await connection.executemany(_UPSERT_MATCH_PLAYER, _match_player_rows(record))
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


def _player_row(p: PlayerRecord) -> tuple[object, ...]:
    return (
        p.id, p.name, p.rating, p.first_seen, p.last_seen, p.mu, p.sigma, p.games, p.wins,
        p.penalty_level, p.penalty_since, p.locked_until,
    )


def _rating_changes(record: MatchRecord) -> dict[str, int]:
    """Return each player's display rating points gained (negative: lost) by a finished match."""
    if record.ratings_after is None:
        return {}
    changes: dict[str, int] = {}
    for team, before, after in zip(record.teams, record.ratings, record.ratings_after, strict=True):
        for player, old, new in zip(team, before, after, strict=True):
            changes[player] = new - old
    return changes


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
        record.server,
        _json_or_none(record.ranks),
        _json_or_none(record.scores),
        _json_or_none(record.ratings_after),
        _json_or_none(record.explanation),
    )


def _json_or_none(value: object) -> str | None:
    return None if value is None else _json_encoder.encode(value).decode()


def _match_player_rows(record: MatchRecord) -> list[tuple[object, ...]]:
    """Return one history row per player of a match that started; none for a cancelled one."""
    if record.state is MatchState.CANCELLED:
        return []
    rows: list[tuple[object, ...]] = []
    for team_index, team in enumerate(record.teams):
        rank = record.ranks[team_index] if record.ranks is not None else None
        for slot, player in enumerate(team):
            score = record.scores[team_index][slot] if record.scores is not None else None
            after = record.ratings_after[team_index][slot] if record.ratings_after is not None else None
            before = record.ratings[team_index][slot]
            rows.append((record.id, player, team_index, rank, score, before, after, record.created_at))
    return rows


def _history_from_row(row: tuple[Any, ...]) -> HistoryEntry:
    """Build a ``HistoryEntry``, raising ``ValueError`` on an unknown match state."""
    match, queue, state, reason, team, rank, score, before, after, created_at, ended_at = row
    return HistoryEntry(match, queue, MatchState(state), reason, team, rank, score, before, after, created_at, ended_at)


def _match_from_row(match_id: str, row: tuple[Any, ...]) -> MatchRecord:
    """Build a ``MatchRecord``, raising ``msgspec.DecodeError`` or ``ValueError`` on bad data."""
    queue, teams, ratings, waits, state, created_at, ended_at, reason, server, ranks, scores, after, why = row
    return MatchRecord(
        explanation=_explanation_decoder.decode(why) if why is not None else None,
        server=server,
        ranks=_ranks_decoder.decode(ranks) if ranks is not None else None,
        scores=_scores_decoder.decode(scores) if scores is not None else None,
        ratings_after=_ratings_decoder.decode(after) if after is not None else None,
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
