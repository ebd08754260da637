"""Check the conformance vectors against the codec, their generator and protocol.md."""

from __future__ import annotations

import importlib.util
import json
import re
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from lobbyd.core import join_ticket
from lobbyd.errors import ERROR_CODES, BadFrame, RemoteError
from lobbyd.protocol import messages as m
from lobbyd.protocol.codec import Codec

ROOT = Path(__file__).resolve().parents[1]
VECTORS_PATH = ROOT / "tests" / "conformance" / "protocol-v1.json"
GENERATOR_PATH = ROOT / "tests" / "conformance" / "generate.py"
PROTOCOL_MD = ROOT / "protocol.md"

VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
CLIENT_VECTORS = [v for v in VECTORS["messages"] if v["direction"] == "client"]
SERVER_VECTORS = [v for v in VECTORS["messages"] if v["direction"] == "server"]
ERROR_VECTORS = VECTORS["errors"]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance_generate", GENERATOR_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_name(vectors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"argvalues": vectors, "ids": [vector["name"] for vector in vectors]}


def decode_all(codec: Codec, data: bytes) -> list[m.ClientMessage]:
    codec.receive_data(data)
    decoded = []
    while (message := codec.next_message()) is not None:
        decoded.append(message)
    return decoded


def ping_frame(framing: str) -> bytes:
    ping = {"type": "ping"}
    if framing == "binary":
        payload = msgspec.msgpack.encode(ping)
        return len(payload).to_bytes(4, "big") + payload
    return msgspec.json.encode(ping) + b"\n"


def codec_in(framing: str) -> Codec:
    """Return a codec whose framing a ping already chose."""
    codec = Codec()
    assert decode_all(codec, ping_frame(framing)) == [m.Ping()]
    return codec


# The file itself.


def test_vectors_file_is_up_to_date() -> None:
    expected = load_generator().render()
    committed = VECTORS_PATH.read_text(encoding="utf-8")
    assert committed == expected, "run .venv/bin/python tests/conformance/generate.py"


def test_vector_names_unique() -> None:
    names = [vector["name"] for vector in VECTORS["messages"]]
    assert len(names) == len(set(names))
    error_names = [vector["name"] for vector in ERROR_VECTORS]
    assert len(error_names) == len(set(error_names))


@pytest.mark.parametrize(
    ("direction", "union"), [("client", m.ClientMessage), ("server", m.ServerMessage)]
)
def test_every_message_type_has_vector(direction: str, union: Any) -> None:
    types = {str(cls.__struct_config__.tag) for cls in typing.get_args(union)}
    covered = {v["type"] for v in VECTORS["messages"] if v["direction"] == direction}
    assert covered == types


# Fields the daemon always sends, though the message classes leave them optional;
# a vector without one would teach a codec to accept a message the daemon never sends.
ALWAYS_SENT: dict[str, set[str]] = {
    "match_found": {"region"},
    "match_start": {"region"},
    "allocate": {"region"},
}


def test_vectors_carry_fields_always_sent() -> None:
    for vector in VECTORS["messages"]:
        missing = ALWAYS_SENT.get(vector["type"], set()) - set(vector["message"])
        assert not missing, f"vector {vector['name']} lacks {sorted(missing)}"


def test_error_codes_listed_with_fatality() -> None:
    listed = {entry["code"]: entry["fatal"] for entry in VECTORS["error_codes"]}
    assert list(listed) == list(ERROR_CODES)
    assert listed[BadFrame.code] is True
    fatal_codes = [code for code, fatal in listed.items() if fatal]
    assert fatal_codes == [BadFrame.code, "invalid_token", "server_full", "invalid_secret"]


@pytest.mark.parametrize("vector", **by_name(VECTORS["messages"]))
def test_vector_forms_agree(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["binary_hex"])
    line = vector["json_line"].encode()
    assert vector["binary_hex"] == vector["binary_hex"].lower()
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgspec.msgpack.decode(frame[4:]) == vector["message"]
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    assert json.loads(line) == vector["message"]
    assert vector["message"]["type"] == vector["type"]


# Client vectors decode; server vectors encode to exactly the recorded bytes.


@pytest.mark.parametrize("vector", **by_name(CLIENT_VECTORS))
def test_client_vector_decodes_binary(vector: dict[str, Any]) -> None:
    expected = msgspec.convert(vector["message"], m.ClientMessage)
    assert decode_all(Codec(), bytes.fromhex(vector["binary_hex"])) == [expected]


@pytest.mark.parametrize("vector", **by_name(CLIENT_VECTORS))
def test_client_vector_decodes_json(vector: dict[str, Any]) -> None:
    expected = msgspec.convert(vector["message"], m.ClientMessage)
    assert decode_all(Codec(), vector["json_line"].encode()) == [expected]


@pytest.mark.parametrize("vector", **by_name(SERVER_VECTORS))
def test_server_vector_encodes_binary(vector: dict[str, Any]) -> None:
    message = msgspec.convert(vector["message"], m.ServerMessage)
    assert codec_in("binary").encode(message).hex() == vector["binary_hex"]


@pytest.mark.parametrize("vector", **by_name(SERVER_VECTORS))
def test_server_vector_encodes_json(vector: dict[str, Any]) -> None:
    message = msgspec.convert(vector["message"], m.ServerMessage)
    assert codec_in("json").encode(message) == vector["json_line"].encode()


# Error vectors.


def raise_error_vector(vector: dict[str, Any]) -> tuple[Codec, RemoteError]:
    """Feed the vector's input to a fresh codec; return the codec and the error it raised."""
    codec = Codec(vector["max_frame"])
    codec.receive_data(bytes.fromhex(vector["input_hex"]))
    for before in vector["messages_before"]:
        assert codec.next_message() == msgspec.convert(before, m.ClientMessage)
    with pytest.raises(RemoteError) as caught:
        codec.next_message()
    return codec, caught.value


@pytest.mark.parametrize("vector", **by_name(ERROR_VECTORS))
def test_error_vector(vector: dict[str, Any]) -> None:
    _, error = raise_error_vector(vector)
    assert error.code == vector["code"]
    assert error.fatal is vector["fatal"]
    assert error.rid == vector["rid"]


@pytest.mark.parametrize("vector", **by_name(ERROR_VECTORS))
def test_error_vector_reply_framing(vector: dict[str, Any]) -> None:
    codec, error = raise_error_vector(vector)
    reply = codec.encode(m.Error(code=error.code, message=error.message, rid=error.rid))
    if vector["reply_framing"] == "json":
        assert reply.startswith(b"{")
        assert reply.endswith(b"\n")
    else:
        assert int.from_bytes(reply[:4], "big") == len(reply) - 4


@pytest.mark.parametrize("vector", **by_name(ERROR_VECTORS))
def test_error_vector_session_continues_unless_fatal(vector: dict[str, Any]) -> None:
    codec, _ = raise_error_vector(vector)
    if vector["fatal"]:
        with pytest.raises(BadFrame):
            codec.next_message()
        return
    codec.receive_data(ping_frame(vector["framing"]))
    assert codec.next_message() == m.Ping()


def test_json_error_vectors_have_text() -> None:
    for vector in ERROR_VECTORS:
        if vector["framing"] == "json":
            assert vector["input_text"].encode() == bytes.fromhex(vector["input_hex"])


# Join tickets.


@pytest.mark.parametrize("vector", VECTORS["join_tickets"], ids=lambda vector: vector["player"])
def test_join_ticket_vector_verifies(vector: dict[str, Any]) -> None:
    key = vector["key"].encode()
    claims = join_ticket.verify(key, vector["ticket"], vector["expires"] - 1)

    assert (claims.player, claims.match, claims.expires) == (vector["player"], vector["match"], vector["expires"])
    assert vector["ticket"].startswith(vector["signed_text"] + ":")
    assert vector["signed_text"] == f"j1:{vector['player']}:{vector['match']}:{vector['expires']}"


# protocol.md quotes the vectors; every quoted frame must be one of them.

FENCE = re.compile(r"^```(hex|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def protocol_examples(language: str) -> list[str]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == language]


def test_protocol_md_hex_examples_are_vectors() -> None:
    frames = {v["binary_hex"] for v in VECTORS["messages"]}
    examples = protocol_examples("hex")
    assert examples, "protocol.md has no hex examples"
    for body in examples:
        assert "".join(body.split()).lower() in frames, f"not a conformance vector:\n{body}"


def test_protocol_md_json_examples_are_vectors() -> None:
    lines = {v["json_line"] for v in VECTORS["messages"]}
    examples = protocol_examples("json")
    assert examples, "protocol.md has no JSON examples"
    for body in examples:
        assert body in lines, f"not a conformance vector:\n{body}"


def test_protocol_md_documents_every_message_and_error() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for vector in VECTORS["messages"]:
        assert f"`{vector['type']}`" in text
    for code in ERROR_CODES:
        assert f"`{code}`" in text
