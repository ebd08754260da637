"""Wire messages of protocol v1, one tagged union per direction.

Every message is a map whose string field ``type`` names it. A request may carry
``rid``, an unsigned integer that the reply or error it causes echoes back. Unknown
fields are ignored so that later minor versions can add fields without breaking
older peers; the names and meanings below do not change within v1.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Final

import msgspec

PROTOCOL_VERSION: Final = 1

# rid fits both an unsigned and a signed 64-bit integer, so that C++, C# and Rust
# clients can use a native counter of either kind (msgspec also caps bounds at int64).
MAX_RID: Final = 2**63 - 1

# Player ids, queue names and match ids use one safe alphabet so that they can be
# logged, used as file names and typed into netcat without escaping.
ID_PATTERN: Final = r"^[A-Za-z0-9_.-]+$"
MAX_ID_LENGTH: Final = 64
MAX_NAME_LENGTH: Final = 64
MAX_TOKEN_LENGTH: Final = 4096

Rid = Annotated[int, msgspec.Meta(ge=0, le=MAX_RID)]
Identifier = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
DisplayName = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
# C0 controls (NUL, newline, escape, ...), DEL and the C1 controls of Unicode.
_CONTROL_CHARACTER: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
Token = Annotated[str, msgspec.Meta(max_length=MAX_TOKEN_LENGTH)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]

# A game-server address is "host:port" or "[v6]:port", with room for a DNS name of 253
# characters. A match has at most 64 teams, the most a queue may have.
MAX_ADDRESS_LENGTH: Final = 262
MAX_TEAMS: Final = 64
MAX_HISTORY: Final = 100
DEFAULT_HISTORY: Final = 10
DEFAULT_REGION: Final = "default"
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ADDRESS_LENGTH)]
Reason = Annotated[str, msgspec.Meta(max_length=200)]
Capacity = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
TeamIndex = Annotated[int, msgspec.Meta(ge=0, lt=MAX_TEAMS)]
Rank = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]

# The core assigns a team's roles by trying every permutation, so a queue has at most
# 7 roles (5,040 permutations); see lobbyd.core.roles.
MAX_ROLES: Final = 7
# A client reports its latency to at most this many regions; a round trip of more
# than a minute is not a measurement a match could use.
MAX_LATENCY_REGIONS: Final = 32
MAX_LATENCY_MS: Final = 60_000.0
RoleList = Annotated[list[Identifier], msgspec.Meta(max_length=MAX_ROLES)]
LatencyMs = Annotated[float, msgspec.Meta(ge=0, le=MAX_LATENCY_MS)]
Score = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]


class _Message(msgspec.Struct, tag_field="type", frozen=True, omit_defaults=True, kw_only=True):
    rid: Rid | None = None


# Client to server.


class Hello(_Message, tag="hello", frozen=True):
    v: Version
    player: Identifier
    name: DisplayName | None = None
    token: Token | None = None

    def __post_init__(self) -> None:
        # Other players see the name, so it may not hide text or break a log line
        # or a client's list with control characters. msgspec reports the ValueError
        # as a validation error, which the peer gets as invalid_field.
        found = _CONTROL_CHARACTER.search(self.name) if self.name is not None else None
        if found is not None:
            code = ord(found.group())
            msg = f"field `name` contains the control character U+{code:04X}: a display name holds printable text"
            raise ValueError(msg)


class Ping(_Message, tag="ping", frozen=True):
    pass


class JoinQueue(_Message, tag="join_queue", frozen=True):
    queue: Identifier
    roles: RoleList | None = None
    """Preferred roles in a role queue, most wanted first; empty or omitted: any role."""
    party_roles: Annotated[dict[Identifier, RoleList], msgspec.Meta(max_length=64)] | None = None
    """A party leader's list of each other member's preferred roles, by player id."""
    latency: Annotated[dict[Identifier, LatencyMs], msgspec.Meta(max_length=MAX_LATENCY_REGIONS)] | None = None
    """Round-trip time in milliseconds to each region the client measured."""


class LeaveQueue(_Message, tag="leave_queue", frozen=True):
    queue: Identifier | None = None


class Accept(_Message, tag="accept", frozen=True):
    match: Identifier


class Decline(_Message, tag="decline", frozen=True):
    match: Identifier


class GetProfile(_Message, tag="get_profile", frozen=True):
    pass


class GetHistory(_Message, tag="get_history", frozen=True):
    # The wire name is "limit". A null limit must decode as an absent one, so the
    # field itself is optional and the ``limit`` property supplies the default.
    requested_limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_HISTORY)] | None = msgspec.field(
        default=None, name="limit"
    )

    @property
    def limit(self) -> int:
        """Entries to return, newest first: the requested number, or 10 when the request had none."""
        return DEFAULT_HISTORY if self.requested_limit is None else self.requested_limit


class CreateParty(_Message, tag="create_party", frozen=True):
    pass


class InviteToParty(_Message, tag="invite_to_party", frozen=True):
    player: Identifier


class JoinParty(_Message, tag="join_party", frozen=True):
    party: Identifier


class DeclineParty(_Message, tag="decline_party", frozen=True):
    party: Identifier


class LeaveParty(_Message, tag="leave_party", frozen=True):
    pass


class KickFromParty(_Message, tag="kick_from_party", frozen=True):
    player: Identifier


class PromoteInParty(_Message, tag="promote_in_party", frozen=True):
    player: Identifier


# Game server to lobbyd.


class Register(_Message, tag="register", frozen=True):
    v: Version
    server: Identifier
    secret: Token
    address: Address
    capacity: Capacity
    queues: Annotated[list[Identifier], msgspec.Meta(min_length=1, max_length=256)]
    region: Identifier | None = None
    """Region of the server; absent or null: DEFAULT_REGION."""


class Allocated(_Message, tag="allocated", frozen=True):
    match: Identifier


class AllocationRefused(_Message, tag="allocation_refused", frozen=True):
    match: Identifier
    reason: Reason | None = None


class MatchResult(_Message, tag="match_result", frozen=True):
    """A finished match: ``winner`` (a team index) or ``ranks`` (one place per team), not both."""

    match: Identifier
    winner: TeamIndex | None = None
    ranks: Annotated[list[Rank], msgspec.Meta(max_length=MAX_TEAMS)] | None = None
    scores: Annotated[dict[Identifier, Score], msgspec.Meta(max_length=4096)] | None = None


class ReleasePlayer(_Message, tag="release_player", frozen=True):
    match: Identifier
    player: Identifier


ClientMessage = (
    Hello
    | Ping
    | JoinQueue
    | LeaveQueue
    | Accept
    | Decline
    | GetProfile
    | GetHistory
    | CreateParty
    | InviteToParty
    | JoinParty
    | DeclineParty
    | LeaveParty
    | KickFromParty
    | PromoteInParty
    | Register
    | Allocated
    | AllocationRefused
    | MatchResult
    | ReleasePlayer
)

CLIENT_TYPES: Final = frozenset(str(cls.__struct_config__.tag) for cls in typing.get_args(ClientMessage))

# Requests only a registered game server may send; players send the rest, and ping is both's.
GAME_SERVER_REQUESTS: Final = (Allocated, AllocationRefused, MatchResult, ReleasePlayer)


# Server to client.


class Welcome(_Message, tag="welcome", frozen=True):
    session: str
    player: str
    heartbeat_ms: int
    rating: int | None = None
    dev_mode: bool = False
    """True when the server checks no tokens; omitted when False."""


class Pong(_Message, tag="pong", frozen=True):
    pass


class Queued(_Message, tag="queued", frozen=True):
    queue: str


class LeftQueue(_Message, tag="left_queue", frozen=True):
    queue: str
    reason: str | None = None
    """Why the server took the player out on its own (``queue_removed``, ``unavailable``); omitted in a reply."""


class MatchFound(_Message, tag="match_found", frozen=True):
    match: str
    queue: str
    players: int
    accept_ms: int
    region: str | None = None
    role: str | None = None
    """The receiver's role in a role queue; omitted in a queue without roles."""
    autofilled: bool = False
    """True when ``role`` is one the receiver did not list; omitted when False."""


class Accepted(_Message, tag="accepted", frozen=True):
    match: str


class MatchCancelled(_Message, tag="match_cancelled", frozen=True):
    match: str
    reason: str
    requeued: bool
    penalty_level: int | None = None
    """The receiver's rung on the dodge penalty ladder, sent only to a player this cancel penalised."""
    lockout_ms: int | None = None
    """Milliseconds the penalised receiver may not queue; 0 for a warning."""


class MatchStart(_Message, tag="match_start", frozen=True):
    match: str
    queue: str
    team: int
    teams: list[list[str]]
    server: str | None = None
    ratings: list[list[int]] | None = None
    ticket: str | None = None
    """The receiver's join ticket for the game server at ``server``."""
    region: str | None = None
    """Region the match is hosted in."""
    role: str | None = None
    """The receiver's role in a role queue; omitted in a queue without roles."""
    autofilled: bool = False
    """True when ``role`` is one the receiver did not list; omitted when False."""


class Party(_Message, tag="party", frozen=True):
    """The party as it is now, sent to every member after each change."""

    party: str
    leader: str
    members: list[str]
    invited: list[str]
    reason: str
    """What changed: ``created``, ``invited``, ``joined``, ``invite_declined``, ``left``,
    ``kicked``, ``promoted`` or ``disconnected``."""


class PartyInvite(_Message, tag="party_invite", frozen=True):
    party: str
    leader: str
    members: list[str]


class PartyLeft(_Message, tag="party_left", frozen=True):
    """The receiver is no longer in ``party``: they left or were kicked."""

    party: str
    reason: str


class Kicked(_Message, tag="kicked", frozen=True):
    reason: str
    retry_after_ms: int | None = None
    """How long to wait before reconnecting, sent with reason shutdown."""


class Error(_Message, tag="error", frozen=True):
    code: str
    message: str
    retry_after_ms: int | None = None
    """How long to wait before trying again, sent with server_full and rate_limited."""


class MatchEnded(_Message, tag="match_ended", frozen=True):
    match: str
    reason: str


class RatingChanged(_Message, tag="rating_changed", frozen=True):
    match: str
    rating: int
    change: int
    mu: float
    sigma: float
    games: int
    wins: int


class Profile(_Message, tag="profile", frozen=True):
    player: str
    name: str
    rating: int
    mu: float
    sigma: float
    games: int
    wins: int


class HistoryMatch(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One entry of ``history``: a match the player started, newest first."""

    match: str
    queue: str
    state: str
    team: int
    rating_before: int
    started_ms: int
    ended_ms: int
    rank: int | None = None
    score: float | None = None
    rating_after: int | None = None
    reason: str | None = None


class History(_Message, tag="history", frozen=True):
    matches: list[HistoryMatch]


# Lobbyd to game server.


class Registered(_Message, tag="registered", frozen=True):
    session: str
    server: str
    heartbeat_ms: int
    allocate_ms: int


class AllocatedPlayer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One player of an ``allocate``, with a join ticket for them (signed apart from their ``match_start`` one)."""

    player: str
    name: str
    team: int
    ticket: str
    role: str | None = None
    """The player's role in a role queue; omitted otherwise."""


class Allocate(_Message, tag="allocate", frozen=True):
    match: str
    queue: str
    teams: list[list[str]]
    players: list[AllocatedPlayer]
    allocate_ms: int
    region: str | None = None
    """Region the match was placed in, which is the server's own."""


class Deallocate(_Message, tag="deallocate", frozen=True):
    match: str
    reason: str


class ResultApplied(_Message, tag="result_applied", frozen=True):
    match: str


class PlayerReleased(_Message, tag="player_released", frozen=True):
    match: str
    player: str


ServerMessage = (
    Welcome
    | Pong
    | Queued
    | LeftQueue
    | MatchFound
    | Accepted
    | MatchCancelled
    | MatchStart
    | Kicked
    | Error
    | MatchEnded
    | RatingChanged
    | Profile
    | History
    | Party
    | PartyInvite
    | PartyLeft
    | Registered
    | Allocate
    | Deallocate
    | ResultApplied
    | PlayerReleased
)
