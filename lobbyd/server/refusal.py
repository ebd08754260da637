"""Turn away a connection the server cannot take, in the framing the client speaks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

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


async def refuse_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str, retry_after_ms: int
) -> None:
    """Send ``error`` {code ``server_full``, ``retry_after_ms``} and close."""
    codec = Codec()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(FIRST_BYTE_WAIT_S):
            codec.receive_data(await reader.read(1))
    with contextlib.suppress(Exception):
        codec.next_message()
    error = Error(code=ServerFull.code, message=f"{reason}; retry later", retry_after_ms=retry_after_ms)
    log.warning("connection_refused", peer=peer_text(writer.get_extra_info("peername")), reason=reason)
    writer.write(codec.encode(error))
    writer.close()
