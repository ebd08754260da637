"""Sans-IO codec for one connection: bytes in, messages out, and back.

Theory of operation. The codec owns no socket. The caller feeds whatever bytes
arrived with ``receive_data`` and then calls ``next_message`` until it returns
``None``, which means "need more data". ``encode`` turns a server message into the
bytes to write. The first byte a client sends picks the framing for the life of the
connection:

* ``{`` selects JSON lines: one JSON object per ``\\n``-terminated line, for people
  debugging with netcat. A trailing ``\\r`` is dropped and empty lines are skipped.
* A byte that can begin a valid 4-byte big-endian length selects binary framing:
  the length N, then N bytes holding one msgpack map, with 1 <= N <= ``max_frame``.
* Anything else is a ``BadFrame``.

Errors split in two. A frame that cannot be decoded at all (too long, empty, not
msgpack or JSON, not a map) raises ``BadFrame``, which is fatal: the codec stays
broken and the caller sends the error and closes. A well-formed map that is not a
valid message (unknown ``type``, missing or mistyped field) raises ``UnknownType``
or ``InvalidField`` after the frame is consumed, so the caller answers and reads on.
Either carries the request's ``rid`` when the map held a valid one.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from typing import Any, Final

import msgspec

from lobbyd.errors import BadFrame, InvalidField, RemoteError, UnknownType, lowercase_start
from lobbyd.protocol.messages import CLIENT_TYPES, MAX_RID, ClientMessage, ServerMessage

# 64 KiB holds any v1 message with room to spare (a 5v5 match_start is about 400
# bytes) while keeping a hostile peer's buffered bytes per connection small.
DEFAULT_MAX_FRAME: Final = 65_536

LENGTH_PREFIX_BYTES: Final = 4
_LENGTH: Final = struct.Struct(">I")
MAX_FRAME_LIMIT: Final = 2**32 - 1
# Characters of a peer's unknown ``type`` that an error message repeats. The rest is
# cut, so a 60 KiB type string costs neither a 60 KiB reply nor a 60 KiB log line.
MAX_ECHOED_CHARS: Final = 64
# msgspec's path of a bad value inside a map of a message's top-level field, such as
# `$.latency[...]`, which names no key.
_MAP_VALUE_PATH: Final = re.compile(r"`\$\.(\w+)\[\.\.\.\]")
# msgspec's message for a map key that is not a string, such as the msgpack int 1.
_NON_STRING_KEY: Final = re.compile(r"Expected `str`, got `(\w+)` - at `key` in `(.*)`")


class Framing(enum.Enum):
    UNDECIDED = "undecided"
    BINARY = "binary"
    JSON = "json"


# On CPython 3.11 reading an enum member as a class attribute costs about 60 ns, ten
# times a module global (timeit), so the per-message paths compare with this alias.
_BINARY: Final = Framing.BINARY

# Decoders and encoders are built once per process and shared by every codec.
_MSGPACK_TYPED = msgspec.msgpack.Decoder(ClientMessage)
_MSGPACK_RAW = msgspec.msgpack.Decoder()
_MSGPACK_ENCODER = msgspec.msgpack.Encoder()
_JSON_TYPED = msgspec.json.Decoder(ClientMessage)
# The raw decoders only explain why a frame was invalid. float_hook=float turns an
# out-of-range number such as 1e400 into inf instead of failing, so a frame that is
# valid JSON with a bad field gets invalid_field, not bad_frame.
_JSON_RAW = msgspec.json.Decoder(float_hook=float)
_JSON_ENCODER = msgspec.json.Encoder()


class Codec:
    """Frame and parse one connection's traffic in either framing."""

    __slots__ = ("_broken", "_buffer", "_max_first_byte", "_max_frame", "_pos", "framing")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= MAX_FRAME_LIMIT:
            msg = f"max_frame {max_frame} is outside 1..{MAX_FRAME_LIMIT}"
            raise ValueError(msg)
        self.framing = Framing.UNDECIDED
        self._max_frame = max_frame
        # The largest allowed length prefix starts with this byte or a smaller one.
        self._max_first_byte = max_frame >> 24
        # Unparsed input starts at _pos. When a read ends on a frame boundary, the
        # next read's bytes become the buffer as they are, without a copy; a partial
        # frame is kept in a bytearray, which appends in amortized constant time.
        self._buffer: bytes | bytearray = b""
        self._pos = 0
        self._broken: BadFrame | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a message."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the connection; parse them with ``next_message``."""
        buffer, pos = self._buffer, self._pos
        if pos == len(buffer):
            self._buffer, self._pos = data, 0
            return
        if pos or type(buffer) is bytes:
            buffer = bytearray(memoryview(buffer)[pos:])
            self._buffer, self._pos = buffer, 0
        buffer += data

    def next_message(self) -> ClientMessage | None:
        """Return the next complete message, or ``None`` when more bytes are needed.

        Raises ``BadFrame`` (fatal, and raised again on every later call) or a
        non-fatal ``RemoteError`` for a frame that decoded but is not a valid message.
        """
        if self.framing is _BINARY and self._broken is None:
            # The hot path, inlined: a complete binary frame that decodes cleanly.
            buffer, pos = self._buffer, self._pos
            size = len(buffer)
            if size - pos < LENGTH_PREFIX_BYTES:
                return None
            (length,) = _LENGTH.unpack_from(buffer, pos)
            if 0 < length <= self._max_frame:
                start = pos + LENGTH_PREFIX_BYTES
                end = start + length
                if end > size:
                    return None
                self._pos = end
                frame = buffer[start:end]
                try:
                    message: ClientMessage = _MSGPACK_TYPED.decode(frame)
                except (msgspec.DecodeError, RecursionError):
                    return self._fail(lambda: _decode(bytes(frame), _MSGPACK_TYPED, _MSGPACK_RAW, "msgpack"))
                return message
        return self._fail(self._next_message)

    def encode(self, message: ServerMessage) -> bytes:
        """Return the bytes that carry ``message`` in this connection's framing.

        A connection whose framing is still undecided (its first byte was invalid, or
        it sent nothing yet) gets JSON, because such a peer is most likely a person.
        """
        if self.framing is _BINARY:
            payload = _MSGPACK_ENCODER.encode(message)
            return _LENGTH.pack(len(payload)) + payload
        return _JSON_ENCODER.encode(message) + b"\n"

    def _fail(self, parse: Callable[[], ClientMessage | None]) -> ClientMessage | None:
        """Run ``parse``; a ``BadFrame`` it raises breaks the codec for good."""
        if self._broken is not None:
            raise self._broken
        try:
            return parse()
        except BadFrame as exc:
            self._broken = exc
            self._buffer, self._pos = b"", 0
            raise

    def _next_message(self) -> ClientMessage | None:
        if self.framing is Framing.UNDECIDED:
            if not self.buffered:
                return None
            self.framing = self._choose_framing(self._buffer[self._pos])
        if self.framing is Framing.BINARY:
            return self._next_binary()
        return self._next_json()

    def _choose_framing(self, first: int) -> Framing:
        if first == ord("{"):
            return Framing.JSON
        if first <= self._max_first_byte:
            return Framing.BINARY
        msg = (
            f"first byte 0x{first:02x} starts neither framing: send a JSON object on one "
            "line, or a 4-byte big-endian length followed by a msgpack map"
        )
        raise BadFrame(msg)

    def _next_binary(self) -> ClientMessage | None:
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < LENGTH_PREFIX_BYTES:
            return None
        (length,) = _LENGTH.unpack_from(buffer, pos)
        if length == 0:
            msg = "frame length 0 is invalid: a frame holds one msgpack map of 1 or more bytes"
            raise BadFrame(msg)
        if length > self._max_frame:
            msg = f"frame length {length} exceeds the maximum frame size of {self._max_frame} bytes"
            raise BadFrame(msg)
        end = pos + LENGTH_PREFIX_BYTES + length
        if len(buffer) < end:
            return None
        frame = bytes(buffer[pos + LENGTH_PREFIX_BYTES : end])
        self._pos = end
        return _decode(frame, _MSGPACK_TYPED, _MSGPACK_RAW, "msgpack")

    def _next_json(self) -> ClientMessage | None:
        buffer = self._buffer
        while True:
            pos = self._pos
            newline = buffer.find(b"\n", pos)
            if newline < 0:
                # A line of exactly max_frame bytes may still wait for the \n of its \r\n,
                # so the verdict does not depend on where the stream was split.
                limit = self._max_frame + 1 if buffer.endswith(b"\r") else self._max_frame
                if len(buffer) - pos > limit:
                    msg = (
                        f"line of more than {self._max_frame} bytes without a newline "
                        "exceeds the maximum frame size"
                    )
                    raise BadFrame(msg)
                return None
            line = bytes(buffer[pos:newline])
            self._pos = newline + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max_frame:
                msg = f"line of {len(line)} bytes exceeds the maximum frame size of {self._max_frame} bytes"
                raise BadFrame(msg)
            # Empty lines are what a person pressing Enter in netcat sends.
            if line.strip():
                return _decode(line, _JSON_TYPED, _JSON_RAW, "JSON")


def _decode(
    frame: bytes,
    typed: msgspec.msgpack.Decoder[Any] | msgspec.json.Decoder[Any],
    raw: msgspec.msgpack.Decoder[Any] | msgspec.json.Decoder[Any],
    format_name: str,
) -> ClientMessage:
    try:
        message: ClientMessage = typed.decode(frame)
    except msgspec.ValidationError as exc:
        raise _explain_invalid(frame, raw, format_name, exc) from None
    except msgspec.DecodeError as exc:
        msg = f"frame is not valid {format_name}: {lowercase_start(str(exc))}"
        raise BadFrame(msg) from None
    except RecursionError:
        raise _too_deep(format_name) from None
    return message


def _explain_invalid(
    frame: bytes,
    raw: msgspec.msgpack.Decoder[Any] | msgspec.json.Decoder[Any],
    format_name: str,
    exc: msgspec.ValidationError,
) -> RemoteError:
    """Turn a validation failure into the error the peer gets, with its rid if valid."""
    try:
        value = raw.decode(frame)
    except msgspec.DecodeError as decode_exc:
        msg = f"frame is not valid {format_name}: {lowercase_start(str(decode_exc))}"
        return BadFrame(msg)
    except RecursionError:
        return _too_deep(format_name)
    if not isinstance(value, dict):
        msg = f"frame holds a {format_name} {type(value).__name__}, expected a map with a `type` field"
        return BadFrame(msg)

    rid = _valid_rid(value.get("rid"))
    kind = value.get("type")
    if not isinstance(kind, str):
        msg = "field `type` is missing or not a string: every message needs a string `type`"
        return InvalidField(msg, rid=rid)
    if kind not in CLIENT_TYPES:
        known = ", ".join(sorted(CLIENT_TYPES))
        shown = kind if len(kind) <= MAX_ECHOED_CHARS else f"{kind[:MAX_ECHOED_CHARS]}..."
        return UnknownType(f"unknown message type {shown!r}: expected one of {known}", rid=rid)
    return InvalidField(f"invalid {kind!r} message: {_validation_text(_name_map_key(value, exc))}", rid=rid)


def _too_deep(format_name: str) -> BadFrame:
    # msgspec decodes nested arrays and maps recursively and raises RecursionError
    # near Python's recursion limit (about 1,000 levels by default), which a frame
    # of a few kilobytes can reach.
    msg = f"{format_name} frame nests arrays or maps more deeply than the decoder allows"
    return BadFrame(msg)


def _valid_rid(value: object) -> int | None:
    # bool is a subclass of int in Python, but JSON true is not a request id.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RID:
        return value
    return None


def _name_map_key(value: dict[Any, Any], exc: msgspec.ValidationError) -> msgspec.ValidationError:
    """Return ``exc`` with the key of the bad entry in place of msgspec's ``[...]``, when it can be found.

    msgspec marks a bad value inside a map as ``$.field[...]`` without its key. Each
    entry of that map is checked alone (at most the map's length limit, 64) to find
    the first bad one; this runs only on an invalid message.
    """
    found = _MAP_VALUE_PATH.search(str(exc))
    entries = value.get(found.group(1)) if found is not None else None
    if found is None or not isinstance(entries, dict):
        return exc
    for key, entry in entries.items():
        try:
            msgspec.convert({**value, found.group(1): {key: entry}}, ClientMessage)
        except msgspec.ValidationError as entry_exc:
            # A key that failed its own check is reported as a key, never echoed here.
            if "[...]" in str(entry_exc):
                named = str(entry_exc).replace(f"$.{found.group(1)}[...]", f"$.{found.group(1)}.{key}", 1)
                return msgspec.ValidationError(named)
    return exc


def _validation_text(exc: msgspec.ValidationError) -> str:
    """Word msgspec's validation message for a client, naming a bad map key plainly."""
    text = str(exc)
    bad_key = _NON_STRING_KEY.fullmatch(text)
    if bad_key is not None:
        kind, path = bad_key.groups()
        return f"every map key must be a string, got a key of type {kind} - at `{path}`"
    return lowercase_start(text.replace(" - at `key` in `", " - at a map key in `"))
