"""Messages and records that lobbyd nodes exchange through Redis.

Nodes never talk to each other directly. A node forwards its sessions' lobby
requests to the leader as ``Forward`` entries of one stream; the leader sends what
each session must receive as ``Delivery`` entries of that session's node's stream;
and the leader keeps its matchmaking state in Redis as ``TicketState``,
``CheckSnapshot``, ``PartyRecord``, ``StartingMatch``, ``ServerState``,
``HostedState``, ``EndedState`` and ``FinishingMatch`` records, which a new leader rebuilds its
memory from. ``Presence`` says which node and session a player is connected on.

Session keys name a session across the cluster: ``NODE/SESSION``. Node ids follow
the identifier alphabet, which has no ``/``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from lobbyd.protocol.messages import (
    Accept,
    Allocated,
    AllocationRefused,
    CreateParty,
    Decline,
    DeclineParty,
    GetProfile,
    InviteToParty,
    JoinParty,
    JoinQueue,
    KickFromParty,
    LeaveParty,
    LeaveQueue,
    MatchResult,
    PromoteInParty,
    Register,
    ReleasePlayer,
    ServerMessage,
)

# Requests a node forwards to the leader. ``Register`` arrives with its secret
# blanked, because the node checked it and Redis is no place for secrets.
LobbyRequest = (
    JoinQueue | LeaveQueue | Accept | Decline | GetProfile | Register | Allocated | AllocationRefused | MatchResult
    | ReleasePlayer | CreateParty | InviteToParty | JoinParty | DeclineParty | LeaveParty | KickFromParty
    | PromoteInParty
)
FORWARDED_TYPES: Final = (
    JoinQueue, LeaveQueue, Accept, Decline, GetProfile, Register, Allocated, AllocationRefused, MatchResult,
    ReleasePlayer, CreateParty, InviteToParty, JoinParty, DeclineParty, LeaveParty, KickFromParty, PromoteInParty,
)


def session_key(node: str, session: str) -> str:
    return f"{node}/{session}"


def split_session_key(key: str) -> tuple[str, str]:
    node, _, session = key.partition("/")
    return node, session


class PlayerInfo(msgspec.Struct, frozen=True, array_like=True):
    """A player's stored record, carried so the leader needs no database read.

    ``mu`` and ``sigma`` are None before the first rated match, and the three
    penalty fields are the dodge penalty standing, as in ``PlayerRecord``. Older
    nodes wrote no penalty fields, which then decode as a clean record.
    """

    id: str
    name: str
    rating: int
    first_seen: float
    last_seen: float
    mu: float | None = None
    sigma: float | None = None
    games: int = 0
    wins: int = 0
    penalty_level: int = 0
    penalty_since: float = 0.0
    locked_until: float = 0.0


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
    three requests sessions do not send themselves: ``gone`` (the connection closed),
    ``sync`` (after an outage, tell the player whether they are still queued in
    ``believed_queue``) and ``login`` (the player logged in, so that the leader can
    route a party invite to them before their first request). ``player`` is
    ``None`` for a game server's session.
    """

    node: str
    session: str
    seq: int
    since: float
    player: PlayerInfo | None
    request: LobbyRequest | None = None
    gone: bool = False
    sync: bool = False
    believed_queue: str | None = None
    login: bool = False


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
    """A queue ticket as stored in Redis, with the session key it belongs to.

    ``role_prefs`` and ``latency`` are the ticket's as in ``Ticket``. A party ticket
    is stored once, under its leader. It lists every member in ``members``, leader
    first, with each member's rating and (mu, sigma) in ``member_ratings`` and
    ``member_skills``. A solo ticket leaves the three empty. Fields after ``priority``
    have defaults, so records written by an older node still decode.
    """

    player: PlayerInfo
    session: str
    queue: str
    waiting_since: float
    seq: int
    priority: bool
    role_prefs: list[list[str]] = msgspec.field(default_factory=list)
    latency: dict[str, float] | None = None
    members: list[str] = msgspec.field(default_factory=list)
    member_ratings: list[int] = msgspec.field(default_factory=list)
    member_skills: list[tuple[float, float]] = msgspec.field(default_factory=list)


class RoleState(msgspec.Struct, frozen=True, array_like=True):
    """One player's role in a ready check of a role queue."""

    role: str
    autofilled: bool


class CheckSnapshot(msgspec.Struct, frozen=True, array_like=True):
    """A pending ready check as stored in Redis.

    Fields after ``accepted`` have defaults, so records written by an older node still decode.
    """

    match: str
    queue: str
    teams: list[list[str]]
    tickets: list[TicketState]
    created_at: float
    deadline: float
    accepted: list[str]
    region: str | None = None
    """The region the matchmaker chose; None in records of older nodes, which use the queue's."""
    roles: dict[str, RoleState] = msgspec.field(default_factory=dict)
    """Each player's role in a role queue, by player id."""
    explanation: dict[str, Any] = msgspec.field(default_factory=dict)
    """The matchmaker's explanation of the match, as ``ReadyCheck.explanation``."""


class PartyRecord(msgspec.Struct, frozen=True, array_like=True):
    """A party as stored in Redis: its members, leader first, and the players it invited."""

    id: str
    members: list[str]
    invited: list[str]


class StartingMatch(msgspec.Struct, frozen=True, array_like=True):
    """A match every player accepted, committed in Redis but maybe not yet stored or announced.

    ``sessions`` holds the session key of each player, in team order, or ``""`` for
    a player whose session closed during the ready check. A match placed on a game
    server has its ``server`` address and, parallel to ``sessions``, each player's
    join ticket. ``record`` is the encoded ``MatchRecord`` with every detail (roles,
    region, the matchmaker's explanation); it is empty in entries of older leaders.
    """

    match: str
    queue: str
    teams: list[list[str]]
    ratings: list[list[int]]
    waits: list[float]
    created_at: float
    ended_at: float
    sessions: list[str]
    server: str | None = None
    tickets: list[str] = msgspec.field(default_factory=list)
    record: bytes = b""


class ServerState(msgspec.Struct, frozen=True, array_like=True):
    """A registered game server as stored in Redis, with the session key it is connected on."""

    id: str
    address: str
    region: str
    capacity: int
    queues: list[str]
    session: str


class HostedState(msgspec.Struct, frozen=True, array_like=True):
    """A match that is being allocated or is running on a registered game server.

    ``record`` is the encoded ``MatchRecord`` the match started with. ``tickets`` keep
    each player's queue wait for a requeue, and ``bound`` lists the players the match
    still holds. ``players`` carries every player of the match, so that a new leader
    can rate a player who is offline.
    """

    record: bytes
    tickets: list[TicketState]
    server: str
    session: str
    deadline: float
    phase: str
    bound: list[str]
    players: list[PlayerInfo]


class EndedState(msgspec.Struct, frozen=True, array_like=True):
    """The end of a hosted match, kept so that a late or repeated request of its server gets a precise error."""

    match: str
    phase: str
    at: float
    server: str


class FinishingMatch(msgspec.Struct, frozen=True, array_like=True):
    """A result the leader applied in memory but may not have stored or announced yet.

    ``record`` is the encoded finished ``MatchRecord``, and ``players`` the encoded
    rated ``PlayerRecord`` of each player. ``deliveries`` maps node ids to the encoded
    ``Delivery`` entries that announce the result. Their ids stay the same whichever
    leader sends them.
    """

    match: str
    record: bytes
    players: list[bytes]
    deliveries: dict[str, list[bytes]]


ENCODER: Final = msgspec.msgpack.Encoder()
FORWARD_DECODER: Final = msgspec.msgpack.Decoder(Forward)
DELIVERY_DECODER: Final = msgspec.msgpack.Decoder(Delivery)
TICKET_DECODER: Final = msgspec.msgpack.Decoder(TicketState)
CHECK_DECODER: Final = msgspec.msgpack.Decoder(CheckSnapshot)
STARTING_DECODER: Final = msgspec.msgpack.Decoder(StartingMatch)
SERVER_DECODER: Final = msgspec.msgpack.Decoder(ServerState)
HOSTED_DECODER: Final = msgspec.msgpack.Decoder(HostedState)
ENDED_DECODER: Final = msgspec.msgpack.Decoder(EndedState)
FINISHING_DECODER: Final = msgspec.msgpack.Decoder(FinishingMatch)
PARTY_DECODER: Final = msgspec.msgpack.Decoder(PartyRecord)
# Presence is JSON because the Redis scripts read its ``since`` with cjson.
PRESENCE_ENCODER: Final = msgspec.json.Encoder()
PRESENCE_DECODER: Final = msgspec.json.Decoder(Presence)
