"""Messages and records that lobbyd nodes exchange through Redis.

Nodes never talk to each other directly. A node forwards its sessions' lobby
requests to the leader as ``Forward`` entries of one stream; the leader sends what
each session must receive as ``Delivery`` entries of that session's node's stream;
and the leader keeps its matchmaking state in Redis as ``TicketState``,
``CheckSnapshot`` and ``StartingMatch`` records, which a new leader rebuilds its
memory from. ``Presence`` says which node and session a player is connected on.

Session keys name a session across the cluster: ``NODE/SESSION``. Node ids follow
the identifier alphabet, which has no ``/``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from lobbyd.protocol.messages import Accept, Decline, JoinQueue, LeaveQueue, ServerMessage

LobbyRequest = JoinQueue | LeaveQueue | Accept | Decline


def session_key(node: str, session: str) -> str:
    return f"{node}/{session}"


def split_session_key(key: str) -> tuple[str, str]:
    node, _, session = key.partition("/")
    return node, session


class PlayerInfo(msgspec.Struct, frozen=True, array_like=True):
    """A player's stored record, carried so the leader needs no database read."""

    id: str
    name: str
    rating: int
    first_seen: float
    last_seen: float


class Presence(msgspec.Struct, frozen=True):
    """Where a player is connected. ``since`` orders two logins of one player."""

    node: str
    session: str
    since: float
    player: PlayerInfo


class Forward(msgspec.Struct, frozen=True, array_like=True):
    """One session's request for the leader.

    ``seq`` numbers the requests of one session that wait for the leader; the
    delivery that answers it lists it in ``done``. ``request`` is ``None`` for the
    two requests sessions do not send themselves: ``gone`` (the connection closed)
    and ``sync`` (after an outage, tell the player whether they are still queued
    in ``believed_queue``).
    """

    node: str
    session: str
    seq: int
    since: float
    player: PlayerInfo
    request: LobbyRequest | None = None
    gone: bool = False
    sync: bool = False
    believed_queue: str | None = None


class Delivery(msgspec.Struct, frozen=True, array_like=True):
    """What one session receives: messages in order, then an optional close.

    ``id`` is unique per delivery. A delivery sent again, by a new leader that
    finishes a start the old one committed, carries the same ``id``, so the node
    drops the copy.
    """

    id: str
    session: str
    messages: list[ServerMessage]
    close: str | None = None
    done: list[int] = msgspec.field(default_factory=list)


class TicketState(msgspec.Struct, frozen=True, array_like=True):
    """A queue ticket as stored in Redis, with the session key it belongs to."""

    player: PlayerInfo
    session: str
    queue: str
    waiting_since: float
    seq: int
    priority: bool


class CheckSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """A pending ready check as stored in Redis."""

    match: str
    queue: str
    teams: list[list[str]]
    tickets: list[TicketState]
    created_at: float
    deadline: float
    accepted: list[str]


class StartingMatch(msgspec.Struct, frozen=True, array_like=True):
    """A match every player accepted, committed in Redis but maybe not yet stored or announced.

    ``sessions`` holds the session key of each player, in team order, or ``""`` for
    a player whose session closed during the ready check.
    """

    match: str
    queue: str
    teams: list[list[str]]
    ratings: list[list[int]]
    waits: list[float]
    created_at: float
    ended_at: float
    sessions: list[str]


ENCODER: Final = msgspec.msgpack.Encoder()
FORWARD_DECODER: Final = msgspec.msgpack.Decoder(Forward)
DELIVERY_DECODER: Final = msgspec.msgpack.Decoder(Delivery)
TICKET_DECODER: Final = msgspec.msgpack.Decoder(TicketState)
CHECK_DECODER: Final = msgspec.msgpack.Decoder(CheckSnapshot)
STARTING_DECODER: Final = msgspec.msgpack.Decoder(StartingMatch)
# Presence is JSON because the Redis scripts read its ``since`` with cjson.
PRESENCE_ENCODER: Final = msgspec.json.Encoder()
PRESENCE_DECODER: Final = msgspec.json.Decoder(Presence)
