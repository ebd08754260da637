"""One client connection: read, frame, answer what it can, hand the rest to the matchmaker.

The read loop takes large chunks, decodes every complete frame in a chunk and writes
the replies it made itself in one batch per chunk. Requests that change lobby state
go to the matchmaker loop through its queue. To keep replies in request order, once
a session has a request in flight, its own replies (``pong``, errors) travel through
the same queue as ``Relay`` requests instead of overtaking it.

Deadlines: a connection must send ``hello`` within ``hello_timeout`` and then a
complete message at least every ``heartbeat_timeout``; a partial frame is not
activity, and a frame must complete within ``frame_timeout`` of its first byte, so
a peer trickling bytes is cut off. The check is one lazy timer per session that
re-arms itself, so activity costs a float store and nothing more.

Each session's messages pass a token bucket: a message over the rate is answered
with ``rate_limited`` and dropped, and more than ``rate_burst`` rejected in a row
end the session with ``kicked`` {reason ``rate_limited``}.

Outgoing bytes are never awaited here. Each write goes to the transport's buffer;
a session whose unsent bytes pass ``max_outgoing`` is aborted as a slow consumer,
which bounds memory however many clients stop reading. A graceful close that
cannot flush its last bytes within ``close_timeout`` is aborted too.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, Final, Protocol

from lobbyd.auth import TokenVerifier
from lobbyd.core.model import PlayerRecord
from lobbyd.errors import (
    AlreadyAuthenticated,
    NotAuthenticated,
    RateLimited,
    RemoteError,
    StoreError,
    UnsupportedVersion,
)
from lobbyd.protocol.codec import Codec, Framing
from lobbyd.protocol.messages import PROTOCOL_VERSION, ClientMessage, Error, Hello, Kicked, Ping, Pong, ServerMessage
from lobbyd.server import logs
from lobbyd.server.ratelimit import TokenBucket
from lobbyd.server.requests import Gone, Incoming, Login, Relay, Request
from lobbyd.server.session_state import SessionEvent, SessionState, next_state

# Bytes asked of the socket per read: large enough to take a burst of pipelined
# frames in one call, small enough that one read's work never stalls the loop.
READ_CHUNK: Final = 65_536

log = logs.get(__name__)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_frame: int
    max_outgoing: int
    hello_timeout: float
    heartbeat_timeout: float
    frame_timeout: float
    rate_per_s: float
    rate_burst: int
    close_timeout: float = 5.0
    """Seconds a closing connection may take to flush its last bytes before it is aborted."""


class SessionHost(Protocol):
    """What a session needs from the daemon around it."""

    limits: SessionLimits
    verifier: TokenVerifier

    def submit(self, request: Request) -> None: ...
    def register(self, session: Session) -> None: ...
    def unregister(self, session: Session) -> None: ...
    async def load_player(self, player_id: str) -> PlayerRecord | None: ...


class Session:
    """One connected client, from accept to close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: SessionHost) -> None:
        self.id = secrets.token_hex(6)
        self.player: str | None = None
        self.state = SessionState.NEW
        self.inflight = 0
        self.close_reason: str | None = None
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._host = host
        self._codec = Codec(host.limits.max_frame)
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.time()
        self._last_active = self._opened
        self._partial_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._bucket = TokenBucket(host.limits.rate_per_s, host.limits.rate_burst, self._opened)
        peer = writer.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.log: Any = log.bind(session=self.id, peer=self.peer)

    @property
    def framing(self) -> Framing:
        return self._codec.framing

    @property
    def open(self) -> bool:
        """True while messages can still be written to this session."""
        return self.state is not SessionState.CLOSED and not self._transport.is_closing()

    # Life cycle.

    async def run(self) -> None:
        """Serve the connection until it closes; cleanup always runs."""
        self._host.register(self)
        self._arm_timer(self._opened + self._host.limits.hello_timeout)
        self.log.info("session_opened")
        try:
            await self._read_loop()
        except ConnectionError as exc:
            self.close_reason = self.close_reason or "connection_reset"
            self.log.info("session_reset", error=str(exc))
        except Exception:
            self.close_reason = "internal_error"
            self.log.exception("session_failed")
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        was_authenticated = self.state is SessionState.AUTHENTICATED or (
            self.state is SessionState.CLOSED and self.player is not None
        )
        self.close(self.close_reason or "peer_closed")
        self._host.unregister(self)
        if was_authenticated:
            self._host.submit(Gone(self))
        duration_ms = round((self._loop.time() - self._opened) * 1000)
        self.log.info("session_closed", reason=self.close_reason, duration_ms=duration_ms, player=self.player)

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close the connection; queued bytes are still written unless ``abort``."""
        if self.state is SessionState.CLOSED:
            return
        self.state = next_state(self.id, self.state, SessionEvent.CLOSE)
        self.close_reason = self.close_reason or reason
        if abort:
            self._transport.abort()
            return
        self._transport.close()
        # The transport closes once its buffer is flushed, which never happens while
        # the peer does not read. Until then the session stays registered and keeps its
        # buffer and descriptor, so the wait is bounded.
        if self._transport.get_write_buffer_size():
            self._close_timer = self._loop.call_later(self._host.limits.close_timeout, self._abort_unflushed)

    def _abort_unflushed(self) -> None:
        self._close_timer = None
        unsent = self._transport.get_write_buffer_size()
        self.log.info("close_timed_out", unsent=unsent, reason=self.close_reason)
        self._transport.abort()

    def kick(self, reason: str) -> None:
        """Tell the client why it is being disconnected, then close."""
        self.send(Kicked(reason=reason))
        self.close(reason)

    # Output.

    def send(self, message: ServerMessage) -> bool:
        """Queue ``message`` for writing; return False if the session cannot take it."""
        if not self.open:
            return False
        return self._write(self._codec.encode(message))

    def send_many(self, messages: list[ServerMessage]) -> bool:
        if not self.open:
            return False
        return self._write(b"".join(self._codec.encode(message) for message in messages))

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        await self._writer.drain()

    def _write(self, data: bytes) -> bool:
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > self._host.limits.max_outgoing:
            self.log.warning("slow_consumer", buffered=self._transport.get_write_buffer_size())
            self.close("slow_consumer", abort=True)
            return False
        return True

    # Input.

    async def _read_loop(self) -> None:
        while True:
            data = await self._reader.read(READ_CHUNK)
            if not data:
                self.close_reason = self.close_reason or "peer_closed"
                return
            if self.state is SessionState.CLOSED:
                return
            self._codec.receive_data(data)
            replies: list[ServerMessage] = []
            keep_going = await self._drain_codec(replies)
            if replies:
                self.send_many(replies)
            if not keep_going:
                self.close(self.close_reason or "bad_frame")
                return
            self._track_partial_frame()

    async def _drain_codec(self, replies: list[ServerMessage]) -> bool:
        """Handle every complete message buffered; return False when the session must close."""
        while True:
            try:
                message = self._codec.next_message()
            except RemoteError as exc:
                # An invalid message costs a token like a valid one, or a peer could send
                # them without limit, each with its reply and log line.
                if not exc.fatal and not self._bucket.take(self._loop.time()):
                    if not self._rate_limited("this invalid message", exc.rid, replies):
                        return False
                    continue
                self.log.warning("frame_rejected", code=exc.code, error=exc.message, fatal=exc.fatal)
                if exc.fatal:
                    # Written in this batch, ahead of any relayed reply, because the
                    # connection closes right after it.
                    replies.append(_error(exc))
                    return False
                self._reply(replies, _error(exc))
                continue
            if message is None:
                return True
            now = self._loop.time()
            self._last_active = now
            if not self._bucket.take(now):
                if not self._rate_limited(f"this {_type_of(message)!r}", message.rid, replies):
                    return False
                continue
            try:
                await self._handle(message, replies)
            except RemoteError as exc:
                self.log.info("request_rejected", code=exc.code, type=_type_of(message))
                if exc.fatal:
                    replies.append(_error(exc))
                    self.close_reason = exc.code
                    return False
                self._reply(replies, _error(exc))
            if self.state is SessionState.CLOSED:
                return True

    def _rate_limited(self, dropped: str, rid: int | None, replies: list[ServerMessage]) -> bool:
        """Answer a message over the rate; return False once the abuse is sustained.

        ``dropped`` names the message in the error, for example ``this 'ping'``.
        """
        if self._bucket.overdraft > self._host.limits.rate_burst:
            self.log.warning("rate_limit_exceeded", rejected=self._bucket.overdraft)
            replies.append(Kicked(reason="rate_limited"))
            self.close_reason = "rate_limited"
            return False
        retry_ms = max(round(self._bucket.retry_after() * 1000), 1)
        msg = f"more than {self._host.limits.rate_per_s:g} messages per second: {dropped} was dropped"
        self._reply(replies, Error(code=RateLimited.code, message=msg, rid=rid, retry_after_ms=retry_ms))
        return True

    async def _handle(self, message: ClientMessage, replies: list[ServerMessage]) -> None:
        if self.state is SessionState.NEW:
            if not isinstance(message, Hello):
                msg = f"send hello before {_type_of(message)!r}"
                raise NotAuthenticated(msg, rid=message.rid)
            await self._login(message)
        elif isinstance(message, Hello):
            msg = f"this connection is already authenticated as player {self.player!r}"
            raise AlreadyAuthenticated(msg, rid=message.rid)
        elif isinstance(message, Ping):
            self._reply(replies, Pong(rid=message.rid))
        else:
            self._forward(Incoming(self, message))

    async def _login(self, hello: Hello) -> None:
        if hello.v != PROTOCOL_VERSION:
            msg = f"protocol version {hello.v} is not supported: this server speaks version {PROTOCOL_VERSION}"
            raise UnsupportedVersion(msg, rid=hello.rid)
        try:
            self._host.verifier.verify(hello.token, hello.player)
        except RemoteError as exc:
            exc.rid = hello.rid
            self.log.warning("token_rejected", player=hello.player, error=exc.message)
            raise
        try:
            record = await self._host.load_player(hello.player)
        except StoreError:
            self.log.exception("player_load_failed", player=hello.player)
            self.kick("internal_error")
            return
        if self.state is not SessionState.NEW:
            return
        self.state = next_state(self.id, self.state, SessionEvent.HELLO)
        self.player = hello.player
        self.log = self.log.bind(player=hello.player)
        self._arm_timer(self._last_active + self._host.limits.heartbeat_timeout)
        self._forward(Login(self, hello, record))

    def _forward(self, request: Request) -> None:
        self.inflight += 1
        self._host.submit(request)

    def _reply(self, replies: list[ServerMessage], message: ServerMessage) -> None:
        if self.inflight:
            self._forward(Relay(self, message))
        else:
            replies.append(message)

    # Deadlines.

    def _track_partial_frame(self) -> None:
        """Start the frame deadline when a read leaves part of a frame buffered."""
        if not self._codec.buffered:
            self._partial_since = None
            return
        if self._partial_since is not None:
            return
        self._partial_since = self._loop.time()
        deadline = self._partial_since + self._host.limits.frame_timeout
        if self._timer is None or deadline < self._timer.when():
            self._arm_timer(deadline)

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.state is SessionState.CLOSED:
            return
        now = self._loop.time()
        if self._partial_since is not None and now >= self._partial_since + self._host.limits.frame_timeout:
            self.log.info("frame_timeout", buffered=self._codec.buffered)
            self.kick("frame_timeout")
            return
        if self.state is SessionState.NEW:
            if now >= self._opened + self._host.limits.hello_timeout:
                self.log.info("hello_timeout")
                self.kick("hello_timeout")
                return
            self._arm_timer(self._next_deadline(self._opened + self._host.limits.hello_timeout))
            return
        deadline = self._last_active + self._host.limits.heartbeat_timeout
        if now < deadline:
            self._arm_timer(self._next_deadline(deadline))
            return
        self.log.info("heartbeat_timeout", silent_ms=round((now - self._last_active) * 1000))
        self.kick("heartbeat_timeout")

    def _next_deadline(self, deadline: float) -> float:
        if self._partial_since is None:
            return deadline
        return min(deadline, self._partial_since + self._host.limits.frame_timeout)


def _error(exc: RemoteError) -> Error:
    return Error(code=exc.code, message=exc.message, rid=exc.rid)


def _type_of(message: ClientMessage) -> str:
    return str(type(message).__struct_config__.tag)

