"""Write protocol-v1.json, the conformance vectors that native client authors test against.

Run from the repository root: ``.venv/bin/python tests/conformance/generate.py``.
The output depends only on the examples below and on the message classes in
``lobbyd.protocol.messages``, so running it twice gives the same file.
tests/test_conformance.py fails when the committed file is out of date.

Message bytes are built here with msgspec and the framing rules (a 4-byte big-endian
length, or a trailing newline), not with ``Codec``, so that the conformance test
checks the codec against an independent construction. Error vectors state the
expected code, fatality and echoed rid by hand, for the same reason.
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "protocol-v1.json"

# Run as a script from a checkout where the package is not installed, lobbyd is found
# in the repository root.
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from lobbyd import errors  # noqa: E402
from lobbyd.core import join_ticket  # noqa: E402
from lobbyd.protocol import messages as m  # noqa: E402
from lobbyd.protocol.codec import DEFAULT_MAX_FRAME  # noqa: E402

DESCRIPTION: Final = (
    "Conformance vectors of lobbyd wire protocol v1. Each message vector gives one "
    "message as a JSON object, as a full binary frame (4-byte big-endian length, then a "
    "msgpack map) in lowercase hex, and as a JSON line with its newline. The server "
    "writes map keys in the order shown: type first, rid last. A client may send keys "
    "in any order and the server accepts them. Each error vector is an input sent on a "
    "fresh connection (after messages_before have been decoded) and the error the "
    "server replies with; error message texts are not part of the contract."
)

# Ids in the form this server generates, although clients must treat them as opaque.
MATCH: Final = "1939378fc80a1b2c3"
MATCH_5V5: Final = "1939378fd21e4f5a6"
# Join tickets in the examples are real: signed with this key, valid until this time.
TICKET_KEY: Final = "conformance-join-ticket-key-0123"
TICKET_EXPIRES: Final = 1733350000
TICKET_ALICE: Final = join_ticket.sign(TICKET_KEY.encode(), "alice", MATCH, TICKET_EXPIRES)
TICKET_BOB: Final = join_ticket.sign(TICKET_KEY.encode(), "bob", MATCH, TICKET_EXPIRES)

# Examples of every message type, keyed by a name that is unique within a direction.
CLIENT_EXAMPLES: Final[dict[str, m.ClientMessage]] = {
    "hello": m.Hello(v=1, player="alice"),
    "hello_full": m.Hello(v=1, player="alice", name="Alice", token="secret-token", rid=1),
    "hello_utf8_name": m.Hello(v=1, player="zoe_42", name="Zoë"),
    "ping": m.Ping(),
    "ping_rid": m.Ping(rid=2),
    "ping_max_rid": m.Ping(rid=m.MAX_RID),
    "join_queue": m.JoinQueue(queue="1v1", rid=3),
    "join_queue_roles": m.JoinQueue(
        queue="ranked", roles=["mid", "top"], latency={"eu-west": 35.0, "us-east": 110.0}, rid=8
    ),
    "leave_queue": m.LeaveQueue(rid=4),
    "leave_queue_named": m.LeaveQueue(queue="1v1", rid=4),
    "accept": m.Accept(match=MATCH, rid=5),
    "decline": m.Decline(match=MATCH, rid=6),
    "get_profile": m.GetProfile(rid=9),
    "get_history": m.GetHistory(requested_limit=5, rid=10),
    "create_party": m.CreateParty(rid=11),
    "invite_to_party": m.InviteToParty(player="bob", rid=12),
    "join_party": m.JoinParty(party="party7", rid=13),
    "decline_party": m.DeclineParty(party="party7", rid=14),
    "leave_party": m.LeaveParty(rid=15),
    "kick_from_party": m.KickFromParty(player="bob", rid=16),
    "promote_in_party": m.PromoteInParty(player="bob", rid=17),
    "register": m.Register(
        v=1,
        server="eu-1",
        secret="server-secret",
        address="203.0.113.7:7777",
        capacity=8,
        queues=["1v1", "5v5"],
        region="eu",
        rid=1,
    ),
    "allocated": m.Allocated(match=MATCH, rid=2),
    "allocation_refused": m.AllocationRefused(match=MATCH, reason="shutting down", rid=2),
    "match_result_winner": m.MatchResult(match=MATCH, winner=1, rid=3),
    "match_result_ranks": m.MatchResult(
        match=MATCH, ranks=[1, 0], scores={"alice": 12.0, "bob": 30.5}, rid=3
    ),
    "release_player": m.ReleasePlayer(match=MATCH, player="alice", rid=4),
}

SERVER_EXAMPLES: Final[dict[str, m.ServerMessage]] = {
    "welcome": m.Welcome(
        session="5c1e0a9b3d27", player="alice", heartbeat_ms=10_000, rating=1500, rid=1
    ),
    "pong": m.Pong(),
    "pong_rid": m.Pong(rid=2),
    "queued": m.Queued(queue="1v1", rid=3),
    "left_queue": m.LeftQueue(queue="1v1", rid=4),
    "left_queue_removed": m.LeftQueue(queue="2v2", reason="queue_removed"),
    "match_found": m.MatchFound(match=MATCH, queue="1v1", players=2, accept_ms=10_000, region="default"),
    "match_found_role": m.MatchFound(
        match=MATCH, queue="ranked", players=10, accept_ms=10_000, region="eu-west", role="top", autofilled=True
    ),
    "accepted": m.Accepted(match=MATCH, rid=5),
    "match_cancelled_requeued": m.MatchCancelled(match=MATCH, reason="declined", requeued=True),
    "match_cancelled_decliner": m.MatchCancelled(
        match=MATCH, reason="declined", requeued=False, rid=6
    ),
    "match_cancelled_expired": m.MatchCancelled(match=MATCH, reason="expired", requeued=False),
    "match_cancelled_penalised": m.MatchCancelled(
        match=MATCH, reason="declined", requeued=False, penalty_level=2, lockout_ms=300_000, rid=6
    ),
    "match_cancelled_disconnected": m.MatchCancelled(
        match=MATCH, reason="disconnected", requeued=True
    ),
    "match_start": m.MatchStart(
        match=MATCH, queue="1v1", team=0, teams=[["alice"], ["bob"]], ratings=[[1500], [1510]], region="default"
    ),
    "match_start_role": m.MatchStart(
        match=MATCH,
        queue="duo",
        team=0,
        teams=[["alice", "carol"], ["bob", "dave"]],
        ratings=[[1500, 1480], [1510, 1470]],
        region="eu-west",
        role="mid",
    ),
    "match_start_5v5": m.MatchStart(
        match=MATCH_5V5,
        queue="5v5",
        team=1,
        teams=[["p1", "p4", "p5", "p8", "p9"], ["p2", "p3", "p6", "p7", "p10"]],
        ratings=[[1620, 1540, 1500, 1460, 1380], [1600, 1560, 1490, 1450, 1400]],
        region="default",
    ),
    "match_start_server": m.MatchStart(
        match=MATCH,
        queue="1v1",
        team=0,
        teams=[["alice"], ["bob"]],
        ratings=[[1500], [1510]],
        server="203.0.113.7:7777",
        ticket=TICKET_ALICE,
        region="eu",
    ),
    "match_cancelled_no_server": m.MatchCancelled(match=MATCH, reason="no_server", requeued=True),
    "match_cancelled_allocation_failed": m.MatchCancelled(
        match=MATCH, reason="allocation_failed", requeued=True
    ),
    "match_ended_finished": m.MatchEnded(match=MATCH, reason="finished"),
    "match_ended_abandoned": m.MatchEnded(match=MATCH, reason="abandoned"),
    "rating_changed": m.RatingChanged(
        match=MATCH, rating=1604, change=104, mu=27.5, sigma=7.25, games=1, wins=1
    ),
    "profile": m.Profile(
        player="alice", name="Alice", rating=1604, mu=27.5, sigma=7.25, games=1, wins=1, rid=9
    ),
    "history": m.History(
        matches=[
            m.HistoryMatch(
                match=MATCH,
                queue="1v1",
                state="finished",
                team=0,
                rating_before=1500,
                started_ms=1733349700000,
                ended_ms=1733349950000,
                rank=0,
                score=30.5,
                rating_after=1604,
            )
        ],
        rid=10,
    ),
    "registered": m.Registered(
        session="8d04c2e17a9b", server="eu-1", heartbeat_ms=10_000, allocate_ms=5_000, rid=1
    ),
    "allocate": m.Allocate(
        match=MATCH,
        queue="1v1",
        teams=[["alice"], ["bob"]],
        players=[
            m.AllocatedPlayer(player="alice", name="Alice", team=0, ticket=TICKET_ALICE),
            m.AllocatedPlayer(player="bob", name="Bob", team=1, ticket=TICKET_BOB),
        ],
        allocate_ms=5_000,
        region="eu",
    ),
    "deallocate": m.Deallocate(match=MATCH, reason="timed_out"),
    "result_applied": m.ResultApplied(match=MATCH, rid=3),
    "player_released": m.PlayerReleased(match=MATCH, player="alice", rid=4),
    "error_in_match": m.Error(
        code="in_match",
        message="player 'alice' is in match '1939378fc80a1b2c3' until it ends or its game server releases them",
        rid=6,
    ),
    "kicked_shutdown": m.Kicked(reason="shutdown"),
    "kicked_shutdown_retry": m.Kicked(reason="shutdown", retry_after_ms=4180),
    "kicked_logged_in_elsewhere": m.Kicked(reason="logged_in_elsewhere"),
    "kicked_heartbeat_timeout": m.Kicked(reason="heartbeat_timeout"),
    "kicked_hello_timeout": m.Kicked(reason="hello_timeout"),
    "error": m.Error(
        code="invalid_field",
        message="invalid 'join_queue' message: object missing required field `queue`",
        rid=7,
    ),
    "error_without_rid": m.Error(
        code="bad_frame",
        message="frame length 0 is invalid: a frame holds one msgpack map of 1 or more bytes",
    ),
    "error_not_authenticated": m.Error(
        code="not_authenticated", message="send hello before 'join_queue'", rid=8
    ),
    "party": m.Party(party="party7", leader="alice", members=["alice", "bob"], invited=[], reason="joined"),
    "party_invited": m.Party(
        party="party7", leader="alice", members=["alice"], invited=["bob"], reason="invited", rid=12
    ),
    "party_invite": m.PartyInvite(party="party7", leader="alice", members=["alice"]),
    "party_left": m.PartyLeft(party="party7", reason="kicked"),
    "left_queue_party_changed": m.LeftQueue(queue="2v2", reason="party_changed"),
    "match_cancelled_party_changed": m.MatchCancelled(match=MATCH, reason="party_changed", requeued=True),
    "error_queue_locked": m.Error(
        code="queue_locked",
        message="player 'alice' declined or missed too many matches and may not queue for 299500 ms (penalty level 2)",
        rid=3,
        retry_after_ms=299_500,
    ),
    "error_server_busy": m.Error(
        code="server_busy",
        message="the server has 50000 requests waiting; this request was dropped, retry after retry_after_ms",
        rid=4,
        retry_after_ms=2_000,
    ),
}


class ErrorCase(typing.NamedTuple):
    """One invalid input and the error the server must reply with."""

    name: str
    framing: str
    data: bytes
    code: str
    fatal: bool
    rid: int | None
    messages_before: tuple[dict[str, Any], ...] = ()
    max_frame: int = DEFAULT_MAX_FRAME


def binary_frame(value: Any) -> bytes:
    payload = msgspec.msgpack.encode(value)
    return len(payload).to_bytes(4, "big") + payload


def json_line(value: Any) -> bytes:
    return msgspec.json.encode(value) + b"\n"


# Inputs that are wrong in the same way in both framings: well-formed maps that are
# not valid messages. None of them closes the connection.
INVALID_MESSAGES: Final[list[tuple[str, dict[str, Any], str, int | None]]] = [
    ("unknown_type", {"type": "teleport", "rid": 7}, "unknown_type", 7),
    ("unknown_type_invalid_rid", {"type": "teleport", "rid": -1}, "unknown_type", None),
    ("server_type_from_client", {"type": "welcome", "rid": 7}, "unknown_type", 7),
    ("missing_type", {"queue": "1v1", "rid": 11}, "invalid_field", 11),
    ("type_not_string", {"type": 1, "rid": 11}, "invalid_field", 11),
    ("missing_field", {"type": "join_queue", "rid": 8}, "invalid_field", 8),
    ("mistyped_field", {"type": "join_queue", "queue": 5}, "invalid_field", None),
    ("bad_identifier", {"type": "join_queue", "queue": "1 v 1", "rid": 10}, "invalid_field", 10),
    (
        "negative_latency",
        {"type": "join_queue", "queue": "ranked", "latency": {"eu": -1}, "rid": 11},
        "invalid_field",
        11,
    ),
    ("roles_not_a_list", {"type": "join_queue", "queue": "ranked", "roles": "mid", "rid": 12}, "invalid_field", 12),
    ("identifier_too_long", {"type": "accept", "match": "m" * 65, "rid": 10}, "invalid_field", 10),
    (
        "version_out_of_range",
        {"type": "hello", "v": -1, "player": "alice", "rid": 9},
        "invalid_field",
        9,
    ),
    ("rid_negative", {"type": "ping", "rid": -1}, "invalid_field", None),
    ("rid_string", {"type": "ping", "rid": "12"}, "invalid_field", None),
    ("rid_bool", {"type": "ping", "rid": True}, "invalid_field", None),
    ("rid_too_large", {"type": "ping", "rid": 2**63}, "invalid_field", None),
]


def error_cases() -> list[ErrorCase]:
    """Return every error vector: invalid messages in both framings, then broken frames."""
    ping = {"type": "ping"}
    cases = [
        ErrorCase(f"{name}_{framing}", framing, encode(value), code, False, rid)
        for name, value, code, rid in INVALID_MESSAGES
        for framing, encode in (("binary", binary_frame), ("json", json_line))
    ]
    cases += [
        ErrorCase("not_a_map_binary", "binary", binary_frame(["ping"]), "bad_frame", True, None),
        ErrorCase("integer_frame_binary", "binary", binary_frame(7), "bad_frame", True, None),
        ErrorCase(
            "not_a_map_json",
            "json",
            json_line(ping) + b'["ping"]\n',
            "bad_frame",
            True,
            None,
            messages_before=(ping,),
        ),
        ErrorCase("length_zero", "binary", bytes(4), "bad_frame", True, None),
        ErrorCase(
            "length_over_max",
            "binary",
            (DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"),
            "bad_frame",
            True,
            None,
        ),
        ErrorCase("invalid_msgpack", "binary", b"\x00\x00\x00\x01\xc1", "bad_frame", True, None),
        ErrorCase(
            "trailing_bytes_in_frame",
            "binary",
            _frame_with_payload(msgspec.msgpack.encode(ping) + b"\xc0"),
            "bad_frame",
            True,
            None,
        ),
        ErrorCase(
            "truncated_msgpack_in_frame",
            "binary",
            _frame_with_payload(msgspec.msgpack.encode(ping)[:-1]),
            "bad_frame",
            True,
            None,
        ),
        ErrorCase("invalid_json", "json", b'{"type":"ping"\n', "bad_frame", True, None),
        ErrorCase("line_over_max", "json", b"{" + b" " * 64, "bad_frame", True, None, max_frame=64),
        ErrorCase("first_byte_text", "undecided", b"hello\n", "bad_frame", True, None),
        ErrorCase("first_byte_bracket", "undecided", b'["ping"]\n', "bad_frame", True, None),
        ErrorCase(
            "first_byte_too_large_for_length",
            "undecided",
            b"\x01" + binary_frame(ping)[1:],
            "bad_frame",
            True,
            None,
        ),
    ]
    return cases


def _frame_with_payload(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def message_vector(
    name: str, direction: str, message: m.ClientMessage | m.ServerMessage
) -> dict[str, Any]:
    line = msgspec.json.encode(message) + b"\n"
    return {
        "name": name,
        "direction": direction,
        "type": message.__struct_config__.tag,
        "message": json.loads(line),
        "binary_hex": binary_frame(message).hex(),
        "json_line": line.decode(),
    }


def error_vector(case: ErrorCase) -> dict[str, Any]:
    vector: dict[str, Any] = {
        "name": case.name,
        "framing": case.framing,
        # A connection whose first byte starts neither framing gets its error as JSON.
        "reply_framing": "binary" if case.framing == "binary" else "json",
        "max_frame": case.max_frame,
        "input_hex": case.data.hex(),
    }
    if case.framing == "json":
        vector["input_text"] = case.data.decode()
    vector["messages_before"] = list(case.messages_before)
    vector["code"] = case.code
    vector["fatal"] = case.fatal
    vector["rid"] = case.rid
    return vector


def error_codes() -> list[dict[str, Any]]:
    """List every wire error code with whether the server closes the connection after it."""
    fatal = {cls.code: cls.fatal for cls in _remote_error_classes()}
    return [{"code": code, "fatal": fatal.get(code, False)} for code in errors.ERROR_CODES]


def _remote_error_classes() -> list[type[errors.RemoteError]]:
    found: list[type[errors.RemoteError]] = []
    pending = [errors.RemoteError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def join_ticket_vectors() -> list[dict[str, Any]]:
    """List signed tickets with the key (UTF-8 text) and the exact text the MAC covers."""
    vectors = []
    for player, ticket in (("alice", TICKET_ALICE), ("bob", TICKET_BOB)):
        vectors.append(
            {
                "key": TICKET_KEY,
                "player": player,
                "match": MATCH,
                "expires": TICKET_EXPIRES,
                "signed_text": ticket.rpartition(":")[0],
                "ticket": ticket,
            }
        )
    return vectors


def check_coverage() -> None:
    """Raise when a message class of either direction has no example."""
    for union, examples in ((m.ClientMessage, CLIENT_EXAMPLES), (m.ServerMessage, SERVER_EXAMPLES)):
        covered = {type(message) for message in examples.values()}
        missing = [cls.__name__ for cls in typing.get_args(union) if cls not in covered]
        if missing:
            raise SystemExit(f"no conformance example for {', '.join(missing)}: add one above")


def build() -> dict[str, Any]:
    check_coverage()
    messages = [message_vector(name, "client", msg) for name, msg in CLIENT_EXAMPLES.items()]
    messages += [message_vector(name, "server", msg) for name, msg in SERVER_EXAMPLES.items()]
    return {
        "protocol": "lobbyd",
        "version": m.PROTOCOL_VERSION,
        "description": DESCRIPTION,
        "max_frame": DEFAULT_MAX_FRAME,
        "messages": messages,
        "errors": [error_vector(case) for case in error_cases()],
        "error_codes": error_codes(),
        "join_tickets": join_ticket_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
