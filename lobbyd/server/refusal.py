"""Turn away a connection the server cannot take, in the framing the client speaks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, cast

from lobbyd.errors import ServerFull
from lobbyd.protocol.codec import Codec
from lobbyd.protocol.messages import Error
from lobbyd.server import logs

# A client sends its first bytes right after connecting; waiting this long for them
# lets the refusal use the client's framing without holding the socket for long.
FIRST_BYTE_WAIT_S: Final = 1.0

log = logs.get(__name__)


def peer_text(peername: object) -> str:
    """Return a socket's peer address as "HOST:PORT", the form session log lines use."""
    if isinstance(peername, tuple):
        return f"{peername[0]}:{peername[1]}"
    return str(peername)


class Refusal(asyncio.Protocol):
    """Send ``error`` {code ``server_full``, ``retry_after_ms``} and close.

    The error goes out after the client's first bytes, or after ``FIRST_BYTE_WAIT_S``
    or the client's end of stream, whichever comes first.
    """

    __slots__ = ("_codec", "_reason", "_retry_after_ms", "_timer", "_transport")

    def __init__(self, reason: str, retry_after_ms: int) -> None:
        self._reason = reason
        self._retry_after_ms = retry_after_ms
        self._codec = Codec()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        log.warning("connection_refused", peer=peer_text(transport.get_extra_info("peername")), reason=self._reason)
        self._timer = asyncio.get_running_loop().call_later(FIRST_BYTE_WAIT_S, self._refuse)

    def data_received(self, data: bytes) -> None:
        # Only the first byte matters: it picks the framing of the reply.
        self._codec.receive_data(data[:1])
        self._refuse()

    def eof_received(self) -> bool:
        self._refuse()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Parsing the first byte sets the framing; an invalid one leaves the reply in JSON.
        with contextlib.suppress(Exception):
            self._codec.next_message()
        message = f"{self._reason}; retry later"
        error = Error(code=ServerFull.code, message=message, retry_after_ms=self._retry_after_ms)
        transport.write(self._codec.encode(error))
        transport.close()
