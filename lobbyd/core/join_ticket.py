"""Join tickets: what a player shows a game server to prove lobbyd put them in a match.

A ticket is ASCII text of five fields joined by ``:``::

    j1:<player>:<match>:<expires>:<mac>

``j1`` is the format version, ``player`` and ``match`` are protocol identifiers (their
alphabet ``A-Z a-z 0-9 _ . -`` has no ``:``), ``expires`` is the Unix time in whole
seconds after which the ticket is void, in decimal without leading zeros, and ``mac``
is the HMAC-SHA256 (RFC 2104) of the ASCII bytes before the last ``:`` under the join
ticket key, as 64 lowercase hex digits. A game server that holds the key checks a
ticket offline: recompute the MAC, compare it in constant time, check ``expires`` and
that the player and match are ones it was sent in ``allocate``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

VERSION: Final = "j1"
MAC_HEX_LENGTH: Final = 64
_FORMAT: Final = re.compile(r"^j1:([A-Za-z0-9_.-]{1,64}):([A-Za-z0-9_.-]{1,64}):(0|[1-9][0-9]{0,17}):([0-9a-f]{64})$")


class InvalidJoinTicket(ValueError):
    """A ticket that is malformed, signed with another key, or expired."""


@dataclass(frozen=True, slots=True)
class JoinTicket:
    """The claims of a valid ticket."""

    player: str
    match: str
    expires: int
    """Unix time in seconds after which the ticket is void."""


def sign(key: bytes, player: str, match: str, expires: int) -> str:
    """Return the ticket for ``player`` in ``match``, valid until Unix second ``expires``."""
    body = f"{VERSION}:{player}:{match}:{expires}"
    return f"{body}:{_mac(key, body)}"


def verify(key: bytes, ticket: str, now: float) -> JoinTicket:
    """Return the claims of ``ticket``; raise ``InvalidJoinTicket`` if it is not valid at ``now``."""
    found = _FORMAT.match(ticket)
    if found is None:
        msg = "join ticket is malformed: expected j1:PLAYER:MATCH:EXPIRES:MAC"
        raise InvalidJoinTicket(msg)
    player, match, expires_text, mac = found.groups()
    body = ticket[: ticket.rindex(":")]
    if not hmac.compare_digest(mac, _mac(key, body)):
        msg = "join ticket signature does not verify with this key"
        raise InvalidJoinTicket(msg)
    expires = int(expires_text)
    if now >= expires:
        msg = f"join ticket expired at {expires}"
        raise InvalidJoinTicket(msg)
    return JoinTicket(player, match, expires)


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).hexdigest()
