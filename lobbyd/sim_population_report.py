"""Observations of ``lobbyd sim --population`` bots, turned into the tuning report of ``lobbyd replay``.

The bots record each ``match_start`` they receive: the teams, the ratings at match
time, the hosting region and the receiver's role. The report's figures come from
those messages and from the bots' own clocks:

- wait: from the ``join_queue`` that queued the player's ticket to the ``match_found``
  of the match that started. A ticket the server put back in the queue keeps its wait,
  as in the server.
- rating spread: highest minus lowest rating in ``match_start.ratings``.
- win probability: computed with the server's formula from the skills the server held
  for the players when the match started, which the bots learn from ``get_profile``
  at login and from ``rating_changed``. The protocol does not send the server's own
  figure. The hidden win probability uses the population's hidden skills instead.
- penalties: ``match_cancelled`` messages that carry ``penalty_level``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lobbyd.core.ratings import Skill, win_probability
from lobbyd.tuning import report


@dataclass(frozen=True, slots=True)
class Seat:
    """One receiver's view of a started match."""

    wait: float
    """Seconds from the ticket's join to the match's match_found, or to match_start if no match_found came."""
    role: str | None
    autofilled: bool | None
    """None in a queue without roles."""


@dataclass(slots=True)
class ObservedMatch:
    """A started match as its players' ``match_start`` messages describe it."""

    match: str
    queue: str
    teams: list[list[str]]
    ratings: list[list[int]]
    region: str | None
    skills: dict[str, Skill | None]
    """The server's skill for each player when the first match_start arrived; None if unknown."""
    seats: dict[str, Seat] = field(default_factory=dict)
    """Each of our players who received the match_start, by player id."""

    def win_gap(self) -> float | None:
        """Return abs(win probability - 0.5) by the server's skills; None unless two teams of known skills."""
        if len(self.teams) != 2:
            return None
        teams = [[self.skills.get(player) for player in team] for team in self.teams]
        first, second = ([skill for skill in team if skill is not None] for team in teams)
        if len(first) + len(second) != sum(len(team) for team in self.teams):
            return None
        return abs(win_probability(first, second) - 0.5)


@dataclass(frozen=True, slots=True)
class PlayerFacts:
    """A population player as the report bands them."""

    queue: str
    skill: float
    """Hidden skill in mu units, from the population."""
    rating: int
    """The display rating the server gave the player at their last login."""


@dataclass(slots=True)
class Observations:
    """Everything the bots of one run recorded, shared by all of them."""

    matches: dict[str, ObservedMatch] = field(default_factory=dict)
    cancelled: dict[str, str] = field(default_factory=dict)
    """Cancelled ready checks: match id to reason, once per match."""
    penalties: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    """Rejected join_queue and party requests by error code; queue_locked is retried, not counted."""
    server_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    """Errors that replied to no pending request of ours, by code."""
    late_answers: int = 0
    """Accepts and declines that reached the server after the ready check had ended."""

    def record_start(
        self, player: str, message: Mapping[str, Any], seat: Seat, skill_of: Callable[[str], Skill | None]
    ) -> None:
        """Add ``player``'s ``match_start``; the first receiver's copy sets the teams and the server's skills."""
        match = str(message["match"])
        observed = self.matches.get(match)
        if observed is None:
            teams = [[str(player_id) for player_id in team] for team in _lists(message.get("teams"))]
            ratings = [[int(rating) for rating in team] for team in _lists(message.get("ratings"))]
            region = message.get("region")
            observed = ObservedMatch(
                match=match,
                queue=str(message["queue"]),
                teams=teams,
                ratings=ratings,
                region=region if isinstance(region, str) else None,
                skills={player_id: skill_of(player_id) for team in teams for player_id in team},
            )
            self.matches[match] = observed
        observed.seats[player] = seat


def _lists(value: object) -> list[list[Any]]:
    if not isinstance(value, list):
        return []
    return [list(item) for item in value if isinstance(item, list)]


def samples(observations: Observations, players: Mapping[str, PlayerFacts], band_by: str) -> list[report.Sample]:
    """Return one sample per player of ours per started match, in the order the matches started."""
    found = []
    for observed in observations.matches.values():
        ratings = [rating for team in observed.ratings for rating in team]
        spread = float(max(ratings) - min(ratings)) if ratings else 0.0
        rating_of = dict(zip((p for team in observed.teams for p in team), ratings, strict=False))
        win_gap = observed.win_gap()
        for player, seat in observed.seats.items():
            facts = players.get(player)
            if facts is None:
                continue
            rating = rating_of.get(player, facts.rating)
            sample = report.Sample(
                observed.match,
                observed.queue,
                player,
                rating,
                facts.skill,
                round(seat.wait, 3),
                spread,
                win_gap,
                seat.autofilled,
                band_rating=report.band_rating(rating, facts.skill, band_by),
                region=observed.region,
            )
            found.append(sample)
    return found


def build(
    observations: Observations,
    players: Mapping[str, PlayerFacts],
    *,
    source: str,
    duration_s: float,
    band_width: int,
    band_by: str,
) -> tuple[report.Report, list[report.Sample]]:
    """Return the tuning report of a live run, and the samples behind it for the plots."""
    entrants = {
        player: report.Entrant(facts.queue, report.band_rating(facts.rating, facts.skill, band_by))
        for player, facts in players.items()
    }
    facts = report.RunFacts(
        policy="live",
        source=source,
        entrants=entrants,
        penalties=observations.penalties,
        cancelled=collections.Counter(observations.cancelled.values()),
        rejected=observations.rejected,
        duration_s=round(duration_s, 3),
        late_answers=observations.late_answers,
    )
    found = samples(observations, players, band_by)
    skills = {player: facts.skill for player, facts in players.items()}
    gaps = report.hidden_win_gaps(_teams(observations.matches.values()), skills)
    return report.summarise(facts, found, gaps, band_width, band_by), found


def _teams(matches: Iterable[ObservedMatch]) -> list[list[list[str]]]:
    return [observed.teams for observed in matches]


def starts_per_player(observations: Observations, players: Iterable[str]) -> collections.Counter[int]:
    """Return how many players started no match, one, or more (as 2)."""
    counts: collections.Counter[str] = collections.Counter()
    for observed in observations.matches.values():
        counts.update(observed.seats.keys())
    return collections.Counter(min(counts[player], 2) for player in players)


@dataclass(frozen=True, slots=True)
class Summary:
    """A live run's own figures, printed after the tuning report."""

    players: int
    groups: int
    """Arrivals of the population: solo players and parties."""
    started: int
    """Players who received at least one match_start."""
    matched_more_than_once: int
    never_matched: int
    groups_failed: int
    first_failure: str | None
    unexpected_closes: int
    server_errors: dict[str, int]
    roles_dropped: bool
    """True when the daemon rejected the population's roles and the bots stopped sending them."""
    results_applied: int | None
    """Match results the bot game servers reported and the daemon applied; None without them."""
    game_server_errors: dict[str, int]
    end: str
    """Why the run ended."""
    ok: bool
    """No player started two matches, no group gave up and the game servers kept running."""


def format_summary(summary: Summary) -> str:
    """Return the live run's figures as label and value lines."""
    errors = ", ".join(f"{code} {count}" for code, count in summary.server_errors.items()) or "none"
    rows = [
        ("players", f"{summary.players} in {summary.groups} arrivals"),
        ("started a match", str(summary.started)),
        ("matched more than once", str(summary.matched_more_than_once)),
        ("never matched", str(summary.never_matched)),
        ("arrivals that gave up", str(summary.groups_failed)),
        ("unexpected disconnects", str(summary.unexpected_closes)),
        ("server errors", errors),
    ]
    if summary.roles_dropped:
        rows.append(("roles", "not sent: the daemon rejected them for this queue"))
    if summary.results_applied is not None:
        game_server_errors = ", ".join(f"{code} {count}" for code, count in summary.game_server_errors.items())
        rows.append(("results applied", str(summary.results_applied)))
        rows.append(("game server errors", game_server_errors or "none"))
    rows.append(("run ended", summary.end))
    verdict = "ok" if summary.ok else f"FAILED: {summary.first_failure or 'a player started more than one match'}"
    rows.append(("result", verdict))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
