"""Join tickets verify with their key and fail after any change or after they expire."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from lobbyd.core.join_ticket import InvalidJoinTicket, JoinTicket, sign, verify

KEY = b"k" * 32
EXPIRES = 1_700_000_300


def test_ticket_verifies() -> None:
    ticket = sign(KEY, "alice", "1939378fc80a1b2c3", EXPIRES)

    assert verify(KEY, ticket, EXPIRES - 1) == JoinTicket("alice", "1939378fc80a1b2c3", EXPIRES)


def test_ticket_bytes_documented() -> None:
    # The exact bytes protocol.md describes: the MAC covers everything before the last colon.
    ticket = sign(KEY, "p.1", "m-2", EXPIRES)
    body = f"j1:p.1:m-2:{EXPIRES}"

    assert ticket == f"{body}:{hmac.new(KEY, body.encode(), hashlib.sha256).hexdigest()}"


def test_any_changed_byte_fails() -> None:
    ticket = sign(KEY, "alice", "m1", EXPIRES)
    for index in range(len(ticket)):
        for replacement in {"0", "a", "z", ":", "."} - {ticket[index]}:
            forged = ticket[:index] + replacement + ticket[index + 1 :]
            with pytest.raises(InvalidJoinTicket):
                verify(KEY, forged, EXPIRES - 100)


def test_other_key_fails() -> None:
    ticket = sign(KEY, "alice", "m1", EXPIRES)

    with pytest.raises(InvalidJoinTicket, match="signature"):
        verify(b"x" * 32, ticket, EXPIRES - 1)


@pytest.mark.parametrize("now", [EXPIRES, EXPIRES + 0.001, EXPIRES + 3600])
def test_expired_ticket_fails(now: float) -> None:
    ticket = sign(KEY, "alice", "m1", EXPIRES)

    with pytest.raises(InvalidJoinTicket, match="expired"):
        verify(KEY, ticket, now)


@pytest.mark.parametrize(
    "ticket",
    ["", "j1:a:m:1", "j2:a:m:1:" + "0" * 64, "j1:a b:m:1:" + "0" * 64, "j1:a:m:01:" + "0" * 64, "j1:a:m:1:" + "A" * 64],
)
def test_malformed_ticket_fails(ticket: str) -> None:
    with pytest.raises(InvalidJoinTicket, match="malformed"):
        verify(KEY, ticket, 0.0)
