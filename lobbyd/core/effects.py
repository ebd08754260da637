"""What the core asks the server to do after a state change.

The core returns a list of effects in the order they must happen; the server carries
them out. Effects address sessions, not players, so that a message meant for a
session that has since been replaced never reaches its successor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lobbyd.core.model import MatchRecord, PlayerRecord
from lobbyd.protocol.messages import ServerMessage


@dataclass(frozen=True, slots=True)
class Send:
    session: str
    message: ServerMessage


@dataclass(frozen=True, slots=True)
class Close:
    """Close a session after the messages already sent to it are written."""

    session: str
    reason: str


@dataclass(frozen=True, slots=True)
class OfferMatch:
    """Send ``match_found`` to every player of a new ready check.

    The server first checks that every session can still take it; if any cannot, it
    calls ``Lobby.void_match`` instead of sending anything. The server must do this in
    the same synchronous step as the ``tick`` that returned the effect: a disconnect
    applied in between would cancel the check and message players never offered it.
    """

    match: str
    sends: tuple[Send, ...]


@dataclass(frozen=True, slots=True)
class StartMatch:
    """Commit ``record`` to storage, then send each ``match_start``."""

    record: MatchRecord
    sends: tuple[Send, ...]


@dataclass(frozen=True, slots=True)
class FinishMatch:
    """Commit ``record`` and the rated ``players`` to storage, then send ``sends``.

    The sends go out even if the commit fails: the result is already applied in
    memory, and the records stay dirty for the flusher to retry.
    """

    record: MatchRecord
    players: tuple[PlayerRecord, ...]
    sends: tuple[Send, ...]


@dataclass(frozen=True, slots=True)
class SavePlayer:
    record: PlayerRecord


@dataclass(frozen=True, slots=True)
class SaveMatch:
    """Store a match that did not start; no client waits on this write."""

    record: MatchRecord


@dataclass(frozen=True, slots=True)
class Event:
    """A domain event for logs and metrics: a snake_case name and the ids involved."""

    name: str
    fields: Mapping[str, object]


Effect = Send | Close | OfferMatch | StartMatch | FinishMatch | SavePlayer | SaveMatch | Event
