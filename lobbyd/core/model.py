"""Domain records of the lobby: queue rules, players, tickets and matches.

Times are seconds since the Unix epoch as floats, passed in by the caller as
``now``; the core never reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from lobbyd.core.expansion import Expansion
from lobbyd.core.penalties import Penalty, PenaltyLadder
from lobbyd.core.ratings import DEFAULT_ORDINAL_K, Skill, sigma_points, skill_from_rating
from lobbyd.core.roles import RoleAssignment

DEFAULT_RATING: Final = 1500


@dataclass(frozen=True, slots=True)
class QueueRules:
    """How one queue forms matches.

    The rating window of a ticket is ``window_start + window_growth * wait``, capped at
    ``window_max``, in rating points, where ``wait`` is in seconds. On top of that comes
    ``window_uncertainty`` times the ticket's sigma in rating points, so that a player
    whose rating is still a rough guess looks further; 0, the default here, turns it off.
    When ``rating_steps`` is set, it replaces the linear window: the window is the
    limit of the step the wait reached (``Expansion``), and a lifted limit is infinite.
    ``region`` is where game servers for this queue's matches must be, unless
    ``latency_steps`` is set: then each match is hosted in the region its players'
    latencies pick (``choose_region``), within the limit of the anchor's wait.
    ``roles`` gives every team one player per role; see ``lobbyd.core.roles``.
    """

    name: str
    team_count: int = 2
    team_size: int = 1
    window_start: float = 50.0
    window_growth: float = 10.0
    window_max: float = 1000.0
    window_uncertainty: float = 0.0
    region: str = "default"
    rating_steps: Expansion | None = None
    party_sizes: tuple[int, ...] = (1,)
    """Party sizes that may queue; a party is one ticket and never split across teams."""
    max_premade_gap: int | None = None
    """Cap on the difference between the largest party on any two teams; None: no cap."""
    roles: tuple[str, ...] = ()
    """The positions of a team, one player each; empty when the queue assigns no roles."""
    autofill_after: float | None = None
    """Seconds a player waits before they may get a role they did not list; None: never."""
    latency_steps: Expansion | None = None
    """Round-trip latency limit in milliseconds by the anchor's wait; None: the queue's region."""
    regions: tuple[str, ...] = ()
    """Regions a latency queue may host matches in; empty allows any region players report."""

    @property
    def constrained(self) -> bool:
        """True when groups must also pass role or region checks, which cost matchmaking time."""
        return bool(self.roles) or self.latency_steps is not None

    @property
    def match_size(self) -> int:
        return self.team_count * self.team_size

    def window(self, wait: float, uncertainty: float = 0.0) -> float:
        """Return the rating window, in points, of a ticket that waited ``wait`` seconds.

        ``uncertainty`` is the ticket's sigma in rating points.
        """
        if self.rating_steps is not None:
            return self.rating_steps.limit_at(wait) + self.window_uncertainty * uncertainty
        grown = min(self.window_start + self.window_growth * max(wait, 0.0), self.window_max)
        return grown + self.window_uncertainty * uncertainty

    def expansion_step(self, wait: float) -> int | None:
        """Return the rating step a ticket that waited ``wait`` seconds is on; None without steps."""
        if self.rating_steps is None:
            return None
        return self.rating_steps.step_at(wait)


@dataclass(frozen=True, slots=True)
class LobbySettings:
    ready_timeout: float = 10.0
    """Seconds every matched player has to accept."""

    heartbeat_ms: int = 10_000
    """Interval at which clients should send a message, sent in ``welcome``."""

    finished_ttl: float = 300.0
    """Seconds a finished ready check is remembered, so late replies get a clear error."""

    max_matches_per_tick: int = 50
    """Matches one tick may form across all queues. It bounds how long a tick holds
    the event loop (about 4 ms for 50 5v5 matches); when it is reached the lobby
    sets ``more_to_match`` and the server ticks again as soon as I/O has run."""

    dev_mode: bool = False
    """True when the server checks no player tokens; ``welcome`` reports it."""

    rating_k: float = DEFAULT_ORDINAL_K
    """How many sigmas the display rating subtracts from mu."""

    penalties: PenaltyLadder | None = None
    """The dodge penalty ladder; None lets players decline without consequence."""


class Place(enum.Enum):
    """Where a player is; a player is in exactly one place at a time."""

    IDLE = "idle"
    QUEUED = "queued"
    READY_CHECK = "ready_check"
    IN_MATCH = "in_match"
    """Every player accepted: the match is being allocated a game server or is running on it."""


@dataclass(frozen=True, slots=True)
class PlayerRecord:
    """What the store keeps about a player.

    ``mu`` and ``sigma`` are None until the player's first rated match; until then the
    player's skill is ``skill_from_rating(rating)``.
    """

    id: str
    name: str
    rating: int
    first_seen: float
    last_seen: float
    mu: float | None = None
    sigma: float | None = None
    games: int = 0
    """Rated matches played."""
    wins: int = 0
    """Rated matches whose first place the player's team took alone."""
    penalty_level: int = 0
    """Rung of the dodge penalty ladder at ``penalty_since``; 0 is a clean record."""
    penalty_since: float = 0.0
    """When the last dodge happened."""
    locked_until: float = 0.0
    """When the lockout of the last dodge ends; join_queue is rejected before then."""

    @property
    def penalty(self) -> Penalty:
        return Penalty(self.penalty_level, self.penalty_since, self.locked_until)


# Player and Ticket are msgspec Structs with gc=False: they hold only strings,
# numbers, enums and containers of those, so they can never be part of a reference
# cycle, and leaving
# them out of the garbage collector keeps a full collection with 100,000 waiting
# players from pausing the event loop for tens of milliseconds.


class Player(msgspec.Struct, gc=False):
    """A known player and, while connected, their session and place."""

    id: str
    name: str
    rating: int
    first_seen: float
    last_seen: float
    session: str | None = None
    place: Place = Place.IDLE
    queue: str | None = None
    match: str | None = None
    skill: Skill | None = None
    """None until the first rated match: see ``PlayerRecord``."""
    games: int = 0
    wins: int = 0
    party: str | None = None
    """Id of the party the player is in, if any."""
    penalty_level: int = 0
    penalty_since: float = 0.0
    locked_until: float = 0.0

    @property
    def current_skill(self) -> Skill:
        return self.skill if self.skill is not None else skill_from_rating(self.rating)

    @property
    def penalty(self) -> Penalty:
        return Penalty(self.penalty_level, self.penalty_since, self.locked_until)

    @penalty.setter
    def penalty(self, value: Penalty) -> None:
        self.penalty_level, self.penalty_since, self.locked_until = value.level, value.since, value.locked_until

    def record(self) -> PlayerRecord:
        mu = self.skill.mu if self.skill is not None else None
        sigma = self.skill.sigma if self.skill is not None else None
        return PlayerRecord(
            self.id,
            self.name,
            self.rating,
            self.first_seen,
            self.last_seen,
            mu,
            sigma,
            self.games,
            self.wins,
            self.penalty_level,
            self.penalty_since,
            self.locked_until,
        )


class Ticket(msgspec.Struct, gc=False):
    """One player's place in one queue.

    ``waiting_since`` is when the wait began and survives requeues after a cancelled
    ready check; ``priority`` puts a requeued ticket ahead of newer ones; ``seq`` is
    the arrival order, the last tie-break.
    """

    player: str
    queue: str
    rating: int
    waiting_since: float
    seq: int
    priority: bool = False
    skill: Skill | None = None
    """The player's skill when the ticket was made; None means ``skill_from_rating(rating)``."""
    members: tuple[str, ...] = ()
    """Every player of a party ticket, leader (``player``) first; empty for a solo ticket.
    A party ticket's ``rating`` and ``skill`` are the party's mean, which the pool indexes."""
    member_ratings: tuple[int, ...] = ()
    member_skills: tuple[Skill, ...] = ()
    role_prefs: tuple[tuple[str, ...], ...] = ()
    """Each player's preferred roles, most wanted first, in ``players`` order; empty: none listed."""
    latency: dict[str, float] | None = None
    """Round-trip milliseconds by region; a party ticket carries its leader's report."""

    @property
    def current_skill(self) -> Skill:
        return self.skill if self.skill is not None else skill_from_rating(self.rating)

    @property
    def size(self) -> int:
        """Players on the ticket: the party's size, or 1."""
        return len(self.members) or 1

    @property
    def players(self) -> tuple[str, ...]:
        return self.members or (self.player,)

    @property
    def skills(self) -> tuple[Skill, ...]:
        """Each player's skill, in ``players`` order."""
        return self.member_skills or (self.current_skill,)

    def prefs_of(self, index: int) -> tuple[str, ...]:
        """Return the preferred roles of the ticket's ``index``-th player."""
        return self.role_prefs[index] if self.role_prefs else ()

    def rating_of(self, player: str) -> int:
        if not self.members:
            return self.rating
        return self.member_ratings[self.members.index(player)]

    @property
    def uncertainty(self) -> float:
        """The skill's sigma in rating points, which widens the ticket's window."""
        return sigma_points(self.current_skill)


class MatchState(enum.Enum):
    STARTED = "started"
    CANCELLED = "cancelled"
    FINISHED = "finished"
    """Its game server reported a result, and ratings moved."""
    ABANDONED = "abandoned"
    """It started but ended without a result: its game server was lost or it ran too long."""


@dataclass(frozen=True, slots=True)
class MatchRecord:
    """A finished ready check as the store keeps it."""

    id: str
    queue: str
    teams: tuple[tuple[str, ...], ...]
    ratings: tuple[tuple[int, ...], ...]
    state: MatchState
    created_at: float
    ended_at: float
    reason: str | None = None
    waits: tuple[float, ...] = field(default=())
    """Seconds each player waited from joining the queue to the match, in team order."""
    server: str | None = None
    """Address of the game server that hosts the match, when one was allocated."""
    ranks: tuple[int, ...] | None = None
    """Place of each team, 0 first, equal places a draw; set once a result is applied."""
    scores: tuple[tuple[float | None, ...], ...] | None = None
    """Per-player scores the game server reported, parallel to ``teams``."""
    ratings_after: tuple[tuple[int, ...], ...] | None = None
    """Display ratings after the result, parallel to ``teams``."""
    explanation: Mapping[str, object] | None = None
    """Why the matchmaker formed the match: ``expansion_step``, ``rating_spread``,
    ``win_probability`` (two teams only), ``region``, ``anchor_wait`` in seconds, and in a
    role queue ``roles``: player id to {``role``, ``autofilled``}."""
    region: str | None = None
    """Region the match is hosted in: chosen by latency, or the queue's region."""
    roles: Mapping[str, RoleAssignment] | None = None
    """Each player's role in a role queue; None in a queue without roles."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One match in a player's history, as the store returns it."""

    match: str
    queue: str
    state: MatchState
    reason: str | None
    team: int
    rank: int | None
    """The place of the player's team, 0 first; None without a result."""
    score: float | None
    rating_before: int
    rating_after: int | None
    created_at: float
    ended_at: float
