"""Write dirty records to the store in batches, and commit started and finished matches at once.

Memory is authoritative. Changed players and cancelled matches are marked dirty and
written by the flusher every ``interval`` seconds. A started match is committed
before any player hears of it, and a finished one before its result is acknowledged,
in one transaction with its players' unwritten records. The one ``asyncio.Lock`` of
the daemon guards the write: a batch is taken out of the dirty maps and written while
holding it, so two writes never interleave and a record marked dirty during a write
goes into the next batch.

The players of a match waiting for its commit are pinned: the flusher leaves their
dirty records to that commit. Otherwise the flusher could write a player's new rating
in one transaction and a kill could stop the match's own transaction, leaving a
rating change without its result.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Container, Iterable
from typing import Final, TypeVar

from lobbyd.core.model import MatchRecord, PlayerRecord
from lobbyd.errors import StoreError
from lobbyd.server import logs
from lobbyd.server.metrics import Metrics
from lobbyd.store.base import Store

_R = TypeVar("_R")

# Retries after a failed flush wait 0.1 s, doubling up to this bound, so a store
# that is down for a while is retried every few seconds rather than hammered.
MAX_RETRY_DELAY: Final = 5.0

# Records per transaction of the periodic flush: small enough that a match commit
# waiting behind one never waits long (about 2 ms for 256 players with SQLite here).
BATCH_RECORDS: Final = 256

log = logs.get(__name__)


def _take(records: dict[str, _R], count: int, pinned: Container[str] = ()) -> dict[str, _R]:
    """Remove and return up to ``count`` of the oldest entries of ``records`` whose key is not ``pinned``."""
    if count <= 0:
        return {}
    if not pinned and len(records) <= count:
        taken = dict(records)
        records.clear()
        return taken
    keys = list(itertools.islice((key for key in records if key not in pinned), count))
    return {key: records.pop(key) for key in keys}


class Persistence:
    def __init__(self, store: Store, interval: float, metrics: Metrics | None = None) -> None:
        self.store = store
        self.interval = interval
        self.metrics = metrics or Metrics()
        self._lock = asyncio.Lock()
        self._players: dict[str, PlayerRecord] = {}
        self._matches: dict[str, MatchRecord] = {}
        self.flushes = 0
        self.failures = 0
        # Group commit of started matches: the commits waiting for the next write, each
        # with the future its caller awaits, and whether a task will take them.
        self._commits: list[tuple[MatchRecord, tuple[str, ...], asyncio.Future[None]]] = []
        self._group_queued = False
        self._group_tasks: set[asyncio.Task[None]] = set()
        # Players of the queued commits, by how many commits name them.
        self._pinned: collections.Counter[str] = collections.Counter()

    @property
    def dirty(self) -> int:
        return len(self._players) + len(self._matches)

    def mark_player(self, record: PlayerRecord) -> None:
        self._players[record.id] = record

    def mark_match(self, record: MatchRecord) -> None:
        self._matches[record.id] = record

    def pending_player(self, player_id: str) -> PlayerRecord | None:
        """Return a player record that is dirty and not yet written, if any."""
        return self._players.get(player_id)

    async def commit_match(self, record: MatchRecord, players: Iterable[str] = ()) -> None:
        """Write ``record`` and the unwritten records of ``players`` now.

        Raises ``StoreError`` when the write fails; the player records stay dirty then.
        See ``commit_match_soon``.
        """
        await self.commit_match_soon(record, players)

    def commit_match_soon(self, record: MatchRecord, players: Iterable[str] = ()) -> asyncio.Future[None]:
        """Queue ``record`` and the unwritten records of ``players`` for the next write.

        Commits that arrive while another is being written join the next group, and
        a group is one transaction (group commit): twenty matches started in the same
        instant cost one write, not twenty in a row. The returned future is done once
        the group is written, or holds the ``StoreError`` of its failed write.
        Cancelling the future does not take the record out of its group.
        """
        loop = asyncio.get_running_loop()
        players = tuple(players)
        written: asyncio.Future[None] = loop.create_future()
        self._commits.append((record, players, written))
        self._pinned.update(players)
        if not self._group_queued:
            self._group_queued = True
            task = loop.create_task(self._commit_group())
            self._group_tasks.add(task)
            task.add_done_callback(self._group_tasks.discard)
        return written

    async def _commit_group(self) -> None:
        async with self._lock:
            # Commits queued from here on belong to the next group.
            commits, self._commits = self._commits, []
            self._group_queued = False
            matches = {record.id: record for record, _, _ in commits}
            involved = {player for _, players, _ in commits for player in players}
            batch = {pid: self._players.pop(pid) for pid in involved if pid in self._players}
            # Taken under the lock, so the flusher can no longer write these records first.
            for _, players, _ in commits:
                self._unpin(players)
            for match in matches:
                self._matches.pop(match, None)
            try:
                await self._save(batch, matches, requeue_matches=False)
            except StoreError as exc:
                for _, _, written in commits:
                    if not written.done():
                        written.set_exception(exc)
                return
            for _, _, written in commits:
                if not written.done():
                    written.set_result(None)

    def _unpin(self, players: tuple[str, ...]) -> None:
        for player in players:
            self._pinned[player] -= 1
            if self._pinned[player] <= 0:
                del self._pinned[player]

    async def flush(self) -> int:
        """Write every dirty record, in transactions of at most ``BATCH_RECORDS``.

        Returns how many were written. The lock is taken per transaction, so a match
        commit waits for one batch at most, never for a whole backlog. Records of
        pinned players are left to the commit that pinned them, which this call waits
        for when nothing else is left. On failure the failed batch is put back, unless
        a newer version of a record was marked meanwhile, and ``StoreError`` is raised.
        """
        written = 0
        while self._players or self._matches:
            batch = await self._flush_batch()
            if batch:
                written += batch
            elif self._group_tasks:
                # Only pinned records are left, so wait for the commits that write them.
                await asyncio.wait(set(self._group_tasks))
            else:
                break
        return written

    async def _flush_batch(self) -> int:
        async with self._lock:
            matches = _take(self._matches, BATCH_RECORDS)
            players = _take(self._players, BATCH_RECORDS - len(matches), self._pinned)
            if not players and not matches:
                return 0
            await self._save(players, matches, requeue_matches=True)
            return len(players) + len(matches)

    async def _save(
        self, players: dict[str, PlayerRecord], matches: dict[str, MatchRecord], *, requeue_matches: bool
    ) -> None:
        started = time.perf_counter()
        try:
            await self.store.save(list(players.values()), list(matches.values()))
        except StoreError:
            self._players = players | self._players
            if requeue_matches:
                self._matches = matches | self._matches
            self.failures += 1
            raise
        self.flushes += 1
        count = len(players) + len(matches)
        elapsed = time.perf_counter() - started
        self.metrics.flush_seconds.observe(elapsed)
        self.metrics.flush_records.observe(count)
        log.debug("flush_done", records=count, ms=round(elapsed * 1000, 2))

    async def run(self) -> None:
        """Flush every ``interval`` seconds until cancelled, retrying with backoff."""
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
            except StoreError as exc:
                delay = min(max(delay * 2, 0.1), MAX_RETRY_DELAY)
                log.error("flush_failed", error=str(exc), dirty=self.dirty, retry_in_s=delay)
                continue
            delay = self.interval
