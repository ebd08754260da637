"""A small asyncio client for lobbyd, used by ``lobbyd client``, ``lobbyd sim`` and the tests.

It speaks either framing and hands back decoded server messages as plain dicts, so
that it can also show messages this version of the client does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any, Final

import msgspec

from lobbyd.config import parse_listen

LENGTH_PREFIX: Final = 4
# Server frames are bounded by the server's max frame size; the client accepts up to
# 16 MiB so that a server configured with larger frames still works with it.
MAX_INCOMING_FRAME: Final = 16 * 1024 * 1024

_ENCODE_MSGPACK = msgspec.msgpack.Encoder()
_DECODE_MSGPACK = msgspec.msgpack.Decoder(dict[str, Any])
_ENCODE_JSON = msgspec.json.Encoder()
_DECODE_JSON = msgspec.json.Decoder(dict[str, Any])


class ClientError(Exception):
    """The server closed the connection or sent something the client cannot read."""


class LobbyClient:
    """One connection to a lobbyd server.

    ``json_lines`` picks the text framing; the default is binary msgpack frames.
    ``request`` adds a fresh ``rid`` to each message unless the caller gives one.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, json_lines: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.json_lines = json_lines
        self._rids = itertools.count(1)

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        json_lines: bool = False,
        timeout: float = 10.0,
        source: str | None = None,
    ) -> LobbyClient:
        """Connect to ``HOST:PORT``; ``source`` picks the local IP address to connect from."""
        host, port = parse_listen(address)
        local = (source, 0) if source else None
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_INCOMING_FRAME, local_addr=local)
        return cls(reader, writer, json_lines=json_lines)

    def encode(self, message: dict[str, Any]) -> bytes:
        if self.json_lines:
            return _ENCODE_JSON.encode(message) + b"\n"
        payload = _ENCODE_MSGPACK.encode(message)
        return len(payload).to_bytes(LENGTH_PREFIX, "big") + payload

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(self.encode(message))
        await self.writer.drain()

    async def request(self, type_: str, **fields: Any) -> int:
        """Send a message of ``type_`` with a new rid; return the rid."""
        rid = fields.pop("rid", None)
        if rid is None:
            rid = next(self._rids)
        await self.send({"type": type_, "rid": rid, **fields})
        return int(rid)

    async def recv(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """Return the next message; raise ``ClientError`` if the server closed the connection."""
        async with asyncio.timeout(timeout):
            if self.json_lines:
                return await self._recv_json()
            return await self._recv_binary()

    async def recv_type(self, *types: str, timeout: float = 10.0) -> dict[str, Any]:
        """Return the next message whose type is one of ``types``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout=None)
                if message.get("type") in types:
                    return message

    async def hello(self, player: str, name: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        fields: dict[str, Any] = {"v": 1, "player": player}
        if name:
            fields["name"] = name
        await self.request("hello", **fields)
        welcome = await self.recv(timeout)
        if welcome.get("type") != "welcome":
            msg = f"expected welcome after hello, got {welcome}"
            raise ClientError(msg)
        return welcome

    async def register(
        self,
        server: str,
        secret: str,
        address: str,
        queues: list[str],
        capacity: int = 1,
        region: str = "default",
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Register as game server ``server``; return ``registered`` or raise ``ClientError``."""
        fields: dict[str, Any] = {
            "v": 1,
            "server": server,
            "secret": secret,
            "address": address,
            "capacity": capacity,
            "queues": queues,
            "region": region,
        }
        await self.request("register", **fields)
        registered = await self.recv(timeout)
        if registered.get("type") != "registered":
            msg = f"expected registered after register, got {registered}"
            raise ClientError(msg)
        return registered

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def _recv_binary(self) -> dict[str, Any]:
        try:
            header = await self.reader.readexactly(LENGTH_PREFIX)
            length = int.from_bytes(header, "big")
            if not 1 <= length <= MAX_INCOMING_FRAME:
                msg = f"server sent a frame length of {length} bytes"
                raise ClientError(msg)
            payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            msg = "server closed the connection"
            raise ClientError(msg) from None
        except ConnectionError as exc:
            msg = f"connection lost: {exc}"
            raise ClientError(msg) from None
        return _DECODE_MSGPACK.decode(payload)

    async def _recv_json(self) -> dict[str, Any]:
        try:
            line = await self.reader.readline()
        except ConnectionError as exc:
            msg = f"connection lost: {exc}"
            raise ClientError(msg) from None
        if not line.endswith(b"\n"):
            msg = "server closed the connection"
            raise ClientError(msg)
        return _DECODE_JSON.decode(line)
