"""The ready check: every matched player accepts before a deadline, or the match ends.

States and transitions, as data:

    pending --accept (not the last)--> pending
    pending --accept (the last)------> started
    pending --decline----------------> cancelled
    pending --expire-----------------> cancelled
    pending --disconnect-------------> cancelled
    pending --void-------------------> cancelled
    pending --party_changed----------> cancelled

``started`` and ``cancelled`` are final; any event there is a bug of ours and raises
``IllegalTransition`` naming the state, the event and the match.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from lobbyd.core.model import Ticket
from lobbyd.core.roles import RoleAssignment


class CheckState(enum.Enum):
    PENDING = "pending"
    STARTED = "started"
    CANCELLED = "cancelled"


class CheckEvent(enum.Enum):
    ACCEPT = "accept"
    LAST_ACCEPT = "last_accept"
    DECLINE = "decline"
    EXPIRE = "expire"
    DISCONNECT = "disconnect"
    VOID = "void"
    PARTY_CHANGED = "party_changed"


TRANSITIONS: Final[dict[tuple[CheckState, CheckEvent], CheckState]] = {
    (CheckState.PENDING, CheckEvent.ACCEPT): CheckState.PENDING,
    (CheckState.PENDING, CheckEvent.LAST_ACCEPT): CheckState.STARTED,
    (CheckState.PENDING, CheckEvent.DECLINE): CheckState.CANCELLED,
    (CheckState.PENDING, CheckEvent.EXPIRE): CheckState.CANCELLED,
    (CheckState.PENDING, CheckEvent.DISCONNECT): CheckState.CANCELLED,
    (CheckState.PENDING, CheckEvent.VOID): CheckState.CANCELLED,
    (CheckState.PENDING, CheckEvent.PARTY_CHANGED): CheckState.CANCELLED,
}

# The wire reason sent in match_cancelled for each cancelling event.
CANCEL_REASONS: Final[dict[CheckEvent, str]] = {
    CheckEvent.DECLINE: "declined",
    CheckEvent.EXPIRE: "expired",
    CheckEvent.DISCONNECT: "disconnected",
    CheckEvent.VOID: "undeliverable",
    CheckEvent.PARTY_CHANGED: "party_changed",
}


class IllegalTransition(RuntimeError):
    """A ready check received an event its state does not allow: a bug in the core."""

    def __init__(self, match: str, state: CheckState, event: CheckEvent) -> None:
        super().__init__(f"ready check {match}: event {event.value!r} is illegal in state {state.value!r}")
        self.match = match
        self.state = state
        self.event = event


@dataclass(slots=True)
class ReadyCheck:
    """One proposed match waiting for every player to accept.

    ``tickets`` maps each player to the ticket they were matched from, kept so that a
    cancelled check can requeue players with their original wait. The members of a
    party share one ticket.
    """

    match: str
    queue: str
    teams: tuple[tuple[str, ...], ...]
    tickets: dict[str, Ticket]
    created_at: float
    deadline: float
    accepted: set[str] = field(default_factory=set)
    state: CheckState = CheckState.PENDING
    explanation: dict[str, object] = field(default_factory=dict)
    """Why the match formed, stored with its record."""
    region: str | None = None
    """Region chosen for the match; None for a check restored without one, which uses the queue's."""
    roles: dict[str, RoleAssignment] = field(default_factory=dict)
    """Each player's role in a role queue."""

    @property
    def players(self) -> tuple[str, ...]:
        return tuple(player for team in self.teams for player in team)

    def apply(self, event: CheckEvent) -> CheckState:
        """Move to the state the table gives for ``event`` and return it."""
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise IllegalTransition(self.match, self.state, event)
        self.state = target
        return target

    def accept(self, player: str) -> CheckState:
        """Record ``player``'s accept; a repeated accept changes nothing."""
        self.accepted.add(player)
        last = len(self.accepted) == len(self.tickets)
        return self.apply(CheckEvent.LAST_ACCEPT if last else CheckEvent.ACCEPT)
