"""Write dirty records to the store in batches, and commit started matches at once.

Memory is authoritative. Changed players and cancelled matches are marked dirty and
written by the flusher every ``interval`` seconds. A started match is committed
before any player hears of it, in the same transaction as whatever else is dirty.
The one ``asyncio.Lock`` of the daemon guards the write: a batch is taken out of the
dirty maps and written while holding it, so two writes never interleave and a
record marked dirty during a write goes into the next batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from lobbyd.core.model import MatchRecord, PlayerRecord
from lobbyd.errors import StoreError
from lobbyd.server import logs
from lobbyd.server.metrics import Metrics
from lobbyd.store.base import Store

# Retries after a failed flush wait 0.1 s, doubling up to this bound, so a store
# that is down for a while is retried every few seconds rather than hammered.
MAX_RETRY_DELAY: Final = 5.0

log = logs.get(__name__)


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

    async def commit_match(self, record: MatchRecord) -> None:
        """Write ``record`` (and everything dirty) now; raises ``StoreError`` on failure."""
        self._matches[record.id] = record
        await self.flush()

    async def flush(self) -> int:
        """Write every dirty record in one transaction; return how many were written.

        On failure the batch is put back, unless a newer version of a record was
        marked meanwhile, and ``StoreError`` is raised.
        """
        async with self._lock:
            players, self._players = self._players, {}
            matches, self._matches = self._matches, {}
            if not players and not matches:
                return 0
            started = time.perf_counter()
            try:
                await self.store.save(list(players.values()), list(matches.values()))
            except StoreError:
                self._players = players | self._players
                self._matches = matches | self._matches
                self.failures += 1
                raise
            self.flushes += 1
            count = len(players) + len(matches)
            elapsed = time.perf_counter() - started
            self.metrics.flush_seconds.observe(elapsed)
            self.metrics.flush_records.observe(count)
            log.debug("flush_done", records=count, ms=round(elapsed * 1000, 2))
            return count

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
