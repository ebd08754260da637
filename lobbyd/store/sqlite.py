"""The SQLite store: players and finished matches in one local database file.

It owns the schema, its version in ``PRAGMA user_version`` and the connection settings.
One connection serves every call. Each call runs in a worker thread through
``asyncio.to_thread``, and a ``threading.Lock`` lets one call at a time use the
connection, because the worker threads differ from call to call.

Cancelling a call does not stop its worker thread. A cancelled ``save`` may still
commit, and a later call waits until it has finished.

Checkpoints, which copy the write-ahead log into the database file and sync it,
run on a second connection in a thread of their own. SQLite's automatic checkpoint
would run inside the commit that crossed the log's size limit and add 8-10 ms to it
(lifecycle benchmark), and a started match waits for its commit before any player
hears of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

import msgspec

from lobbyd.core.model import HistoryEntry, MatchRecord, MatchState, PlayerRecord
from lobbyd.errors import StoreError

SCHEMA_VERSION: Final = 3

# Statements that migrate a database from schema version ``n - 1`` to ``n``, keyed by ``n``.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """
        CREATE TABLE players (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            rating INTEGER NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        )
        """,
        """
        CREATE TABLE matches (
            id TEXT PRIMARY KEY,
            queue TEXT NOT NULL,
            teams TEXT NOT NULL,    -- JSON list of teams, each a list of player ids
            ratings TEXT NOT NULL,  -- JSON list of teams, each a list of ratings
            waits TEXT NOT NULL,    -- JSON list of seconds waited, in team order
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            reason TEXT
        )
        """,
    ),
    # Version 2: OpenSkill mu and sigma per player (NULL until the first rated match),
    # results of hosted matches, and one row per player of every match that started,
    # so that a player's history is one indexed query.
    2: (
        "ALTER TABLE players ADD COLUMN mu REAL",
        "ALTER TABLE players ADD COLUMN sigma REAL",
        "ALTER TABLE players ADD COLUMN games INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE players ADD COLUMN wins INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE matches ADD COLUMN server TEXT",
        # JSON: ranks is one place per team (0 first); scores and ratings_after are
        # lists of teams, parallel to teams.
        "ALTER TABLE matches ADD COLUMN ranks TEXT",
        "ALTER TABLE matches ADD COLUMN scores TEXT",
        "ALTER TABLE matches ADD COLUMN ratings_after TEXT",
        """
        CREATE TABLE match_players (
            match_id TEXT NOT NULL,
            player_id TEXT NOT NULL,
            team INTEGER NOT NULL,
            rank INTEGER,
            score REAL,
            rating_before INTEGER NOT NULL,
            rating_after INTEGER,
            created_at REAL NOT NULL,
            PRIMARY KEY (match_id, player_id)
        )
        """,
        "CREATE INDEX match_players_by_player ON match_players (player_id, created_at)",
        # Matches started under version 1 join the history too.
        """
        INSERT INTO match_players (match_id, player_id, team, rating_before, created_at)
        SELECT m.id, p.value, CAST(t.key AS INTEGER),
               json_extract(m.ratings, '$[' || t.key || '][' || p.key || ']'), m.created_at
        FROM matches AS m, json_each(m.teams) AS t, json_each(t.value) AS p
        WHERE m.state = 'started'
        """,
    ),
    # Version 3: each player's standing on the dodge penalty ladder, so that a
    # lockout survives a restart, and each match's explanation.
    3: (
        "ALTER TABLE players ADD COLUMN penalty_level INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE players ADD COLUMN penalty_since REAL NOT NULL DEFAULT 0",
        "ALTER TABLE players ADD COLUMN locked_until REAL NOT NULL DEFAULT 0",
        # JSON object: why the matchmaker formed the match.
        "ALTER TABLE matches ADD COLUMN explanation TEXT",
    ),
}

# In WAL mode, NORMAL loses no committed transaction when the process crashes or is
# killed (kill -9), but the last commits may roll back after power loss or an OS crash.
# FULL syncs the WAL on every commit, so commits also survive power loss. Source: the
# SQLite documentation of PRAGMA synchronous.
SYNCHRONOUS_MODES: Final = ("normal", "full")

# Pages of write-ahead log after which a save starts a checkpoint: SQLite's own
# default for the automatic checkpoint, which this store turns off.
CHECKPOINT_PAGES: Final = 1000

# How long a write waits for another connection to the same file (a backup or the
# sqlite3 shell) to release its lock before failing with "database is locked".
BUSY_TIMEOUT_MS: Final = 5_000

_UPSERT_PLAYER: Final = """
    INSERT INTO players (
        id, name, rating, first_seen, last_seen, mu, sigma, games, wins,
        penalty_level, penalty_since, locked_until
    )
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET
        name = excluded.name,
        rating = excluded.rating,
        first_seen = excluded.first_seen,
        last_seen = excluded.last_seen,
        mu = excluded.mu,
        sigma = excluded.sigma,
        games = excluded.games,
        wins = excluded.wins,
        penalty_level = excluded.penalty_level,
        penalty_since = excluded.penalty_since,
        locked_until = excluded.locked_until
"""

_UPSERT_MATCH: Final = """
    INSERT INTO matches (
        id, queue, teams, ratings, waits, state, created_at, ended_at, reason,
        server, ranks, scores, ratings_after, explanation
    )
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET
        queue = excluded.queue,
        teams = excluded.teams,
        ratings = excluded.ratings,
        waits = excluded.waits,
        state = excluded.state,
        created_at = excluded.created_at,
        ended_at = excluded.ended_at,
        reason = excluded.reason,
        server = excluded.server,
        ranks = excluded.ranks,
        scores = excluded.scores,
        ratings_after = excluded.ratings_after,
        explanation = excluded.explanation
"""

_UPSERT_MATCH_PLAYER: Final = """
    INSERT INTO match_players (match_id, player_id, team, rank, score, rating_before, rating_after, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT(match_id, player_id) DO UPDATE SET
        team = excluded.team,
        rank = excluded.rank,
        score = excluded.score,
        rating_before = excluded.rating_before,
        rating_after = excluded.rating_after,
        created_at = excluded.created_at
"""

# The columns of a players row in PlayerRecord's field order.
_PLAYER_COLUMNS: Final = (
    "id, name, rating, first_seen, last_seen, mu, sigma, games, wins, penalty_level, penalty_since, locked_until"
)

_SELECT_HISTORY: Final = """
    SELECT mp.match_id, m.queue, m.state, m.reason, mp.team, mp.rank, mp.score,
           mp.rating_before, mp.rating_after, m.created_at, m.ended_at
    FROM match_players AS mp JOIN matches AS m ON m.id = mp.match_id
    WHERE mp.player_id = ?
    ORDER BY mp.created_at DESC, mp.match_id DESC
    LIMIT ?
"""

_json_encoder: Final = msgspec.json.Encoder()
_teams_decoder: Final = msgspec.json.Decoder(tuple[tuple[str, ...], ...])
_ratings_decoder: Final = msgspec.json.Decoder(tuple[tuple[int, ...], ...])
_waits_decoder: Final = msgspec.json.Decoder(tuple[float, ...])
_ranks_decoder: Final = msgspec.json.Decoder(tuple[int, ...] | None)
_scores_decoder: Final = msgspec.json.Decoder(tuple[tuple[float | None, ...], ...] | None)
_ratings_after_decoder: Final = msgspec.json.Decoder(tuple[tuple[int, ...], ...] | None)
_explanation_decoder: Final = msgspec.json.Decoder(dict[str, object] | None)

# A matches row without its id: queue, teams, ratings, waits, state, created_at, ended_at,
# reason, server, ranks, scores, ratings_after, explanation.
_MatchRow = tuple[
    str, str, str, str, str, float, float, str | None, str | None, str | None, str | None, str | None, str | None
]

# A history row: match, queue, state, reason, team, rank, score, rating_before,
# rating_after, created_at, ended_at.
_HistoryRow = tuple[str, str, str, str | None, int, int | None, float | None, int, int | None, float, float]

_T = TypeVar("_T")


class SqliteStore:
    """The ``Store`` interface on a SQLite database file in WAL mode.

    ``synchronous`` is ``"normal"`` or ``"full"``, and any other value raises ``ValueError``.
    Every ``sqlite3.Error`` reaches the caller as ``StoreError``, naming the file and
    the operation. A call on a store that is not open raises ``StoreError``.
    """

    def __init__(self, path: pathlib.Path, synchronous: str = "normal") -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            msg = f"invalid synchronous mode {synchronous!r}: expected 'normal' or 'full'"
            raise ValueError(msg)
        self.path = path
        self.synchronous = synchronous
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._checkpointer = _Checkpointer(path)

    async def open(self) -> None:
        """Open the file, creating it and its directory when missing, and migrate the schema.

        Raises ``StoreError`` when the file cannot be opened or written, or when its
        schema is newer than this code. Calling it again while open does nothing.
        """
        await asyncio.to_thread(self._open_blocking)

    async def close(self) -> None:
        """Close the connection. Calling it twice is harmless."""
        await asyncio.to_thread(self._close_blocking)

    async def load_player(self, player_id: str) -> PlayerRecord | None:
        return await self._run(
            "load_player", lambda connection: _select_player(connection, player_id)
        )

    async def load_players(self, player_ids: Sequence[str]) -> dict[str, PlayerRecord]:
        """Return the stored records of ``player_ids``, in one trip to the worker thread."""
        ids = list(player_ids)
        return await self._run("load_players", lambda connection: _select_players(connection, ids))

    async def save(self, players: Sequence[PlayerRecord], matches: Sequence[MatchRecord]) -> None:
        """Upsert ``players`` and ``matches`` in one transaction: all of them or none."""
        player_rows = [_player_row(record) for record in players]
        match_rows = [_match_row(record) for record in matches]
        match_player_rows = [row for record in matches for row in _match_player_rows(record)]
        await self._run("save", lambda connection: self._upsert(connection, player_rows, match_rows, match_player_rows))

    def _upsert(
        self,
        connection: sqlite3.Connection,
        player_rows: list[tuple[object, ...]],
        match_rows: list[tuple[object, ...]],
        match_player_rows: list[tuple[object, ...]],
    ) -> None:
        _upsert(connection, player_rows, match_rows, match_player_rows)
        self._checkpointer.start_if_due()

    async def load_match(self, match_id: str) -> MatchRecord | None:
        """Return the stored match ``match_id``, or ``None``.

        Raises ``StoreError`` when the stored row does not decode into a ``MatchRecord``.
        """
        row = await self._run(
            "load_match", lambda connection: _select_match_row(connection, match_id)
        )
        if row is None:
            return None
        try:
            return _match_from_row(match_id, row)
        except (msgspec.DecodeError, ValueError) as exc:
            msg = f"sqlite load_match on {self.path} failed: match {match_id!r} is invalid: {exc}"
            raise StoreError(msg) from exc

    async def count_matches(self) -> int:
        return await self._run("count_matches", _count_matches)

    async def load_history(self, player_id: str, limit: int) -> list[HistoryEntry]:
        """Return the player's last ``limit`` started matches, newest first."""
        rows = await self._run("load_history", lambda connection: _select_history(connection, player_id, limit))
        try:
            return [_history_from_row(row) for row in rows]
        except ValueError as exc:
            msg = f"sqlite load_history on {self.path} failed: a match of player {player_id!r} is invalid: {exc}"
            raise StoreError(msg) from exc

    async def _run(self, operation: str, function: Callable[[sqlite3.Connection], _T]) -> _T:
        """Call ``function`` with the connection in a worker thread, holding the lock."""
        return await asyncio.to_thread(self._run_blocking, operation, function)

    def _run_blocking(self, operation: str, function: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock, self._translate_errors(operation):
            if self._connection is None:
                msg = f"sqlite {operation} on {self.path} failed: the store is not open"
                raise StoreError(msg)
            return function(self._connection)

    def _open_blocking(self) -> None:
        with self._lock, self._translate_errors("open"):
            if self._connection is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                msg = f"sqlite open on {self.path} failed: {exc}"
                raise StoreError(msg) from exc

            # isolation_level=None leaves transactions to the explicit BEGIN and COMMIT below.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                self._configure(connection)
                _migrate(connection, self.path)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
            (page_size,) = connection.execute("PRAGMA page_size").fetchone()
            self._checkpointer.open(page_size)

    def _configure(self, connection: sqlite3.Connection) -> None:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            msg = (
                f"sqlite open on {self.path} failed: journal_mode is {mode!r} instead of 'wal'. "
                "WAL needs a local file system that supports shared memory."
            )
            raise StoreError(msg)
        # The value was checked against SYNCHRONOUS_MODES in __init__, so it is safe to format.
        connection.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        # The checkpointer thread takes over (see the module docstring).
        connection.execute("PRAGMA wal_autocheckpoint = 0")

    def _close_blocking(self) -> None:
        with self._lock, self._translate_errors("close"):
            # Closing the last connection checkpoints the whole log, so the running
            # checkpoint is only waited for.
            self._checkpointer.close()
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

    @contextlib.contextmanager
    def _translate_errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            msg = f"sqlite {operation} on {self.path} failed: {exc}"
            raise StoreError(msg) from exc


class _Checkpointer:
    """Run PASSIVE checkpoints on a connection of its own, in a thread of its own.

    A PASSIVE checkpoint takes no write lock, so saves go on while it copies. With
    ``synchronous = NORMAL`` the checkpoint is also where SQLite syncs the log, so
    a power loss can roll back the commits since the last checkpoint, about as many
    as under the automatic checkpoint. A failed checkpoint leaves the log to grow
    until the next save past the limit starts another.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._limit_bytes = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: concurrent.futures.Future[None] | None = None
        self._connection: sqlite3.Connection | None = None

    def open(self, page_size: int) -> None:
        self._limit_bytes = CHECKPOINT_PAGES * page_size
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")

    def start_if_due(self) -> None:
        """Start a checkpoint unless one runs or the log is below ``CHECKPOINT_PAGES``."""
        if self._executor is None or (self._running is not None and not self._running.done()):
            return
        try:
            size = self._wal.stat().st_size
        except OSError:
            return
        if size >= self._limit_bytes:
            self._running = self._executor.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            if self._connection is None:
                self._connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # TODO: report failed checkpoints; the store has no logger, and a log that
            # keeps growing shows only as disk use until a later checkpoint succeeds.
            return

    def close(self) -> None:
        """Wait for a running checkpoint, then close the checkpoint connection."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._running = None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


@contextlib.contextmanager
def _write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """Run the body in one transaction that holds the write lock from its start."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        # SQLite itself rolls back after some errors, such as a full disk. That is safe
        # here because Connection.rollback() does nothing when no transaction is open.
        connection.rollback()
        raise


def _migrate(connection: sqlite3.Connection, path: pathlib.Path) -> None:
    """Bring the schema to ``SCHEMA_VERSION``, taking the write lock even when it is current.

    Taking the lock checks that the file can be written before the daemon accepts players.
    """
    with _write_transaction(connection):
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            msg = (
                f"sqlite open on {path} failed: schema version {version} is newer than "
                f"{SCHEMA_VERSION}, the newest this lobbyd supports. "
                "Upgrade lobbyd or use another database file."
            )
            raise StoreError(msg)

        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                connection.execute(statement)
        # PRAGMA statements accept no bound parameters, so the int constant is formatted in.
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _player_row(record: PlayerRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.name,
        record.rating,
        record.first_seen,
        record.last_seen,
        record.mu,
        record.sigma,
        record.games,
        record.wins,
        record.penalty_level,
        record.penalty_since,
        record.locked_until,
    )


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


def _upsert(
    connection: sqlite3.Connection,
    player_rows: list[tuple[object, ...]],
    match_rows: list[tuple[object, ...]],
    match_player_rows: list[tuple[object, ...]],
) -> None:
    with _write_transaction(connection):
        connection.executemany(_UPSERT_PLAYER, player_rows)
        connection.executemany(_UPSERT_MATCH, match_rows)
        connection.executemany(_UPSERT_MATCH_PLAYER, match_player_rows)


def _select_player(connection: sqlite3.Connection, player_id: str) -> PlayerRecord | None:
    row = connection.execute(f"SELECT {_PLAYER_COLUMNS} FROM players WHERE id = ?", (player_id,)).fetchone()
    if row is None:
        return None
    return PlayerRecord(*row)


# SQLite allows 32,766 host parameters per statement since 3.32; 500 keeps each
# statement small and the plan cached.
_SELECT_CHUNK = 500


def _select_players(connection: sqlite3.Connection, player_ids: list[str]) -> dict[str, PlayerRecord]:
    found: dict[str, PlayerRecord] = {}
    for start in range(0, len(player_ids), _SELECT_CHUNK):
        chunk = player_ids[start : start + _SELECT_CHUNK]
        # Only "?" placeholders are formatted into the SQL; the ids are bound parameters.
        marks = ",".join("?" * len(chunk))
        query = f"SELECT {_PLAYER_COLUMNS} FROM players WHERE id IN ({marks})"
        for player_id, *fields in connection.execute(query, chunk):
            found[player_id] = PlayerRecord(player_id, *fields)
    return found


def _select_match_row(connection: sqlite3.Connection, match_id: str) -> _MatchRow | None:
    row: _MatchRow | None = connection.execute(
        "SELECT queue, teams, ratings, waits, state, created_at, ended_at, reason,"
        " server, ranks, scores, ratings_after, explanation FROM matches WHERE id = ?",
        (match_id,),
    ).fetchone()
    return row


def _match_from_row(match_id: str, row: _MatchRow) -> MatchRecord:
    """Build a ``MatchRecord``, raising ``msgspec.DecodeError`` or ``ValueError`` on bad data."""
    queue, teams, ratings, waits, state, created_at, ended_at, reason, server, ranks, scores, ratings_after = row[:12]
    explanation = row[12]
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
        server=server,
        ranks=_ranks_decoder.decode(ranks or "null"),
        scores=_scores_decoder.decode(scores or "null"),
        ratings_after=_ratings_after_decoder.decode(ratings_after or "null"),
        explanation=_explanation_decoder.decode(explanation or "null"),
    )


def _count_matches(connection: sqlite3.Connection) -> int:
    (count,) = connection.execute("SELECT count(*) FROM matches").fetchone()
    return int(count)


def _select_history(connection: sqlite3.Connection, player_id: str, limit: int) -> list[_HistoryRow]:
    rows: list[_HistoryRow] = connection.execute(_SELECT_HISTORY, (player_id, limit)).fetchall()
    return rows


def _history_from_row(row: _HistoryRow) -> HistoryEntry:
    """Build a ``HistoryEntry``, raising ``ValueError`` on an unknown match state."""
    match, queue, state, reason, team, rank, score, before, after, created_at, ended_at = row
    return HistoryEntry(match, queue, MatchState(state), reason, team, rank, score, before, after, created_at, ended_at)
