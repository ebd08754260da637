"""One client connection: read, frame, reply to what it can, hand the rest to the matchmaker.

A session is the connection's ``asyncio.Protocol``. Each ``data_received`` feeds the
codec, handles every complete frame synchronously and writes the replies it made
itself in one ``transport.write``. Only ``hello`` and ``get_history`` read the store:
reading pauses while that read runs in a task, then the rest of the buffered frames
are handled in order. Requests that change lobby state
go to the matchmaker loop through its queue. To keep replies in request order, once
a session has a request in flight, its own replies (``pong``, errors) travel through
the same queue as ``Relay`` requests instead of overtaking it. A fatal error, such as
a broken frame, goes the same way when requests are in flight: reading stops and the
connection closes once the error is sent, or after ``close_timeout`` at most.

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
cannot flush its last bytes within ``close_timeout`` is aborted too. ``drain``
waits on the transport's ``pause_writing`` and ``resume_writing`` calls, for the
fan-out of a match start.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from lobbyd.auth import TokenVerifier
from lobbyd.core.model import HistoryEntry, PlayerRecord
from lobbyd.errors import (
    AlreadyAuthenticated,
    NotAuthenticated,
    RateLimited,
    RemoteError,
    StoreError,
    UnsupportedVersion,
)
from lobbyd.protocol.codec import Codec, Framing
from lobbyd.protocol.messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    Error,
    GetHistory,
    Hello,
    Kicked,
    Ping,
    Pong,
    Register,
    ServerMessage,
)
from lobbyd.server import logs
from lobbyd.server.game_server_session import SessionRole, check_registration, history_message
from lobbyd.server.metrics import Metrics
from lobbyd.server.pacing import Pacer
from lobbyd.server.ratelimit import TokenBucket
from lobbyd.server.requests import Gone, Incoming, Login, Registration, Relay, Request
from lobbyd.server.session_state import SessionEvent, SessionState, next_state

log = logs.get(__name__)

# Returned by the input steps when the session must close after the replies so far.
_CLOSE: Final = object()
# Returned instead when the last reply went to the matchmaker behind requests in
# flight: the session closes when the matchmaker sends that reply.
_CLOSE_LATER: Final = object()

# Aliases for the per-message paths: on CPython 3.11 reading an enum member as a
# class attribute costs about 60 ns, ten times a module global (timeit).
_NEW: Final = SessionState.NEW
_AUTHENTICATED: Final = SessionState.AUTHENTICATED
_CLOSED: Final = SessionState.CLOSED
_PLAYER: Final = SessionRole.PLAYER


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_frame: int
    max_outgoing: int
    hello_timeout: float
    heartbeat_timeout: float
    frame_timeout: float
    rate_per_s: float
    rate_burst: int
    game_server_rate_per_s: float = 200.0
    game_server_rate_burst: int = 600
    close_timeout: float = 5.0
    """Seconds a closing connection may take to flush its last bytes before it is aborted,
    and that a fatal error may wait behind requests in flight before it is sent out of turn."""


class SessionHost(Protocol):
    """The services a session uses from the daemon around it."""

    limits: SessionLimits
    verifier: TokenVerifier
    burst_pacer: Pacer
    """Bounds the work per loop iteration of logins that one store read resumes together."""
    game_server_key: bytes | None
    metrics: Metrics

    def submit(self, request: Request) -> None: ...
    def register(self, session: Session) -> None: ...
    def unregister(self, session: Session) -> None: ...
    def release_later(self, session: Session) -> None:
        """Call ``session.release()`` in a later loop iteration, paced with other closes."""
    async def load_player(self, player_id: str) -> PlayerRecord | None: ...
    async def load_history(self, player_id: str, limit: int) -> list[HistoryEntry]: ...


class Session(asyncio.Protocol):
    """One connected client, from accept to close."""

    # Slots and a logger bound only when a line is written keep an idle session
    # small: at 100,000 sessions every hundred bytes is 10 MB.
    __slots__ = (
        "__weakref__",
        "_bucket",
        "_close_timer",
        "_codec",
        "_connected",
        "_drain_waiter",
        "_host",
        "_last_active",
        "_loop",
        "_opened",
        "_output_slots",
        "_partial_since",
        "_pending_last",
        "_released",
        "_store_read",
        "_timer",
        "_transport",
        "_write_paused",
        "address",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "frames_in",
        "frames_out",
        "id",
        "inflight",
        "peer",
        "player",
        "role",
        "server",
        "state",
    )

    def __init__(self, host: SessionHost) -> None:
        self.id = _new_session_id()
        self.player: str | None = None
        self.role: SessionRole | None = None
        self.server: str | None = None
        """The game server's id, for a session that registered as one."""
        self.state = SessionState.NEW
        self.inflight = 0
        self.close_reason: str | None = None
        # Set by connection_made, which the event loop calls right after creating the session.
        self._transport: asyncio.Transport
        self._host = host
        self._codec = Codec(host.limits.max_frame)
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.time()
        self._last_active = self._opened
        self._partial_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # The reply that ends the session while it waits behind requests in flight.
        self._pending_last: ServerMessage | None = None
        self._bucket = TokenBucket(host.limits.rate_per_s, host.limits.rate_burst, self._opened)
        # The task reading the store for a hello or get_history; reading is paused meanwhile.
        self._store_read: asyncio.Task[None] | None = None
        self._connected = False
        self._released = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # Output queued behind a reply that waits for a commit (``reserve``); None
        # while nothing waits, which is almost always.
        self._output_slots: collections.deque[ReplySlot] | None = None
        self.address = ""
        self.peer = ""
        # Traffic counters for metrics: plain ints, read at scrape time. Bytes are added
        # once per read or write call, frames once per message, and nothing takes a lock.
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def log(self) -> Any:
        """A logger bound to this session's ids."""
        if self.server is not None:
            return log.bind(session=self.id, peer=self.peer, server=self.server)
        if self.player is None:
            return log.bind(session=self.id, peer=self.peer)
        return log.bind(session=self.id, peer=self.peer, player=self.player)

    @property
    def framing(self) -> Framing:
        return self._codec.framing

    @property
    def open(self) -> bool:
        """True while messages can still be written to this session."""
        return self.state is not _CLOSED and not self._transport.is_closing()

    # Life cycle: the transport's callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._connected = True
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._host.register(self)
        self._arm_timer(self._opened + self._host.limits.hello_timeout)
        log.info("session_opened", session=self.id, peer=self.peer)

    def data_received(self, data: bytes) -> None:
        """Handle every complete frame in the buffer and write the replies in one batch.

        uvloop 0.23 passes at most 256,000 bytes per call (its receive buffer), so
        one call's work is bounded by that and by the session's rate limit.
        """
        self.bytes_in += len(data)
        if self.state is _CLOSED:
            self.release()
            return
        self._codec.receive_data(data)
        if self._store_read is not None:
            # Handled in order once the store read ends; reading is paused until then.
            return
        try:
            replies: list[ServerMessage] = []
            outcome = self._process(replies)
            if replies:
                self.send_many(replies)
            if outcome is not None:
                self._end_batch(outcome)
            elif self._partial_since is not None or self._codec.buffered:
                self._track_partial_frame()
        except Exception:
            self._fail()

    def eof_received(self) -> bool:
        # When 10,000 clients disconnect at once, libuv delivers every end of stream in
        # one poll pass. Closing them all there held the loop for 150-200 ms in the
        # lifecycle benchmark, mostly in uvloop and the kernel's close (py-spy), so the
        # host releases this session later, in paced slices.
        self.close_reason = self.close_reason or "peer_closed"
        self._host.release_later(self)
        # True: the transport stays open until ``release`` closes it; the replies
        # already queued are still written then.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._connected = False
        if exc is not None:
            self.close_reason = self.close_reason or "connection_reset"
            self.log.info("session_reset", error=str(exc))
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._wake_drain()
        self.release()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _fail(self) -> None:
        self.close_reason = "internal_error"
        self.log.exception("session_failed")
        self.release()

    def release(self) -> None:
        """Close, unregister and tell the lobby, once; the transport may still be flushing."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        was_authenticated = self.state is SessionState.AUTHENTICATED or (
            self.state is SessionState.CLOSED and self.role is not None
        )
        self.close(self.close_reason or "peer_closed")
        self._host.unregister(self)
        if was_authenticated:
            self._host.submit(Gone(self))
        duration_ms = round((self._loop.time() - self._opened) * 1000)
        log.info(
            "session_closed",
            session=self.id,
            peer=self.peer,
            player=self.player,
            reason=self.close_reason,
            duration_ms=duration_ms,
        )

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close the connection; queued bytes are still written unless ``abort``."""
        if self.state is SessionState.CLOSED:
            return
        self.state = next_state(self.id, self.state, SessionEvent.CLOSE)
        self.close_reason = self.close_reason or reason
        if self._close_timer is not None:
            # The wait for a last reply in flight (``_wait_to_close``) ends here.
            self._close_timer.cancel()
            self._close_timer = None
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

    def kick(self, reason: str, retry_after_ms: int | None = None) -> None:
        """Tell the client why it is being disconnected, and when to come back, then close."""
        self.send(Kicked(reason=reason, retry_after_ms=retry_after_ms))
        self.close(reason)

    # Output.

    def send(self, message: ServerMessage) -> bool:
        """Queue ``message`` for writing; return False if the session cannot take it."""
        if not self.open:
            return False
        self.frames_out += 1
        if type(message) is Error:
            self._host.metrics.errors_sent[message.code] += 1
        return self._write(self._codec.encode(message))

    def send_many(self, messages: list[ServerMessage]) -> bool:
        """Queue ``messages`` in one write; return False if the session cannot take them."""
        if self.state is _CLOSED or self._transport.is_closing():
            return False
        self.frames_out += len(messages)
        encode = self._codec.encode
        if len(messages) == 1:
            message = messages[0]
            if type(message) is Error:
                self._host.metrics.errors_sent[message.code] += 1
            return self._write(encode(message))
        for message in messages:
            if type(message) is Error:
                self._host.metrics.errors_sent[message.code] += 1
        return self._write(b"".join([encode(message) for message in messages]))

    @property
    def backed_up(self) -> bool:
        """True while unsent bytes are above the transport's high-water mark."""
        return self._transport.get_write_buffer_size() > self._transport.get_write_buffer_limits()[1]

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark.

        Raises ``ConnectionResetError`` if the connection is lost first.
        """
        if not self._write_paused:
            return
        self._raise_if_lost()
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        # Every caller waiting on this session shares the future, so it only ever gets a
        # result. An exception that no caller retrieved would be logged at collection.
        await asyncio.shield(waiter)
        self._raise_if_lost()

    def _raise_if_lost(self) -> None:
        if not self._connected:
            msg = f"session {self.id}: the connection is lost"
            raise ConnectionResetError(msg)

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reserve(self) -> ReplySlot:
        """Keep this session's next place in its output for a reply that ``fill`` sends later.

        Everything written meanwhile waits behind the reply, so replies keep request
        order even when one of them waits for a commit.
        """
        slot = ReplySlot()
        if self._output_slots is None:
            self._output_slots = collections.deque()
        self._output_slots.append(slot)
        return slot

    def fill(self, slot: ReplySlot, message: ServerMessage | None) -> None:
        """Send ``message`` in the place ``slot`` kept, then whatever waited behind it.

        None gives the place up without a reply.
        """
        slot.data = b""
        if message is not None:
            self.frames_out += 1
            if type(message) is Error:
                self._host.metrics.errors_sent[message.code] += 1
            slot.data = self._codec.encode(message)
        slots = self._output_slots
        while slots and slots[0].data is not None:
            data = slots.popleft().data
            if self.open and data:
                self._write_now(data)
        if not slots:
            self._output_slots = None

    def _write(self, data: bytes) -> bool:
        if self._output_slots is not None:
            later = ReplySlot()
            later.data = data
            self._output_slots.append(later)
            return True
        return self._write_now(data)

    def _write_now(self, data: bytes) -> bool:
        self.bytes_out += len(data)
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > self._host.limits.max_outgoing:
            self.log.warning("slow_consumer", buffered=self._transport.get_write_buffer_size())
            self.close("slow_consumer", abort=True)
            return False
        return True

    # Input.

    def _end_batch(self, outcome: Hello | GetHistory | object | None) -> None:
        """Read the store, close, or wait for more bytes, once a batch's replies are written."""
        if isinstance(outcome, Hello | GetHistory):
            self._start_store_read(outcome)
            return
        if outcome is _CLOSE:
            self.close(self.close_reason or "bad_frame")
            self.release()
            return
        if outcome is _CLOSE_LATER:
            self._wait_to_close()
            return
        self._track_partial_frame()

    def _wait_to_close(self) -> None:
        """Read nothing more and close once the matchmaker sends the last reply.

        A stuck matchmaker cannot keep the connection open: after ``close_timeout``
        the last reply is written at once, out of turn, and the session closes.
        """
        self.close_reason = self.close_reason or "bad_frame"
        if not self._transport.is_closing():
            self._transport.pause_reading()
        self._close_timer = self._loop.call_later(self._host.limits.close_timeout, self._close_overdue)

    def close_after_reply(self) -> None:
        """Close the session now that its last reply is sent, behind the earlier ones."""
        self.close(self.close_reason or "bad_frame")
        self.release()

    def _close_overdue(self) -> None:
        self._close_timer = None
        self.log.warning("close_wait_timed_out", inflight=self.inflight, reason=self.close_reason)
        if self._pending_last is not None:
            self.send(self._pending_last)
        self.close_after_reply()

    def _start_store_read(self, message: Hello | GetHistory) -> None:
        # Reading pauses, so the codec holds at most one read's bytes while the task
        # runs. The frames after this one wait for it and are handled in order.
        if not self._transport.is_closing():
            self._transport.pause_reading()
        self._store_read = self._loop.create_task(self._read_store(message))

    async def _read_store(self, message: Hello | GetHistory) -> None:
        """Handle ``message`` and every buffered message after it, then resume reading."""
        replies: list[ServerMessage] = []
        try:
            outcome = await self._await_then_process(message, replies)
            while isinstance(outcome, Hello | GetHistory):
                # Two store reads in a row keep their order without a second task. The
                # replies so far are sent first, because the matchmaker may reply to a
                # later request while the next read waits.
                if replies:
                    self.send_many(replies)
                    replies = []
                outcome = await self._await_then_process(outcome, replies)
        except Exception:
            self._store_read = None
            self._fail()
            return
        self._store_read = None
        if self._released:
            return
        if not self._transport.is_closing():
            self._transport.resume_reading()
        try:
            if replies:
                self.send_many(replies)
            self._end_batch(outcome)
        except Exception:
            self._fail()

    def _process(self, replies: list[ServerMessage]) -> Hello | GetHistory | object | None:
        """Handle the buffered messages until the buffer runs dry (None), a message
        needs the store (that ``hello`` or ``get_history``), or the session must close
        (``_CLOSE`` now, ``_CLOSE_LATER`` once its requests in flight are answered)."""
        codec = self._codec
        # One reading of the clock serves the whole batch: its frames arrived together.
        now = self._loop.time()
        while True:
            try:
                message = codec.next_message()
            except RemoteError as exc:
                # An invalid message costs a token like a valid one, or a peer could send
                # them without limit, each with its reply and log line.
                if not exc.fatal and not self._bucket.take(now):
                    if not self._rate_limited("this invalid message", exc.rid, replies):
                        return self._last_reply(replies, Kicked(reason="rate_limited"))
                    continue
                self.log.warning("frame_rejected", code=exc.code, error=exc.message, fatal=exc.fatal)
                if exc.fatal:
                    return self._last_reply(replies, _error(exc))
                self._reply(replies, _error(exc))
                continue
            if message is None:
                return None
            self.frames_in += 1
            self._last_active = now
            if not self._bucket.take(now):
                if not self._rate_limited(f"this {_type_of(message)!r}", message.rid, replies):
                    return self._last_reply(replies, Kicked(reason="rate_limited"))
                continue
            if type(message) is Ping and self.state is _AUTHENTICATED:
                self._reply(replies, Pong(rid=message.rid))
                continue
            if self.state is _NEW and type(message) is Hello:
                return message
            if type(message) is GetHistory and self.role is _PLAYER:
                return message
            try:
                self._handle(message, replies)
            except RemoteError as exc:
                self.log.info("request_rejected", code=exc.code, type=_type_of(message))
                if exc.fatal:
                    self.close_reason = exc.code
                    return self._last_reply(replies, _error(exc))
                self._reply(replies, _error(exc))
            if self.state is _CLOSED:
                return None

    async def _await_then_process(
        self, message: Hello | GetHistory, replies: list[ServerMessage]
    ) -> Hello | GetHistory | object | None:
        """Handle a message that reads the store, then go on with the rest of the batch."""
        try:
            if isinstance(message, Hello):
                await self._login(message)
            else:
                await self._history(message, replies)
        except RemoteError as exc:
            self.log.info("request_rejected", code=exc.code, type=_type_of(message))
            if exc.fatal:
                self.close_reason = exc.code
                return self._last_reply(replies, _error(exc))
            self._reply(replies, _error(exc))
        if self.state is SessionState.CLOSED:
            return None
        return self._process(replies)

    def _rate_limited(self, dropped: str, rid: int | None, replies: list[ServerMessage]) -> bool:
        """Reply to a message over the rate; return False once the abuse is sustained,
        and the caller ends the session with ``kicked``.

        ``dropped`` names the message in the error, for example ``this 'ping'``.
        """
        if self._bucket.overdraft > self._host.limits.rate_burst:
            self.log.warning("rate_limit_exceeded", rejected=self._bucket.overdraft)
            self.close_reason = "rate_limited"
            return False
        retry_ms = max(round(self._bucket.retry_after() * 1000), 1)
        msg = f"more than {self._host.limits.rate_per_s:g} messages per second: {dropped} was dropped"
        self._reply(replies, Error(code=RateLimited.code, message=msg, rid=rid, retry_after_ms=retry_ms))
        return True

    def _handle(self, message: ClientMessage, replies: list[ServerMessage]) -> None:
        if self.state is SessionState.NEW:
            if isinstance(message, Register):
                self._register(message)
                return
            msg = f"send hello before {_type_of(message)!r}"
            raise NotAuthenticated(msg, rid=message.rid)
        if isinstance(message, Hello | Register):
            who = f"player {self.player!r}" if self.role is SessionRole.PLAYER else "a game server"
            msg = f"this connection is already authenticated as {who}"
            raise AlreadyAuthenticated(msg, rid=message.rid)
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
        # One batched read resumes every login of a connection storm in the same turn
        # of the loop: 500 at a time in the lifecycle benchmark.
        await self._host.burst_pacer.pace()
        if self.state is not SessionState.NEW:
            return
        self.state = next_state(self.id, self.state, SessionEvent.HELLO)
        self.player = hello.player
        self.role = SessionRole.PLAYER
        # The hello deadline's timer usually stays armed: when it fires it finds the
        # session authenticated and re-arms itself for the heartbeat deadline. Only a
        # heartbeat timeout shorter than the hello timeout needs an earlier timer.
        heartbeat_deadline = self._last_active + self._host.limits.heartbeat_timeout
        if self._timer is None or heartbeat_deadline < self._timer.when():
            self._arm_timer(heartbeat_deadline)
        self._forward(Login(self, hello, record))

    def _register(self, message: Register) -> None:
        """Make this a game-server session, if the secret checks out."""
        try:
            check_registration(self._host.game_server_key, message)
        except RemoteError as exc:
            self.log.warning("registration_rejected", server=message.server, code=exc.code, error=exc.message)
            raise
        self.state = next_state(self.id, self.state, SessionEvent.HELLO)
        self.role = SessionRole.GAME_SERVER
        self.server = message.server
        limits = self._host.limits
        self._bucket = TokenBucket(limits.game_server_rate_per_s, limits.game_server_rate_burst, self._loop.time())
        self._arm_timer(self._last_active + limits.heartbeat_timeout)
        self._forward(Registration(self, message))

    async def _history(self, request: GetHistory, replies: list[ServerMessage]) -> None:
        """Reply to get_history from the store; the read loop waits, so replies keep their order."""
        assert self.player is not None
        try:
            entries = await self._host.load_history(self.player, request.limit)
        except StoreError:
            self.log.exception("history_load_failed")
            error = Error(code="internal", message="the server could not read the match history", rid=request.rid)
            self._reply(replies, error)
            return
        self._reply(replies, history_message(entries, request.rid))

    def _forward(self, request: Request) -> None:
        self.inflight += 1
        self._host.submit(request)

    def _reply(self, replies: list[ServerMessage], message: ServerMessage) -> None:
        if self.inflight:
            self._forward(Relay(self, message))
        else:
            replies.append(message)

    def _last_reply(self, replies: list[ServerMessage], message: ServerMessage) -> object:
        """Queue the reply that ends the session: ``_CLOSE`` if it goes in this batch,
        ``_CLOSE_LATER`` if it waits behind requests in flight."""
        if not self.inflight:
            replies.append(message)
            return _CLOSE
        self._forward(Relay(self, message, close=True))
        self._pending_last = message
        return _CLOSE_LATER

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
        if self._released:
            self._timer = None
            return
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


# Session ids only need to be unique within this process and readable in logs: a
# random per-process prefix and a counter, without a system call per connection.
_SESSION_PREFIX: Final = secrets.token_hex(3)
_session_numbers = itertools.count(1)


class ReplySlot:
    """A place in a session's output: ``data`` is None until the reply is known."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: bytes | None = None


def _new_session_id() -> str:
    return f"{_SESSION_PREFIX}{next(_session_numbers):x}"


def _error(exc: RemoteError) -> Error:
    return Error(code=exc.code, message=exc.message, rid=exc.rid)


def _type_of(message: ClientMessage) -> str:
    return str(type(message).__struct_config__.tag)

