"""A store that keeps everything in process memory: for tests and throwaway runs."""

from __future__ import annotations

from collections.abc import Sequence

from lobbyd.core.model import MatchRecord, PlayerRecord


class MemoryStore:
    """Dicts behind the ``Store`` interface; everything is lost when the process exits."""

    def __init__(self) -> None:
        self.players: dict[str, PlayerRecord] = {}
        self.matches: dict[str, MatchRecord] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def load_player(self, player_id: str) -> PlayerRecord | None:
        return self.players.get(player_id)

    async def load_players(self, player_ids: Sequence[str]) -> dict[str, PlayerRecord]:
        return {pid: self.players[pid] for pid in player_ids if pid in self.players}

    async def save(self, players: Sequence[PlayerRecord], matches: Sequence[MatchRecord]) -> None:
        self.players.update((record.id, record) for record in players)
        self.matches.update((record.id, record) for record in matches)

    async def load_match(self, match_id: str) -> MatchRecord | None:
        return self.matches.get(match_id)

    async def count_matches(self) -> int:
        return len(self.matches)
