"""The one exception tree of lobbyd.

``RemoteError`` and its subclasses are the peer's fault and carry the wire ``code``
that the client receives in an ``error`` message. Everything else is ours: it is
logged with its traceback and reaches the wire only as the code ``internal``.
This module imports nothing from lobbyd so that every layer may use it.
"""

from __future__ import annotations

from typing import ClassVar


class LobbydError(Exception):
    """Base of every exception that lobbyd raises on purpose."""


class ConfigError(LobbydError):
    """Invalid configuration: a bad key, value, flag or file."""


class StoreError(LobbydError):
    """Persistence failed: the database could not be opened, read or written."""


class SharedStateError(LobbydError):
    """The cluster's shared state (Redis) could not be reached or answered too late."""


class RemoteError(LobbydError):
    """A peer broke the protocol or asked for something it may not have.

    ``code`` is the wire error code; ``fatal`` errors close the connection after the
    error is sent; ``rid`` is the request id to echo, when the request had a valid one.
    """

    code: ClassVar[str] = "invalid_request"
    fatal: ClassVar[bool] = False
    retry_after_ms: int | None = None
    """Milliseconds until the same request may succeed, sent in the error when set."""

    def __init__(self, message: str, *, rid: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rid = rid


class BadFrame(RemoteError):
    """The byte stream cannot be framed or decoded; the connection is closed."""

    code = "bad_frame"
    fatal = True


class UnknownType(RemoteError):
    code = "unknown_type"


class InvalidField(RemoteError):
    code = "invalid_field"


class NotAuthenticated(RemoteError):
    code = "not_authenticated"


class AlreadyAuthenticated(RemoteError):
    code = "already_authenticated"


class UnsupportedVersion(RemoteError):
    code = "unsupported_version"


class UnknownQueue(RemoteError):
    code = "unknown_queue"


class AlreadyQueued(RemoteError):
    code = "already_queued"


class NotQueued(RemoteError):
    code = "not_queued"


class InReadyCheck(RemoteError):
    code = "in_ready_check"


class UnknownMatch(RemoteError):
    code = "unknown_match"


class ShuttingDown(RemoteError):
    code = "shutting_down"


class InvalidToken(RemoteError):
    """The hello's token is missing, malformed, expired or for someone else; the connection closes."""

    code = "invalid_token"
    fatal = True


class RateLimited(RemoteError):
    code = "rate_limited"


class ServerFull(RemoteError):
    code = "server_full"
    fatal = True


class ServerBusy(RemoteError):
    """A request that found the matchmaker's request queue full; it changed nothing."""

    code = "server_busy"


class InMatch(RemoteError):
    """A request that needs the player free while their match is being allocated or runs."""

    code = "in_match"


class WrongRole(RemoteError):
    """A player sent a game-server request, or a game server a player request."""

    code = "wrong_role"


class InvalidSecret(RemoteError):
    """A register whose secret is wrong, or to a lobby that takes no registrations; the connection closes."""

    code = "invalid_secret"
    fatal = True


class InvalidResult(RemoteError):
    """A match_result that does not fit its match: no or both of winner and ranks, wrong sizes, unknown players."""

    code = "invalid_result"


class AlreadyReported(RemoteError):
    """A game-server request for a match whose result was applied before; nothing changed."""

    code = "already_reported"


class MatchOver(RemoteError):
    """A game-server request for a match that ended without a result, or was never acknowledged."""

    code = "match_over"


class UnknownPlayer(RemoteError):
    code = "unknown_player"
class Unavailable(RemoteError):
    """A cluster node cannot reach the shared state; the client retries after ``retry_after_ms``."""

    code = "unavailable"


class InvalidPartySize(RemoteError):
    """A join_queue whose party size the queue does not take."""

    code = "invalid_party_size"


class AlreadyInParty(RemoteError):
    code = "already_in_party"


class NotInParty(RemoteError):
    code = "not_in_party"


class NotPartyLeader(RemoteError):
    """A request only the party's leader may send: join_queue, invite, kick, promote."""

    code = "not_party_leader"


class UnknownParty(RemoteError):
    """A party that does not exist, or that did not invite the player."""

    code = "unknown_party"


class PartyFull(RemoteError):
    """An invite or join that would make the party larger than any queue takes."""

    code = "party_full"


class QueueLocked(RemoteError):
    """A join_queue from a player serving a dodge penalty lockout."""

    code = "queue_locked"

    def __init__(self, message: str, *, retry_after_ms: int, rid: int | None = None) -> None:
        super().__init__(message, rid=rid)
        self.retry_after_ms = retry_after_ms


# Every error code a client can receive, for protocol.md and the conformance tests.
# ``internal`` is sent when a request hit a bug of ours; the session stays open.
ERROR_CODES: tuple[str, ...] = (
    BadFrame.code,
    UnknownType.code,
    InvalidField.code,
    NotAuthenticated.code,
    AlreadyAuthenticated.code,
    UnsupportedVersion.code,
    UnknownQueue.code,
    AlreadyQueued.code,
    NotQueued.code,
    InReadyCheck.code,
    UnknownMatch.code,
    ShuttingDown.code,
    InvalidToken.code,
    RateLimited.code,
    ServerFull.code,
    ServerBusy.code,
    InMatch.code,
    WrongRole.code,
    InvalidSecret.code,
    InvalidResult.code,
    AlreadyReported.code,
    MatchOver.code,
    UnknownPlayer.code,
    Unavailable.code,
    QueueLocked.code,
    InvalidPartySize.code,
    AlreadyInParty.code,
    NotInParty.code,
    NotPartyLeader.code,
    UnknownParty.code,
    PartyFull.code,
    "internal",
)


class StartupError(LobbydError):
    """The daemon cannot start: a listener cannot bind or a passed socket is unusable."""


def lowercase_start(message: str) -> str:
    """Lowercase the first letter of a library's message, so that it reads on after a colon.

    A first word in capitals, such as "JSON" or "MessagePack", keeps its case.
    """
    first_word = message.split(" ", 1)[0]
    if any(letter.isupper() for letter in first_word[1:]):
        return message
    return message[:1].lower() + message[1:]
