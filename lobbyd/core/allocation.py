"""A hosted match from its game-server allocation to its end, as a table of transitions.

    allocating --acknowledge----> running
    allocating --refuse---------> cancelled
    allocating --time_out-------> cancelled
    allocating --lose_server----> cancelled
    running ----report----------> finished
    running ----lose_server-----> abandoned
    running ----time_out--------> abandoned
    running ----fail_storage----> cancelled

``finished``, ``abandoned`` and ``cancelled`` are final. An event the table does not
list is a bug of ours and raises ``IllegalMatchTransition``. A cancelled match never
started for its players, so they go back to the queue; an abandoned one did, so they
only go idle, and nobody's rating moves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from lobbyd.core.model import MatchRecord, Ticket


class MatchPhase(enum.Enum):
    ALLOCATING = "allocating"
    RUNNING = "running"
    FINISHED = "finished"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"


class MatchEvent(enum.Enum):
    ACKNOWLEDGE = "acknowledge"
    REFUSE = "refuse"
    TIME_OUT = "time_out"
    LOSE_SERVER = "lose_server"
    REPORT = "report"
    FAIL_STORAGE = "fail_storage"


TRANSITIONS: Final[dict[tuple[MatchPhase, MatchEvent], MatchPhase]] = {
    (MatchPhase.ALLOCATING, MatchEvent.ACKNOWLEDGE): MatchPhase.RUNNING,
    (MatchPhase.ALLOCATING, MatchEvent.REFUSE): MatchPhase.CANCELLED,
    (MatchPhase.ALLOCATING, MatchEvent.TIME_OUT): MatchPhase.CANCELLED,
    (MatchPhase.ALLOCATING, MatchEvent.LOSE_SERVER): MatchPhase.CANCELLED,
    (MatchPhase.RUNNING, MatchEvent.REPORT): MatchPhase.FINISHED,
    (MatchPhase.RUNNING, MatchEvent.LOSE_SERVER): MatchPhase.ABANDONED,
    (MatchPhase.RUNNING, MatchEvent.TIME_OUT): MatchPhase.ABANDONED,
    (MatchPhase.RUNNING, MatchEvent.FAIL_STORAGE): MatchPhase.CANCELLED,
}


class IllegalMatchTransition(RuntimeError):
    """A hosted match received an event its phase does not allow: a bug in the core."""

    def __init__(self, match: str, phase: MatchPhase, event: MatchEvent) -> None:
        super().__init__(f"hosted match {match}: event {event.value!r} is illegal in phase {phase.value!r}")


@dataclass(slots=True)
class HostedMatch:
    """A match whose players all accepted, on the game server ``server``.

    ``bound`` are the players still held by the match (place ``in_match``); a player
    leaves it when the server releases them or the match ends. ``tickets`` keep each
    player's queue wait, so that a cancelled allocation requeues them with it.
    """

    record: MatchRecord
    """The match as it started, with ``server`` set to the game server's address."""
    tickets: dict[str, Ticket]
    server: str
    session: str
    """The game server's session, where allocate and deallocate go."""
    deadline: float
    """When the allocation times out, then when the running match does."""
    phase: MatchPhase = MatchPhase.ALLOCATING
    bound: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.record.id

    def apply(self, event: MatchEvent) -> MatchPhase:
        """Move to the phase the table gives for ``event`` and return it."""
        target = TRANSITIONS.get((self.phase, event))
        if target is None:
            raise IllegalMatchTransition(self.id, self.phase, event)
        self.phase = target
        return target

    def team_of(self, player: str) -> int:
        return next(index for index, team in enumerate(self.record.teams) if player in team)
