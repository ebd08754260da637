"""Tests of the sans-IO codec in both framings: whole input, byte by byte, errors, fuzzing."""

from __future__ import annotations

import itertools
import typing
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lobbyd.errors import BadFrame, InvalidField, RemoteError, UnknownType
from lobbyd.protocol import messages as m
from lobbyd.protocol.codec import DEFAULT_MAX_FRAME, Codec, Framing

FrameEncoder = Callable[[Any], bytes]


def binary_frame(value: Any) -> bytes:
    payload = msgspec.msgpack.encode(value)
    return len(payload).to_bytes(4, "big") + payload


def json_line(value: Any) -> bytes:
    return msgspec.json.encode(value) + b"\n"


both_framings = pytest.mark.parametrize("frame", [binary_frame, json_line], ids=["binary", "json"])

# One or more examples of every client message, as the map a client sends and the
# message the codec must return for it.
CLIENT_CASES: list[tuple[dict[str, Any], m.ClientMessage]] = [
    ({"type": "hello", "v": 1, "player": "alice"}, m.Hello(v=1, player="alice")),
    (
        {"type": "hello", "v": 1, "player": "Bob.2_x-y", "name": "Bob", "token": "t0k", "rid": 1},
        m.Hello(v=1, player="Bob.2_x-y", name="Bob", token="t0k", rid=1),
    ),
    (
        {"type": "hello", "v": 7, "player": "p" * 64, "name": "n" * 64},
        m.Hello(v=7, player="p" * 64, name="n" * 64),
    ),
    ({"type": "ping"}, m.Ping()),
    ({"type": "ping", "rid": 0}, m.Ping(rid=0)),
    ({"type": "ping", "rid": m.MAX_RID}, m.Ping(rid=m.MAX_RID)),
    ({"type": "join_queue", "queue": "1v1", "rid": 3}, m.JoinQueue(queue="1v1", rid=3)),
    ({"type": "leave_queue"}, m.LeaveQueue()),
    ({"type": "leave_queue", "queue": None, "rid": None}, m.LeaveQueue()),
    ({"type": "leave_queue", "queue": "5v5", "rid": 4}, m.LeaveQueue(queue="5v5", rid=4)),
    ({"type": "accept", "match": "m-1", "rid": 5}, m.Accept(match="m-1", rid=5)),
    ({"type": "decline", "match": "m-1"}, m.Decline(match="m-1")),
    ({"type": "get_profile", "rid": 6}, m.GetProfile(rid=6)),
    ({"type": "get_history"}, m.GetHistory()),
    ({"type": "get_history", "limit": 100}, m.GetHistory(requested_limit=100)),
    ({"type": "create_party"}, m.CreateParty()),
    ({"type": "invite_to_party", "player": "bob", "rid": 2}, m.InviteToParty(player="bob", rid=2)),
    ({"type": "join_party", "party": "party1"}, m.JoinParty(party="party1")),
    ({"type": "decline_party", "party": "party1"}, m.DeclineParty(party="party1")),
    ({"type": "leave_party"}, m.LeaveParty()),
    ({"type": "kick_from_party", "player": "bob"}, m.KickFromParty(player="bob")),
    ({"type": "promote_in_party", "player": "bob"}, m.PromoteInParty(player="bob")),
    (
        {
            "type": "register",
            "v": 1,
            "server": "gs-1",
            "secret": "s",
            "address": "[::1]:7777",
            "capacity": 4,
            "queues": ["1v1", "5v5"],
        },
        m.Register(v=1, server="gs-1", secret="s", address="[::1]:7777", capacity=4, queues=["1v1", "5v5"]),
    ),
    ({"type": "allocated", "match": "m-1", "rid": 2}, m.Allocated(match="m-1", rid=2)),
    ({"type": "allocation_refused", "match": "m-1"}, m.AllocationRefused(match="m-1")),
    ({"type": "match_result", "match": "m-1", "winner": 1}, m.MatchResult(match="m-1", winner=1)),
    (
        {"type": "match_result", "match": "m-1", "ranks": [0, 0, 2], "scores": {"a": 1.5, "b": -3}},
        m.MatchResult(match="m-1", ranks=[0, 0, 2], scores={"a": 1.5, "b": -3.0}),
    ),
    ({"type": "release_player", "match": "m-1", "player": "a"}, m.ReleasePlayer(match="m-1", player="a")),
]

SERVER_MESSAGES: list[m.ServerMessage] = [
    m.Welcome(session="s1", player="alice", heartbeat_ms=10_000, rating=1500, rid=1),
    m.Welcome(session="s1", player="alice", heartbeat_ms=10_000),
    m.Pong(),
    m.Pong(rid=m.MAX_RID),
    m.Queued(queue="1v1", rid=0),
    m.LeftQueue(queue="1v1"),
    m.MatchFound(match="m-1", queue="5v5", players=10, accept_ms=10_000),
    m.Accepted(match="m-1", rid=9),
    m.MatchCancelled(match="m-1", reason="declined", requeued=True),
    m.MatchStart(
        match="m-1",
        queue="1v1",
        team=1,
        teams=[["alice"], ["bob"]],
        ratings=[[1500], [1510]],
        server="10.0.0.1:7777",
        rid=2,
    ),
    m.MatchStart(match="m-1", queue="1v1", team=0, teams=[["alice"], ["bob"]]),
    m.Kicked(reason="shutdown"),
    m.Error(code="invalid_field", message="queue is missing", rid=3),
]

ErrorOutcome = tuple[str, int | None]
Outcome = m.ClientMessage | ErrorOutcome


def drain(codec: Codec) -> list[Outcome]:
    """Read every available message; an error becomes (code, rid) and a fatal one ends the read."""
    results: list[Outcome] = []
    while True:
        try:
            message = codec.next_message()
        except RemoteError as exc:
            results.append((exc.code, exc.rid))
            if exc.fatal:
                return results
            continue
        if message is None:
            return results
        results.append(message)


def feed(pieces: Iterable[bytes], codec: Codec | None = None) -> list[Outcome]:
    """Feed ``pieces`` in order, draining after each one, until the end or a fatal error."""
    codec = codec if codec is not None else Codec()
    results: list[Outcome] = []
    for piece in pieces:
        codec.receive_data(piece)
        results.extend(drain(codec))
        if results and isinstance(results[-1], tuple) and results[-1][0] == BadFrame.code:
            break
    return results


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def expect_error(codec: Codec, error: type[RemoteError]) -> RemoteError:
    with pytest.raises(error) as caught:
        codec.next_message()
    return caught.value


def expect_broken(codec: Codec) -> None:
    """Check that ``codec`` raised BadFrame once and keeps raising it for any later input."""
    first = expect_error(codec, BadFrame)
    assert first.fatal
    assert codec.buffered == 0
    codec.receive_data(json_line({"type": "ping"}) + binary_frame({"type": "ping"}))
    assert expect_error(codec, BadFrame) is first


def padded_ping(size: int, frame: FrameEncoder) -> bytes:
    """Return a ping frame whose payload (without prefix or newline) is exactly ``size`` bytes."""
    overhead = 0 if frame is binary_frame else 1
    for pad in range(size, -1, -1):
        data = frame({"type": "ping", "pad": "x" * pad})
        if len(data) - (4 if frame is binary_frame else 0) - overhead == size:
            return data
    raise AssertionError(f"no ping payload of exactly {size} bytes")


# Decoding valid input.


def test_client_cases_cover_every_type() -> None:
    assert {case[0]["type"] for case in CLIENT_CASES} == m.CLIENT_TYPES


@both_framings
@pytest.mark.parametrize(("value", "expected"), CLIENT_CASES)
def test_client_message_decodes_whole(
    frame: FrameEncoder, value: dict[str, Any], expected: m.ClientMessage
) -> None:
    codec = Codec()
    codec.receive_data(frame(value))
    assert codec.next_message() == expected
    assert codec.next_message() is None
    assert codec.buffered == 0


@both_framings
def test_byte_at_a_time_matches_whole(frame: FrameEncoder) -> None:
    data = b"".join(frame(value) for value, _ in CLIENT_CASES)
    expected = [message for _, message in CLIENT_CASES]
    assert feed([data]) == expected
    assert feed(one_byte_at_a_time(data)) == expected


@both_framings
def test_several_frames_in_one_chunk(frame: FrameEncoder) -> None:
    codec = Codec()
    codec.receive_data(frame({"type": "ping", "rid": 1}) + frame({"type": "ping", "rid": 2}))
    assert codec.next_message() == m.Ping(rid=1)
    assert codec.next_message() == m.Ping(rid=2)
    assert codec.next_message() is None


@both_framings
def test_trailing_bytes_stay_buffered(frame: FrameEncoder) -> None:
    second = frame({"type": "join_queue", "queue": "1v1"})
    codec = Codec()
    codec.receive_data(frame({"type": "ping"}) + second[:5])
    assert codec.next_message() == m.Ping()
    assert codec.next_message() is None
    assert codec.buffered == 5
    codec.receive_data(second[5:])
    assert codec.next_message() == m.JoinQueue(queue="1v1")
    assert codec.buffered == 0


@both_framings
def test_framing_chosen_by_first_byte(frame: FrameEncoder) -> None:
    codec = Codec()
    assert codec.framing is Framing.UNDECIDED
    codec.receive_data(frame({"type": "ping"}))
    codec.next_message()
    assert codec.framing is (Framing.BINARY if frame is binary_frame else Framing.JSON)


@both_framings
def test_unknown_extra_fields_ignored(frame: FrameEncoder) -> None:
    value = {
        "type": "join_queue",
        "extra": {"nested": [1, 2.5, None]},
        "queue": "1v1",
        "rid": 3,
        "z": "x",
    }
    assert feed([frame(value)]) == [m.JoinQueue(queue="1v1", rid=3)]


# A value for each required field of a client message, by its wire name.
REQUIRED_SAMPLES: dict[str, Any] = {
    "v": 1,
    "player": "p1",
    "queue": "1v1",
    "match": "m1",
    "party": "party1",
    "server": "gs-1",
    "secret": "s",
    "address": "127.0.0.1:7777",
    "capacity": 4,
    "queues": ["1v1"],
}


def optional_fields() -> list[tuple[type[m.ClientMessage], str]]:
    """Return (message class, wire name) of every optional field of every client message."""
    found = []
    for cls in typing.get_args(m.ClientMessage):
        for field in msgspec.structs.fields(cls):
            if not field.required:
                found.append((cls, field.encode_name))
    return found


def minimal_map(cls: type[m.ClientMessage]) -> dict[str, Any]:
    value = {"type": cls.__struct_config__.tag}
    for field in msgspec.structs.fields(cls):
        if field.required:
            value[field.encode_name] = REQUIRED_SAMPLES[field.encode_name]
    return value


@both_framings
@pytest.mark.parametrize(
    ("cls", "name"), optional_fields(), ids=[f"{cls.__struct_config__.tag}.{name}" for cls, name in optional_fields()]
)
def test_null_optional_field_means_absent(frame: FrameEncoder, cls: type[m.ClientMessage], name: str) -> None:
    absent = minimal_map(cls)

    with_null = feed([frame({**absent, name: None})])

    assert with_null == feed([frame(absent)])
    assert type(with_null[0]) is cls


def test_null_history_limit_is_default() -> None:
    assert feed([json_line({"type": "get_history", "limit": None})]) == [m.GetHistory()]
    assert m.GetHistory().limit == m.DEFAULT_HISTORY
    assert m.GetHistory(requested_limit=3).limit == 3


@both_framings
@pytest.mark.parametrize("character", ["\x00", "\n", "\r", "\x1b", "\x7f", "\x85"], ids=repr)
def test_hello_name_rejects_control_character(frame: FrameEncoder, character: str) -> None:
    codec = Codec()
    codec.receive_data(frame({"type": "hello", "v": 1, "player": "a", "name": f"x{character}y", "rid": 2}))

    raised = expect_error(codec, InvalidField)

    assert f"U+{ord(character):04X}" in raised.message
    assert "`name`" in raised.message
    assert raised.rid == 2


@both_framings
def test_hello_name_accepts_printable_unicode(frame: FrameEncoder) -> None:
    hello = {"type": "hello", "v": 1, "player": "a", "name": "José 雪 ☃ tab-less"}

    assert feed([frame(hello)]) == [m.Hello(v=1, player="a", name="José 雪 ☃ tab-less")]


@both_framings
@pytest.mark.parametrize(
    ("field", "entries", "path"),
    [
        ("latency", {"eu": 40, "eu-west": -5, "us": 20}, "`$.latency.eu-west`"),
        ("party_roles", {"pm0": ["top"], "pm1": None}, "`$.party_roles.pm1`"),
        ("party_roles", {"pm1": ["top", 7]}, "`$.party_roles.pm1[1]`"),
    ],
)
def test_bad_map_value_names_its_key(frame: FrameEncoder, field: str, entries: dict[str, Any], path: str) -> None:
    codec = Codec()
    codec.receive_data(frame({"type": "join_queue", "queue": "ranked", field: entries, "rid": 4}))

    raised = expect_error(codec, InvalidField)

    assert raised.message.endswith(f" - at {path}"), raised.message
    assert raised.rid == 4


@pytest.mark.parametrize("key", [1, b"x", 2.5], ids=repr)
def test_non_string_key_named_plainly(key: Any) -> None:
    codec = Codec()
    codec.receive_data(binary_frame({"type": "ping", key: 1, "rid": 3}))

    raised = expect_error(codec, InvalidField)

    assert raised.message.startswith("invalid 'ping' message: every map key must be a string, got a key of type ")
    assert raised.rid == 3


def test_library_message_keeps_capitals() -> None:
    binary = Codec()
    binary.receive_data(b"\x00\x00\x00\x02\xc1\xc1")
    json = Codec()
    json.receive_data(b'{"type":"ping",1}\n')

    assert str(expect_broken_error(binary)).startswith("frame is not valid msgpack: MessagePack data is malformed")
    assert str(expect_broken_error(json)).startswith("frame is not valid JSON: JSON is malformed")


def expect_broken_error(codec: Codec) -> BadFrame:
    with pytest.raises(BadFrame) as caught:
        codec.next_message()
    return caught.value


def test_json_crlf_and_empty_lines() -> None:
    data = b'{"type":"ping","rid":1}\r\n\n\r\n   \n\t\r\n{"type":"ping","rid":2}\r\n\n'
    expected = [m.Ping(rid=1), m.Ping(rid=2)]
    assert feed([data]) == expected
    assert feed(one_byte_at_a_time(data)) == expected


def test_json_whitespace_inside_line() -> None:
    assert feed([b'{ "type" : "join_queue" ,\t"queue":"1v1" }  \n']) == [m.JoinQueue(queue="1v1")]


def test_json_out_of_range_number_is_ignored_field() -> None:
    assert feed([b'{"type":"ping","x":1e400}\n']) == [m.Ping()]


@both_framings
def test_deep_nesting_in_unknown_field_accepted(frame: FrameEncoder) -> None:
    nested: Any = None
    for _ in range(50):
        nested = [nested]
    assert feed([frame({"type": "ping", "x": nested})]) == [m.Ping()]


# Broken frames: fatal, and the codec stays broken.


def test_binary_length_zero() -> None:
    codec = Codec()
    codec.receive_data(b"\x00\x00\x00\x00")
    expect_broken(codec)


@pytest.mark.parametrize("max_frame", [100, DEFAULT_MAX_FRAME])
def test_binary_length_over_max_rejected_from_prefix(max_frame: int) -> None:
    codec = Codec(max_frame)
    codec.receive_data((max_frame + 1).to_bytes(4, "big"))
    expect_broken(codec)


@pytest.mark.parametrize("max_frame", [100, DEFAULT_MAX_FRAME])
def test_binary_length_at_max_accepted(max_frame: int) -> None:
    data = padded_ping(max_frame, binary_frame)
    assert int.from_bytes(data[:4], "big") == max_frame
    assert feed([data], Codec(max_frame)) == [m.Ping()]


def test_binary_invalid_msgpack() -> None:
    codec = Codec()
    # 0xc1 is the one byte msgpack never uses.
    codec.receive_data(b"\x00\x00\x00\x01\xc1")
    expect_broken(codec)


def test_binary_truncated_msgpack_inside_frame() -> None:
    payload = msgspec.msgpack.encode({"type": "ping"})[:-1]
    codec = Codec()
    codec.receive_data(len(payload).to_bytes(4, "big") + payload)
    expect_broken(codec)


def test_binary_trailing_bytes_inside_frame() -> None:
    payload = msgspec.msgpack.encode({"type": "ping"}) + b"\xc0"
    codec = Codec()
    codec.receive_data(len(payload).to_bytes(4, "big") + payload)
    expect_broken(codec)


@pytest.mark.parametrize("value", [["ping"], 7, "ping", None, True, b"ping"], ids=repr)
def test_binary_frame_not_a_map(value: Any) -> None:
    codec = Codec()
    codec.receive_data(binary_frame(value))
    expect_broken(codec)


@pytest.mark.parametrize(
    "line",
    [b'{"type":"ping"\n', b"{nope}\n", b'{"type":"ping"} {}\n', b'{"type":"\xff"}\n'],
    ids=["unclosed", "not-json", "two-values", "bad-utf8"],
)
def test_json_invalid_line(line: bytes) -> None:
    codec = Codec()
    codec.receive_data(line)
    expect_broken(codec)


@pytest.mark.parametrize(
    "line", [b'{"type":"ping"}\n["ping"]\n', b'{"type":"ping"}\n"ping"\n', b'{"type":"ping"}\n7\n']
)
def test_json_line_not_an_object(line: bytes) -> None:
    codec = Codec()
    codec.receive_data(line)
    assert codec.next_message() == m.Ping()
    expect_broken(codec)


def test_json_line_over_max_without_newline() -> None:
    codec = Codec(100)
    codec.receive_data(b"{" + b" " * 99)
    assert codec.next_message() is None
    codec.receive_data(b" ")
    expect_broken(codec)


def test_json_line_over_max_with_newline() -> None:
    codec = Codec(100)
    codec.receive_data(padded_ping(101, json_line))
    expect_broken(codec)


@pytest.mark.parametrize("max_frame", [100, DEFAULT_MAX_FRAME])
def test_json_line_at_max_accepted(max_frame: int) -> None:
    assert feed([padded_ping(max_frame, json_line)], Codec(max_frame)) == [m.Ping()]


def test_json_line_at_max_with_crlf_in_pieces() -> None:
    line = padded_ping(100, json_line)[:-1]
    assert feed([line, b"\r", b"\n"], Codec(100)) == [m.Ping()]
    assert feed([line + b"\r\n"], Codec(100)) == [m.Ping()]


def test_json_line_over_max_after_carriage_return() -> None:
    line = padded_ping(100, json_line)[:-1]
    assert feed([line, b"\r", b"x"], Codec(100)) == [("bad_frame", None)]


@both_framings
def test_deep_nesting_is_bad_frame(frame: FrameEncoder) -> None:
    # Deep enough to exceed msgspec's recursion limit, small enough for one frame.
    depth = 30_000
    if frame is binary_frame:
        payload = b"\x82\xa4type\xa4ping\xa1x" + b"\x91" * depth + b"\xc0"
        data = len(payload).to_bytes(4, "big") + payload
    else:
        data = b'{"type":"ping","x":' + b"[" * depth + b"]" * depth + b"}\n"
    codec = Codec()
    codec.receive_data(data)
    expect_broken(codec)


@pytest.mark.parametrize("first", [b"h", b"\x01", b"[", b" ", b"\n", b"\x7f", b"\xff"], ids=repr)
def test_bad_first_byte(first: bytes) -> None:
    codec = Codec(DEFAULT_MAX_FRAME)
    codec.receive_data(first)
    expect_broken(codec)
    assert codec.framing is Framing.UNDECIDED


def test_bad_first_byte_error_encoded_as_json() -> None:
    codec = Codec()
    codec.receive_data(b"hello\n")
    expect_error(codec, BadFrame)
    data = codec.encode(m.Error(code="bad_frame", message="x"))
    assert data == b'{"type":"error","code":"bad_frame","message":"x"}\n'


def test_first_byte_limit_follows_max_frame() -> None:
    # With a 32 MiB limit a length prefix may start with 0x01.
    codec = Codec(2**25)
    codec.receive_data(b"\x01")
    assert codec.next_message() is None
    assert codec.framing is Framing.BINARY


@pytest.mark.parametrize("max_frame", [0, -1, 2**32])
def test_max_frame_out_of_range(max_frame: int) -> None:
    with pytest.raises(ValueError, match="max_frame"):
        Codec(max_frame)


# Well-formed frames that are not valid messages: not fatal, rid echoed when valid.

INVALID_CASES: list[tuple[dict[str, Any], type[RemoteError], str]] = [
    ({"type": "nope"}, UnknownType, "'nope'"),
    (
        {"type": "welcome", "session": "s", "player": "p", "heartbeat_ms": 1},
        UnknownType,
        "'welcome'",
    ),
    ({"queue": "1v1"}, InvalidField, "`type`"),
    ({"type": 7}, InvalidField, "`type`"),
    ({"type": None}, InvalidField, "`type`"),
    ({"type": "join_queue"}, InvalidField, "`queue`"),
    ({"type": "join_queue", "queue": 7}, InvalidField, "`$.queue`"),
    ({"type": "join_queue", "queue": None}, InvalidField, "`$.queue`"),
    ({"type": "join_queue", "queue": ""}, InvalidField, "`$.queue`"),
    ({"type": "join_queue", "queue": "a b"}, InvalidField, "`$.queue`"),
    ({"type": "join_queue", "queue": "q" * 65}, InvalidField, "`$.queue`"),
    ({"type": "leave_queue", "queue": "é"}, InvalidField, "`$.queue`"),
    ({"type": "hello", "player": "alice"}, InvalidField, "`v`"),
    ({"type": "hello", "v": "1", "player": "alice"}, InvalidField, "`$.v`"),
    ({"type": "hello", "v": -1, "player": "alice"}, InvalidField, "`$.v`"),
    ({"type": "hello", "v": 2**32, "player": "alice"}, InvalidField, "`$.v`"),
    ({"type": "hello", "v": 1}, InvalidField, "`player`"),
    ({"type": "hello", "v": 1, "player": "p" * 65}, InvalidField, "`$.player`"),
    ({"type": "hello", "v": 1, "player": "a", "name": "n" * 65}, InvalidField, "`$.name`"),
    ({"type": "hello", "v": 1, "player": "a", "token": "t" * 4097}, InvalidField, "`$.token`"),
    ({"type": "accept"}, InvalidField, "`match`"),
    ({"type": "decline", "match": ["m-1"]}, InvalidField, "`$.match`"),
]


@both_framings
@pytest.mark.parametrize(("value", "error", "names"), INVALID_CASES)
@pytest.mark.parametrize("rid", [0, 7, m.MAX_RID])
def test_invalid_message_echoes_valid_rid(
    frame: FrameEncoder, value: dict[str, Any], error: type[RemoteError], names: str, rid: int
) -> None:
    codec = Codec()
    codec.receive_data(frame({**value, "rid": rid}) + frame({"type": "ping", "rid": 99}))
    raised = expect_error(codec, error)
    assert names in raised.message
    assert raised.rid == rid
    assert not raised.fatal
    assert codec.next_message() == m.Ping(rid=99)


@both_framings
@pytest.mark.parametrize(("value", "error", "names"), INVALID_CASES)
def test_invalid_message_without_rid(
    frame: FrameEncoder, value: dict[str, Any], error: type[RemoteError], names: str
) -> None:
    codec = Codec()
    codec.receive_data(frame(value))
    raised = expect_error(codec, error)
    assert names in raised.message
    assert raised.rid is None


BAD_RIDS = [-1, True, False, "7", 1.5, 2**63, [7], {"rid": 7}]


@both_framings
@pytest.mark.parametrize("rid", BAD_RIDS, ids=repr)
def test_invalid_rid_not_echoed(frame: FrameEncoder, rid: Any) -> None:
    codec = Codec()
    codec.receive_data(frame({"type": "ping", "rid": rid}) + frame({"type": "ping"}))
    raised = expect_error(codec, InvalidField)
    assert "`$.rid`" in raised.message
    assert raised.rid is None
    assert codec.next_message() == m.Ping()


@both_framings
@pytest.mark.parametrize("rid", BAD_RIDS, ids=repr)
def test_invalid_rid_with_unknown_type_not_echoed(frame: FrameEncoder, rid: Any) -> None:
    codec = Codec()
    codec.receive_data(frame({"type": "nope", "rid": rid}))
    assert expect_error(codec, UnknownType).rid is None


def test_json_out_of_range_number_in_invalid_message() -> None:
    codec = Codec()
    codec.receive_data(b'{"type":"join_queue","queue":1e400,"rid":4}\n{"type":"nope","x":-1e400}\n')
    assert expect_error(codec, InvalidField).rid == 4
    expect_error(codec, UnknownType)
    assert codec.next_message() is None


# Encoding server messages.


def binary_codec() -> Codec:
    codec = Codec()
    codec.receive_data(binary_frame({"type": "ping"}))
    codec.next_message()
    return codec


def json_codec() -> Codec:
    codec = Codec()
    codec.receive_data(json_line({"type": "ping"}))
    codec.next_message()
    return codec


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda message: type(message).__name__)
def test_encode_binary_round_trips(message: m.ServerMessage) -> None:
    data = binary_codec().encode(message)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert msgspec.msgpack.decode(data[4:], type=m.ServerMessage) == message


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda message: type(message).__name__)
def test_encode_json_round_trips(message: m.ServerMessage) -> None:
    data = json_codec().encode(message)
    assert data.endswith(b"\n")
    assert b"\n" not in data[:-1]
    assert msgspec.json.decode(data, type=m.ServerMessage) == message


def test_encode_omits_absent_optional_fields() -> None:
    data = json_codec().encode(m.MatchStart(match="m-1", queue="1v1", team=0, teams=[["a"], ["b"]]))
    assert (
        data
        == b'{"type":"match_start","match":"m-1","queue":"1v1","team":0,"teams":[["a"],["b"]]}\n'
    )


def test_encode_puts_type_first_and_rid_last() -> None:
    data = json_codec().encode(m.Queued(queue="1v1", rid=5))
    assert data == b'{"type":"queued","queue":"1v1","rid":5}\n'


def test_encode_before_framing_chosen_is_json() -> None:
    assert Codec().encode(m.Pong()) == b'{"type":"pong"}\n'


# Property tests: no input escapes as anything but a message or a RemoteError.

SMALL_MAX_FRAME = 256

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*sorted(m.CLIENT_TYPES), "nope", "welcome"])},
    optional={
        "rid": st.one_of(st.integers(min_value=-1, max_value=2**64 - 1), json_values),
        "v": st.one_of(st.just(1), json_values),
        "player": st.one_of(st.just("alice"), json_values),
        "queue": st.one_of(st.just("1v1"), json_values),
        "match": st.one_of(st.just("m-1"), json_values),
        "name": json_values,
        "extra": json_values,
    },
)
any_value = st.one_of(message_like, json_values)


def chunks(frame: FrameEncoder) -> st.SearchStrategy[bytes]:
    """Pieces of a stream: well-formed frames, frames of any value, raw bytes, bare prefixes."""
    return st.one_of(
        any_value.map(frame),
        st.sampled_from([frame(value) for value, _ in CLIENT_CASES]),
        st.binary(max_size=40),
        st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
        st.sampled_from([b"\n", b"\r\n", b"{", b"}\n", b"\x00"]),
    )


def assert_only_remote_errors(codec: Codec, data: bytes) -> None:
    codec.receive_data(data)
    for _ in range(len(data) + 2):
        try:
            message = codec.next_message()
        except RemoteError as exc:
            if exc.fatal:
                return
            continue
        if message is None:
            return
        assert isinstance(message, m.ClientMessage)
    raise AssertionError("codec returned more messages than the input could hold")


@given(
    data=st.binary(max_size=600) | st.lists(chunks(binary_frame) | chunks(json_line)).map(b"".join)
)
def test_fresh_codec_raises_only_remote_errors(data: bytes) -> None:
    assert_only_remote_errors(Codec(SMALL_MAX_FRAME), data)


@given(data=st.binary(max_size=600) | st.lists(chunks(binary_frame)).map(b"".join))
def test_binary_codec_raises_only_remote_errors(data: bytes) -> None:
    codec = Codec(SMALL_MAX_FRAME)
    codec.receive_data(binary_frame({"type": "ping"}))
    assert codec.next_message() == m.Ping()
    assert_only_remote_errors(codec, data)


@given(data=st.binary(max_size=600) | st.lists(chunks(json_line)).map(b"".join))
def test_json_codec_raises_only_remote_errors(data: bytes) -> None:
    codec = Codec(SMALL_MAX_FRAME)
    codec.receive_data(json_line({"type": "ping"}))
    assert codec.next_message() == m.Ping()
    assert_only_remote_errors(codec, data)


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[start:end] for start, end in itertools.pairwise(cuts)]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    framing=st.sampled_from([binary_frame, json_line]),
    values=st.lists(
        st.sampled_from([value for value, _ in CLIENT_CASES]) | message_like, min_size=1, max_size=8
    ),
    tail=st.sampled_from([b"", b"\x00\x00\x00\x00", b"[1]\n", b"\x00\x01\x00\x00"]),
    points=st.lists(st.integers(min_value=0), max_size=12),
)
def test_random_split_points_same_result(
    framing: FrameEncoder, values: list[dict[str, Any]], tail: bytes, points: list[int]
) -> None:
    data = b"".join(framing(value) for value in values) + tail
    whole = feed([data], Codec(SMALL_MAX_FRAME))
    assert feed(split(data, points), Codec(SMALL_MAX_FRAME)) == whole


@settings(deadline=None)
@given(data=st.binary(max_size=300), points=st.lists(st.integers(min_value=0), max_size=12))
def test_random_split_of_random_bytes_same_result(data: bytes, points: list[int]) -> None:
    for prefix in (b"", binary_frame({"type": "ping"}), json_line({"type": "ping"})):
        stream = prefix + data
        whole = feed([stream], Codec(SMALL_MAX_FRAME))
        assert feed(split(stream, points), Codec(SMALL_MAX_FRAME)) == whole
