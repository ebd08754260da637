"""The game-server role of a session: its credentials, its requests and their routing.

A connection takes a role with its first successful message: ``hello`` makes it a
player session, ``register`` a game-server session. Each role may send only its own
requests (and ``ping``); the other role's get ``wrong_role``. Game-server requests go to
the lobby's ``Hosting``; this module turns them into those calls.
"""

from __future__ import annotations

import enum
import hmac

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import HistoryEntry
from lobbyd.errors import InvalidSecret, UnsupportedVersion, WrongRole
from lobbyd.protocol import messages as m


class SessionRole(enum.Enum):
    PLAYER = "player"
    GAME_SERVER = "game_server"


def check_registration(key: bytes | None, message: m.Register) -> None:
    """Raise unless ``message`` carries protocol version 1 and the game-server secret ``key``."""
    if message.v != m.PROTOCOL_VERSION:
        msg = f"protocol version {message.v} is not supported: this server speaks version {m.PROTOCOL_VERSION}"
        raise UnsupportedVersion(msg, rid=message.rid)
    if key is None:
        msg = "this lobby takes no game-server registrations: it has no game_server_secret"
        raise InvalidSecret(msg, rid=message.rid)
    # compare_digest does not stop at the first differing byte, so the time taken does not
    # reveal how much of the secret matched; it may reveal the length (Python hmac docs).
    if not hmac.compare_digest(message.secret.encode(), key):
        msg = f"secret of game server {message.server!r} does not match this lobby's game_server_secret"
        raise InvalidSecret(msg, rid=message.rid)


def check_player_request(message: m.ClientMessage) -> None:
    """Raise ``WrongRole`` for a game-server request on a player session."""
    if isinstance(message, m.GAME_SERVER_REQUESTS):
        kind = message.__struct_config__.tag
        msg = f"{kind!r} is a game-server request, and this session is a player's"
        raise WrongRole(msg, rid=message.rid)


def dispatch(lobby: Lobby, session: str, message: m.ClientMessage, now: float) -> list[fx.Effect]:
    """Apply one request of the registered game server on ``session``."""
    hosting = lobby.hosting
    assert hosting is not None, "a game server registered with a lobby that hosts no matches"
    if isinstance(message, m.Allocated):
        return hosting.acknowledge(session, message.match, now, message.rid)
    if isinstance(message, m.AllocationRefused):
        return hosting.refuse(session, message.match, message.reason, now, message.rid)
    if isinstance(message, m.MatchResult):
        return hosting.report(session, message, now)
    if isinstance(message, m.ReleasePlayer):
        return hosting.release(session, message.match, message.player, now, message.rid)
    kind = message.__struct_config__.tag
    msg = f"{kind!r} is a player request, and this session is a game server's"
    raise WrongRole(msg, rid=message.rid)


def history_message(entries: list[HistoryEntry], rid: int | None) -> m.History:
    """Return the ``history`` reply for ``entries``, newest first."""
    return m.History(matches=[_history_match(entry) for entry in entries], rid=rid)


def _history_match(entry: HistoryEntry) -> m.HistoryMatch:
    return m.HistoryMatch(
        match=entry.match,
        queue=entry.queue,
        state=entry.state.value,
        team=entry.team,
        rating_before=entry.rating_before,
        started_ms=round(entry.created_at * 1000),
        ended_ms=round(entry.ended_at * 1000),
        rank=entry.rank,
        score=entry.score,
        rating_after=entry.rating_after,
        reason=entry.reason,
    )
