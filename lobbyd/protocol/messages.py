"""Wire messages of protocol v1, one tagged union per direction.

Every message is a map whose string field ``type`` names it. A request may carry
``rid``, an unsigned integer that the reply or error it causes echoes back. Unknown
fields are ignored so that later minor versions can add fields without breaking
older peers; the names and meanings below do not change within v1.
"""

from __future__ import annotations

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
Token = Annotated[str, msgspec.Meta(max_length=MAX_TOKEN_LENGTH)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]


class _Message(msgspec.Struct, tag_field="type", frozen=True, omit_defaults=True, kw_only=True):
    rid: Rid | None = None


# Client to server.


class Hello(_Message, tag="hello", frozen=True):
    v: Version
    player: Identifier
    name: DisplayName | None = None
    token: Token | None = None


class Ping(_Message, tag="ping", frozen=True):
    pass


class JoinQueue(_Message, tag="join_queue", frozen=True):
    queue: Identifier


class LeaveQueue(_Message, tag="leave_queue", frozen=True):
    queue: Identifier | None = None


class Accept(_Message, tag="accept", frozen=True):
    match: Identifier


class Decline(_Message, tag="decline", frozen=True):
    match: Identifier


ClientMessage = Hello | Ping | JoinQueue | LeaveQueue | Accept | Decline

CLIENT_TYPES: Final = frozenset(
    str(cls.__struct_config__.tag) for cls in (Hello, Ping, JoinQueue, LeaveQueue, Accept, Decline)
)


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
    """Sent only when the server took the player out on its own, such as ``unavailable``."""


class MatchFound(_Message, tag="match_found", frozen=True):
    match: str
    queue: str
    players: int
    accept_ms: int


class Accepted(_Message, tag="accepted", frozen=True):
    match: str


class MatchCancelled(_Message, tag="match_cancelled", frozen=True):
    match: str
    reason: str
    requeued: bool


class MatchStart(_Message, tag="match_start", frozen=True):
    match: str
    queue: str
    team: int
    teams: list[list[str]]
    server: str | None = None
    ratings: list[list[int]] | None = None


class Kicked(_Message, tag="kicked", frozen=True):
    reason: str


class Error(_Message, tag="error", frozen=True):
    code: str
    message: str
    retry_after_ms: int | None = None
    """How long to wait before trying again, sent with server_full and rate_limited."""


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
)
