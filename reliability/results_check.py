"""Check from a lobbyd SQLite database that every applied result changed ratings exactly once.

A result is applied in one transaction: the match row becomes ``finished`` with its
``ranks`` and ``ratings_after``, and each player's row gets the new ``rating``,
``mu``, ``sigma``, ``games`` and ``wins``. So the stored players must equal a replay
of the stored results: start every player at a new player's skill, apply the
finished matches in the order they ended with ``lobbyd.core.ratings.rate``, and
compare. A result applied twice, applied without its match row, or lost with its
match row kept, makes some player's stored figures differ from the replay.

The replay assumes what the crash test sets up: every player starts as a new player
(rating 1500, no skill), and the daemon runs with the default ``rating_k``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from lobbyd.core.ratings import DEFAULT_ORDINAL_K, NEW_SKILL, Skill, display_rating, rate

# Problems listed per check; the rest are counted, so one systematic bug does not flood the report.
MAX_LISTED: Final = 10

_FINISHED: Final = """
    SELECT id, teams, ratings, ranks, ratings_after FROM matches
    WHERE state = 'finished' ORDER BY ended_at, id
"""


@dataclass(slots=True)
class ResultsVerdict:
    """Findings of the replay: the problems, and the counts of what it compared."""

    problems: list[str] = field(default_factory=list)
    results_replayed: int = 0
    players_rated: int = 0
    acknowledged_checked: int = 0

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)
        elif len(self.problems) == MAX_LISTED:
            self.problems.append("more problems were found; only the first are listed")


@dataclass(slots=True)
class _Replayed:
    skill: Skill = NEW_SKILL
    games: int = 0
    wins: int = 0


def check_results(database: Path, acknowledged: Mapping[str, Sequence[int]]) -> ResultsVerdict:
    """Replay the finished matches of ``database`` and compare every player with the replay.

    ``acknowledged`` holds the places of every result a game server got ``result_applied``
    for; each must be stored as finished with those places.
    """
    verdict = ResultsVerdict()
    with contextlib.closing(sqlite3.connect(database)) as db:
        finished = db.execute(_FINISHED).fetchall()
        players = {row[0]: row[1:] for row in db.execute("SELECT id, rating, mu, sigma, games, wins FROM players")}
        history = {
            (match, player): (rank, after)
            for match, player, rank, after in db.execute(
                "SELECT mp.match_id, mp.player_id, mp.rank, mp.rating_after FROM match_players AS mp"
                " JOIN matches AS m ON m.id = mp.match_id WHERE m.state = 'finished'"
            )
        }

    replayed: dict[str, _Replayed] = {}
    stored_ranks: dict[str, list[int]] = {}
    for match, teams_json, ratings_json, ranks_json, after_json in finished:
        teams: list[list[str]] = msgspec.json.decode(teams_json)
        ranks: list[int] = msgspec.json.decode(ranks_json or "null") or []
        stored_ranks[match] = ranks
        _replay_match(verdict, replayed, history, match, teams, ranks, ratings_json, after_json)
        verdict.results_replayed += 1

    _compare_players(verdict, replayed, players)
    for match, places in acknowledged.items():
        verdict.acknowledged_checked += 1
        if match not in stored_ranks:
            verdict.add(f"match {match} got result_applied but is not stored as finished")
        elif stored_ranks[match] != list(places):
            verdict.add(f"match {match} is stored with ranks {stored_ranks[match]}, acknowledged with {list(places)}")
    return verdict


def _replay_match(
    verdict: ResultsVerdict,
    replayed: dict[str, _Replayed],
    history: Mapping[tuple[str, str], tuple[int | None, int | None]],
    match: str,
    teams: list[list[str]],
    ranks: list[int],
    ratings_json: str,
    after_json: str | None,
) -> None:
    """Apply one finished match to ``replayed`` and compare its stored figures with the replay."""
    if len(ranks) != len(teams):
        verdict.add(f"match {match} is finished with ranks {ranks} for {len(teams)} teams")
        return
    states = [[replayed.setdefault(player, _Replayed()) for player in team] for team in teams]

    # The ratings a match stores are its players' ratings when it formed, which the
    # replay must give too: a player's rating cannot move while their match runs.
    before = [[display_rating(state.skill, DEFAULT_ORDINAL_K) for state in team] for team in states]
    if msgspec.json.decode(ratings_json) != before:
        verdict.add(f"match {match} stores ratings {ratings_json}, the replay gives {before} before it")

    after = rate([[state.skill for state in team] for team in states], ranks)
    after_ratings = [[display_rating(skill, DEFAULT_ORDINAL_K) for skill in team] for team in after]
    if msgspec.json.decode(after_json or "null") != after_ratings:
        verdict.add(f"match {match} stores ratings_after {after_json}, the replay gives {after_ratings}")

    winners = [team for team, rank in enumerate(ranks) if rank == 0]
    for team_index, team in enumerate(teams):
        for slot, player in enumerate(team):
            state = states[team_index][slot]
            state.skill = after[team_index][slot]
            state.games += 1
            state.wins += 1 if winners == [team_index] else 0
            stored = history.get((match, player))
            expected = (ranks[team_index], after_ratings[team_index][slot])
            if stored != expected:
                verdict.add(f"match {match}: history row of {player} is {stored}, the replay gives {expected}")


def _compare_players(
    verdict: ResultsVerdict,
    replayed: Mapping[str, _Replayed],
    players: Mapping[str, tuple[int, float | None, float | None, int, int]],
) -> None:
    """Compare every stored player with the replay; a player in no finished match must be unrated."""
    for player, (rating, mu, sigma, games, wins) in players.items():
        state = replayed.get(player, _Replayed())
        expected_mu = state.skill.mu if state.games else None
        expected_sigma = state.skill.sigma if state.games else None
        expected_rating = display_rating(state.skill, DEFAULT_ORDINAL_K)
        expected = (expected_rating, expected_mu, expected_sigma, state.games, state.wins)
        if (rating, mu, sigma, games, wins) != expected:
            verdict.add(
                f"player {player} is stored with (rating, mu, sigma, games, wins) "
                f"{(rating, mu, sigma, games, wins)}, the replay of {state.games} results gives {expected}"
            )
        verdict.players_rated += 1 if state.games else 0
    for player in sorted(set(replayed) - set(players)):
        verdict.add(f"player {player} is in a finished match but has no players row")
