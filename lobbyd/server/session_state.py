"""Session states and the transitions between them, as data.

    new --hello accepted--> authenticated --close--> closed
    new --close-----------> closed

A session in ``new`` may only send ``hello``; every other message is answered with
``not_authenticated``. In ``authenticated`` a further ``hello`` is answered with
``already_authenticated``. ``closed`` is final.
"""

from __future__ import annotations

import enum
from typing import Final


class SessionState(enum.Enum):
    NEW = "new"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


class SessionEvent(enum.Enum):
    HELLO = "hello"
    CLOSE = "close"


TRANSITIONS: Final[dict[tuple[SessionState, SessionEvent], SessionState]] = {
    (SessionState.NEW, SessionEvent.HELLO): SessionState.AUTHENTICATED,
    (SessionState.NEW, SessionEvent.CLOSE): SessionState.CLOSED,
    (SessionState.AUTHENTICATED, SessionEvent.CLOSE): SessionState.CLOSED,
}


class IllegalSessionTransition(RuntimeError):
    def __init__(self, session: str, state: SessionState, event: SessionEvent) -> None:
        super().__init__(f"session {session}: event {event.value!r} is illegal in state {state.value!r}")


def next_state(session: str, state: SessionState, event: SessionEvent) -> SessionState:
    """Return the state after ``event``, or raise ``IllegalSessionTransition``."""
    target = TRANSITIONS.get((state, event))
    if target is None:
        raise IllegalSessionTransition(session, state, event)
    return target
