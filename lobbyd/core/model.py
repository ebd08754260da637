"""Domain records of the lobby: queue rules, players, tickets and matches.

Times are seconds since the Unix epoch as floats, passed in by the caller as
``now``; the core never reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

import msgspec

DEFAULT_RATING: Final = 1500


@dataclass(frozen=True, slots=True)
class QueueRules:
    """How one queue forms matches.

    The rating window of a ticket is ``window_start + window_growth * wait``, capped at
    ``window_max``, in rating points, where ``wait`` is in seconds.
    """

    name: str
    team_count: int = 2
    team_size: int = 1
    window_start: float = 50.0
    window_growth: float = 10.0
    window_max: float = 1000.0

    @property
    def match_size(self) -> int:
        return self.team_count * self.team_size

    def window(self, wait: float) -> float:
        """Return the rating window, in points, of a ticket that waited ``wait`` seconds."""
        return min(self.window_start + self.window_growth * max(wait, 0.0), self.window_max)


@dataclass(frozen=True, slots=True)
class LobbySettings:
    ready_timeout: float = 10.0
    """Seconds every matched player has to accept."""

    heartbeat_ms: int = 10_000
    """Interval at which clients are told to send something, sent in ``welcome``."""

    finished_ttl: float = 300.0
    """Seconds a finished ready check is remembered, so late answers get a clear error."""

    max_matches_per_tick: int = 50
    """Matches one tick may form across all queues. It bounds how long a tick holds
    the event loop (about 4 ms for 50 5v5 matches); when it is reached the lobby
    sets ``more_to_match`` and the server ticks again as soon as I/O has run."""

    dev_mode: bool = False
    """True when the server checks no player tokens; ``welcome`` says so."""


class Place(enum.Enum):
    """Where a player is; a player is in exactly one place at a time."""

    IDLE = "idle"
    QUEUED = "queued"
    READY_CHECK = "ready_check"


@dataclass(frozen=True, slots=True)
class PlayerRecord:
    """What the store keeps about a player."""

    id: str
    name: str
    rating: int
    first_seen: float
    last_seen: float


# Player and Ticket are msgspec Structs with gc=False: they hold only strings,
# numbers and enums, so they can never be part of a reference cycle, and leaving
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

    def record(self) -> PlayerRecord:
        return PlayerRecord(self.id, self.name, self.rating, self.first_seen, self.last_seen)


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


class MatchState(enum.Enum):
    STARTED = "started"
    CANCELLED = "cancelled"


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
