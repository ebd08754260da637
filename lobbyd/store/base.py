"""The storage interface every backend implements.

Memory is authoritative while the daemon runs; a store is where it writes players and
finished matches so that a restart, or a crash, loses nothing a client was told.
``save`` writes one batch atomically: all of it or none of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lobbyd.core.model import HistoryEntry, MatchRecord, PlayerRecord


class Store(Protocol):
    async def open(self) -> None:
        """Connect, create the schema when missing, and check it can be written."""

    async def close(self) -> None:
        """Release connections; calling it twice is harmless."""

    async def load_player(self, player_id: str) -> PlayerRecord | None:
        """Return the stored record of ``player_id``, or ``None`` for an unknown player."""

    async def load_players(self, player_ids: Sequence[str]) -> dict[str, PlayerRecord]:
        """Return the stored records of those of ``player_ids`` the store knows."""

    async def save(self, players: Sequence[PlayerRecord], matches: Sequence[MatchRecord]) -> None:
        """Upsert ``players`` and ``matches`` in one transaction.

        A later record of the same id replaces the earlier one. Raises ``StoreError``
        when the write fails; nothing of the batch is stored then.
        """

    async def load_match(self, match_id: str) -> MatchRecord | None:
        """Return the stored match ``match_id``, or ``None``."""

    async def count_matches(self) -> int:
        """Return how many matches are stored, in any state."""

    async def load_history(self, player_id: str, limit: int) -> list[HistoryEntry]:
        """Return the last ``limit`` matches ``player_id`` started, newest first.

        Cancelled ready checks are not part of a history.
        """


class ResultStore(Protocol):
    """A store shared by every node of a cluster, which applies each match result once."""

    async def apply_match_result(self, record: MatchRecord, players: Sequence[PlayerRecord]) -> bool:
        """Store the finished match and its rated players unless its result is stored; return whether this call did."""
