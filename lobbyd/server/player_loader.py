"""Coalesce the store lookups of many simultaneous logins into one query.

A storm of logins would otherwise cost one trip to the store's worker thread per
player. ``load`` queues the id and the first request of a batch schedules one
``load_players`` call for everything queued until the loop runs it; each caller
gets its own record from the batch.
"""

from __future__ import annotations

import asyncio

from lobbyd.core.model import PlayerRecord
from lobbyd.server import logs
from lobbyd.store.base import Store

log = logs.get(__name__)


class PlayerLoader:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: dict[str, list[asyncio.Future[PlayerRecord | None]]] = {}
        self.batches = 0

    async def load(self, player_id: str) -> PlayerRecord | None:
        """Return ``player_id``'s stored record; raises what the store raises."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PlayerRecord | None] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._start_batch)
        self._waiting.setdefault(player_id, []).append(future)
        return await future

    def _start_batch(self) -> None:
        batch, self._waiting = self._waiting, {}
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        # The task resolves every future itself; keep a reference until it ends.
        _running.add(task)
        task.add_done_callback(_running.discard)

    async def _run_batch(self, batch: dict[str, list[asyncio.Future[PlayerRecord | None]]]) -> None:
        self.batches += 1
        try:
            records = await self._store.load_players(list(batch))
        except Exception as exc:
            log.error("player_batch_load_failed", players=len(batch), error=str(exc))
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for player_id, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(records.get(player_id))


_running: set[asyncio.Task[None]] = set()
