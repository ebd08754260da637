"""A store that keeps everything in process memory: for tests and throwaway runs."""

from __future__ import annotations

from collections.abc import Sequence

from lobbyd.core.model import HistoryEntry, MatchRecord, MatchState, PlayerRecord


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

    async def load_history(self, player_id: str, limit: int) -> list[HistoryEntry]:
        entries = [entry for match in self.matches.values() if (entry := _history_entry(match, player_id))]
        entries.sort(key=lambda entry: (entry.created_at, entry.match), reverse=True)
        return entries[:limit]


def _history_entry(match: MatchRecord, player_id: str) -> HistoryEntry | None:
    """Return the player's entry for ``match``, or None if they did not play in it."""
    if match.state is MatchState.CANCELLED:
        return None
    for team_index, team in enumerate(match.teams):
        if player_id not in team:
            continue
        slot = team.index(player_id)
        return HistoryEntry(
            match=match.id,
            queue=match.queue,
            state=match.state,
            reason=match.reason,
            team=team_index,
            rank=match.ranks[team_index] if match.ranks is not None else None,
            score=match.scores[team_index][slot] if match.scores is not None else None,
            rating_before=match.ratings[team_index][slot],
            rating_after=match.ratings_after[team_index][slot] if match.ratings_after is not None else None,
            created_at=match.created_at,
            ended_at=match.ended_at,
        )
    return None
