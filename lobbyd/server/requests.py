"""What sessions hand to the matchmaker loop through its ``asyncio.Queue``.

The queue keeps arrival order, so a session's requests are applied in the order the
client sent them, and a session's ``Gone`` always comes after its last request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lobbyd.core.model import PlayerRecord
from lobbyd.protocol.messages import ClientMessage, Hello, Register, ServerMessage

if TYPE_CHECKING:
    from lobbyd.server.session import Session


@dataclass(frozen=True, slots=True)
class Login:
    """A valid ``hello``, with what the store holds for the player (``None`` if new)."""

    session: Session
    hello: Hello
    record: PlayerRecord | None


@dataclass(frozen=True, slots=True)
class Registration:
    """A ``register`` whose secret checked out: the session is a game server's."""

    session: Session
    register: Register


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request of an authenticated session for the lobby."""

    session: Session
    message: ClientMessage


@dataclass(frozen=True, slots=True)
class Relay:
    """A reply made by the session itself, sent in turn behind its earlier requests.

    ``close``: the reply ends the session, which closes once it is sent.
    """

    session: Session
    message: ServerMessage
    close: bool = False


@dataclass(frozen=True, slots=True)
class Gone:
    """The session's connection is closed."""

    session: Session


Request = Login | Registration | Incoming | Relay | Gone
