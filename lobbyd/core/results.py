"""Check a game server's match result against its match and turn it into places and scores."""

from __future__ import annotations

from dataclasses import dataclass

from lobbyd.core.model import MatchRecord
from lobbyd.errors import InvalidResult
from lobbyd.protocol import messages as m


@dataclass(frozen=True, slots=True)
class Outcome:
    """A checked result: one place per team (0 first, dense, ties share a place) and scores."""

    ranks: tuple[int, ...]
    scores: tuple[tuple[float | None, ...], ...] | None

    def won(self, team: int) -> bool:
        """Return whether ``team`` took first place alone; a shared first place is a draw."""
        return self.ranks[team] == 0 and self.ranks.count(0) == 1


def check_result(record: MatchRecord, result: m.MatchResult) -> Outcome:
    """Return the outcome ``result`` reports for ``record``; raise ``InvalidResult`` if it does not fit."""
    team_count = len(record.teams)
    if (result.winner is None) == (result.ranks is None):
        msg = f"match_result for {record.id!r} needs exactly one of winner and ranks"
        raise InvalidResult(msg, rid=result.rid)

    if result.winner is not None:
        if result.winner >= team_count:
            msg = f"winner {result.winner} is not a team of match {record.id!r}: it has teams 0 to {team_count - 1}"
            raise InvalidResult(msg, rid=result.rid)
        places = [0 if team == result.winner else 1 for team in range(team_count)]
    else:
        assert result.ranks is not None
        if len(result.ranks) != team_count:
            msg = f"ranks has {len(result.ranks)} entries, but match {record.id!r} has {team_count} teams"
            raise InvalidResult(msg, rid=result.rid)
        places = list(result.ranks)

    return Outcome(_dense(places), _scores(record, result))


def _dense(places: list[int]) -> tuple[int, ...]:
    """Renumber places 0, 1, 2, ... keeping their order and ties: [3, 1, 3] becomes (1, 0, 1)."""
    order = {value: index for index, value in enumerate(sorted(set(places)))}
    return tuple(order[place] for place in places)


def _scores(record: MatchRecord, result: m.MatchResult) -> tuple[tuple[float | None, ...], ...] | None:
    if result.scores is None:
        return None
    players = {player for team in record.teams for player in team}
    strangers = sorted(set(result.scores) - players)
    if strangers:
        msg = f"scores name players who are not in match {record.id!r}: {', '.join(strangers)}"
        raise InvalidResult(msg, rid=result.rid)
    return tuple(tuple(result.scores.get(player) for player in team) for team in record.teams)
