"""The matchmaker loop: the one task that changes lobby state.

It takes requests from its ``asyncio.Queue`` in arrival order, applies each to the
``Lobby`` in one synchronous call, carries out the effects, and every
``tick_interval`` seconds runs the lobby's tick. Between two awaits nothing else runs,
so no lock guards the lobby.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeGuard

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import MatchRecord, PlayerRecord
from lobbyd.core.parties import PARTY_REQUESTS
from lobbyd.errors import RemoteError, ServerBusy, ShuttingDown, StoreError
from lobbyd.protocol import messages as m
from lobbyd.server import game_server_session, logs
from lobbyd.server.fanout import drain_stalled, write_all
from lobbyd.server.game_server_session import SessionRole
from lobbyd.server.metrics import Metrics
from lobbyd.server.pacing import PacedQueue, Pacer
from lobbyd.server.persistence import Persistence
from lobbyd.server.recording import EventRecorder
from lobbyd.server.registry import Registry
from lobbyd.server.requests import Gone, Incoming, Login, Registration, Relay, Request
from lobbyd.server.session import ReplySlot, Session

# Seconds of work per turn of the loop before sessions get to read and write again:
# a burst of 10,000 joins or accepts is cut into slices this long. A request count
# would not bound the time, because one send costs from about 2 to over 20 µs
# (wire and lifecycle benchmarks, py-spy), depending on whether the peer must be woken.
REQUEST_SLICE_S: Final = 0.002

# Seconds per turn of the loop for work that becomes ready in bursts: match-start
# fan-out, the release of sessions whose peer closed, and logins resumed by one
# store read. A group commit wakes every match it wrote at once, and 50 of them
# write 500 match_start messages. A load balancer's restart can end or open
# thousands of connections at once.
BURST_SLICE_S: Final = 0.002

# Default bound of the request queue: 5 requests per connection at the default
# max_connections. At an estimated 10 to 30 microseconds per request, a full queue is
# under 2 seconds of work.
MAX_QUEUED_REQUESTS: Final = 50_000

# retry_after_ms sent with server_busy, in milliseconds: long enough for the
# loop to work through a full queue, per the estimate above.
BUSY_RETRY_MS: Final = 2_000

# A started match is committed before anyone hears of it. These are the waits, in
# seconds, between attempts when the store fails; after the last, the match is
# cancelled rather than announced without a record.
COMMIT_RETRY_DELAYS: Final = (0.05, 0.2, 1.0)

log = logs.get(__name__)


class MatchmakerLoop:
    def __init__(
        self,
        lobby: Lobby,
        registry: Registry,
        persistence: Persistence,
        *,
        tick_interval: float,
        send_timeout: float,
        max_queued: int = MAX_QUEUED_REQUESTS,
        metrics: Metrics | None = None,
    ) -> None:
        self.lobby = lobby
        self.registry = registry
        self.persistence = persistence
        self.tick_interval = tick_interval
        self.send_timeout = send_timeout
        self.metrics = metrics or Metrics()
        # Bounded by ``max_queued`` player requests, checked in ``submit``. The
        # asyncio.Queue itself is unbounded because logins, disconnects, game-server
        # requests and relayed replies must always enter: each session has one login and
        # one disconnect, and its rate limit caps the rest.
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.max_queued = max_queued
        # Requests rejected since the queue last filled up; None while it is not full.
        self._busy_rejected: int | None = None
        # Effects of the last tick not yet carried out, in order (see ``tick``).
        self._pending: collections.deque[fx.Effect] = collections.deque()
        self.draining = False
        # False once a graceful stop begins: ready checks still run, no new ones form.
        self.forming = True
        # Matches started and not yet announced or cancelled, and finish tasks; the
        # shutdown waits for them.
        self.starts: set[asyncio.Future[None]] = set()
        # Set by the server when record_events_file is configured.
        self.recorder: EventRecorder | None = None
        # Shared with the server's sessions (``BURST_SLICE_S``).
        self.burst_pacer = Pacer(BURST_SLICE_S)
        self._announcements: PacedQueue[_Start] = PacedQueue(self.burst_pacer, self._announce)

    def submit(self, request: Request) -> None:
        """Queue ``request``, or reject a player request with ``server_busy`` when the queue is full."""
        if self.requests.qsize() >= self.max_queued and _bounded(request):
            self._reject_busy(request)
            return
        self.requests.put_nowait(request)

    def _reject_busy(self, request: Incoming) -> None:
        session = request.session
        session.inflight -= 1
        if self._busy_rejected is None:
            log.warning("request_queue_full", queued=self.requests.qsize(), max_queued=self.max_queued)
            self._busy_rejected = 0
        self._busy_rejected += 1

        msg = f"the server has {self.max_queued} requests waiting; this request was dropped, retry after retry_after_ms"
        error = m.Error(code=ServerBusy.code, message=msg, rid=request.message.rid, retry_after_ms=BUSY_RETRY_MS)
        if session.inflight:
            # Behind the replies to the session's queued requests, which keeps replies in order.
            session.inflight += 1
            self.requests.put_nowait(Relay(session, error))
        else:
            session.send(error)

    async def run(self) -> None:
        """Apply requests as they arrive and tick on schedule, until cancelled."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.tick_interval
        log.info("matchmaker_started", tick_interval_s=self.tick_interval)
        try:
            while True:
                wait = next_tick - loop.time()
                if wait > 0 and self.requests.empty() and not self._pending:
                    try:
                        async with asyncio.timeout(wait):
                            self._handle_after_pending(await self.requests.get())
                    except TimeoutError:
                        pass
                else:
                    # Let sessions read and write before the next slice of work.
                    await asyncio.sleep(0)
                self.drain_requests(REQUEST_SLICE_S)
                if loop.time() >= next_tick and not self._pending:
                    self.tick(REQUEST_SLICE_S)
                    # A late tick does not trigger a burst of catch-up ticks; a tick
                    # that hit its match budget is continued at once.
                    next_tick = max(next_tick + self.tick_interval, loop.time())
                    if self.lobby.more_to_match:
                        next_tick = loop.time()
        finally:
            log.info("matchmaker_stopped")

    def _handle_after_pending(self, request: Request) -> None:
        # A tick called from outside this loop may have left effects. The request is
        # no local of ``run``, which would keep its session alive until the next one.
        self._apply_pending(None)
        self.handle(request)

    def drain_requests(self, seconds: float | None = None) -> None:
        """Apply the requests already queued without waiting, for at most about ``seconds``.

        The effects a tick left over come first, so that every session hears of the
        tick before the outcome of a request that came after it.
        """
        deadline = None if seconds is None else time.perf_counter() + seconds
        if not self._apply_pending(deadline):
            return
        requests = self.requests
        while not requests.empty():
            self.handle(requests.get_nowait())
            if deadline is not None and time.perf_counter() >= deadline:
                return
        if self._busy_rejected is not None:
            log.info("request_queue_drained", rejected=self._busy_rejected)
            self._busy_rejected = None

    def tick(self, seconds: float | None = None) -> None:
        """Run the lobby's tick and carry out its effects for at most about ``seconds``.

        A tick that forms 50 matches sends 500 match_found messages, 8 to 21 ms of
        writes in the lifecycle benchmark. The effects left when ``seconds`` run out
        wait for the next turns of the loop, and ``drain_requests`` applies no
        request before them. ``None`` carries out every effect now.
        """
        started = time.perf_counter()
        try:
            self._pending.extend(self.lobby.tick(time.time(), form_matches=self.forming))
        except Exception:
            log.exception("tick_failed")
        self.metrics.tick_seconds.observe(time.perf_counter() - started)
        self._apply_pending(None if seconds is None else started + seconds)

    def _apply_pending(self, deadline: float | None) -> bool:
        """Carry out the effects a tick left over until ``deadline``; return whether none is left."""
        pending = self._pending
        while pending:
            try:
                self.apply((pending.popleft(),))
            except Exception:
                log.exception("tick_effect_failed")
            if deadline is not None and time.perf_counter() >= deadline:
                break
        return not pending

    def handle(self, request: Request) -> None:
        """Apply one request; a rejected request gets its error as the reply."""
        session = request.session
        if not isinstance(request, Gone):
            session.inflight -= 1
        try:
            self.apply(self._dispatch(request))
        except RemoteError as exc:
            session.send(m.Error(code=exc.code, message=exc.message, rid=exc.rid, retry_after_ms=exc.retry_after_ms))
            session.log.info("request_rejected", code=exc.code)
        except Exception:
            session.log.exception("request_failed", request=type(request).__name__)
            rid = request.message.rid if isinstance(request, Incoming) else None
            session.send(m.Error(code="internal", message="the server failed to process this request", rid=rid))

    def _dispatch(self, request: Request) -> list[fx.Effect]:
        now = time.time()
        session = request.session
        if isinstance(request, Relay):
            session.send(request.message)
            if request.close:
                session.close_after_reply()
            return []
        if isinstance(request, Gone):
            return self.lobby.disconnect(session.id, now)
        if not session.open:
            return []
        if isinstance(request, Login):
            hello = request.hello
            return self.lobby.connect(session.id, request.record, hello.player, hello.name, now, hello.rid)
        if isinstance(request, Registration):
            assert self.lobby.hosting is not None, "registration accepted by a lobby that hosts no matches"
            return self.lobby.hosting.register(session.id, request.register, now)
        if session.role is SessionRole.GAME_SERVER:
            if not self._registered(session):
                return []
            return game_server_session.dispatch(self.lobby, session.id, request.message, now)
        if session.id not in self.lobby.sessions:
            # A session replaced by a newer login; it is already being closed.
            return []
        return self._request(session, request.message, now)

    def _registered(self, session: Session) -> bool:
        # A game-server session replaced by a newer register is already being closed.
        hosting = self.lobby.hosting
        return hosting is not None and session.id in hosting.pool.by_session

    def _request(self, session: Session, message: m.ClientMessage, now: float) -> list[fx.Effect]:
        game_server_session.check_player_request(message)
        if isinstance(message, m.GetProfile):
            return self.lobby.profile(session.id, message.rid)
        if isinstance(message, m.JoinQueue):
            if self.draining:
                raise ShuttingDown(self._draining_message(), rid=message.rid)
            return self.lobby.join_queue_request(session.id, message, now)
        if isinstance(message, m.LeaveQueue):
            return self.lobby.leave_queue(session.id, message.queue, now, message.rid)
        if isinstance(message, m.Accept):
            return self.lobby.accept(session.id, message.match, now, message.rid)
        if isinstance(message, m.Decline):
            return self.lobby.decline(session.id, message.match, now, message.rid)
        return self._party_request(session, message, now)

    def _party_request(self, session: Session, message: m.ClientMessage, now: float) -> list[fx.Effect]:
        if isinstance(message, PARTY_REQUESTS):
            return self.lobby.parties.handle(session.id, message, now)
        msg = f"no lobby handler for {type(message).__name__}"
        raise TypeError(msg)

    def _draining_message(self) -> str:
        if self.forming:
            return "the server is draining for maintenance and takes no new queue entries; try again later"
        return "the server is shutting down and takes no new queue entries; reconnect shortly"

    # Effects.

    def apply(self, effects: Iterable[fx.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, fx.Send):
                self._send(effect)
            elif isinstance(effect, fx.Close):
                self._close(effect)
            elif isinstance(effect, fx.OfferMatch):
                self._offer(effect)
            elif isinstance(effect, fx.StartMatch):
                self._spawn_start(effect)
            elif isinstance(effect, fx.FinishMatch):
                self._spawn_finish(effect)
            elif isinstance(effect, fx.SavePlayer):
                self.persistence.mark_player(effect.record)
            elif isinstance(effect, fx.SaveMatch):
                self.persistence.mark_match(effect.record)
            elif isinstance(effect, fx.Event):
                log.info(effect.name, **effect.fields)
                self.metrics.record_event(effect.name, dict(effect.fields))
                if self.recorder is not None:
                    self.recorder.observe(effect, self.lobby, time.time())

    def _send(self, effect: fx.Send) -> None:
        session = self.registry.get(effect.session)
        if session is not None:
            session.send(effect.message)

    def _close(self, effect: fx.Close) -> None:
        session = self.registry.get(effect.session)
        if session is not None:
            session.close(effect.reason)

    def _offer(self, effect: fx.OfferMatch) -> None:
        # A player whose connection is already closing cannot take match_found, so
        # the match is voided before anyone hears of it.
        lost = [self.lobby.sessions[send.session] for send in effect.sends if not self._reachable(send.session)]
        if lost:
            self.apply(self.lobby.void_match(effect.match, lost, time.time()))
            return
        for send in effect.sends:
            self._send(send)

    def _reachable(self, session_id: str) -> bool:
        session = self.registry.get(session_id)
        return session is not None and session.open

    def _spawn_start(self, effect: fx.StartMatch) -> None:
        """Queue the match's commit; its players hear of it from ``_announce`` once it is written.

        Callbacks instead of a task per start: each await between the last accept and
        the fan-out costs a turn of the loop, and a turn lasted up to 6 ms under the
        lifecycle benchmark's load.
        """
        self.metrics.ready_check_outcomes["accepted"] += 1
        start = _Start(effect.record, effect.sends, time.perf_counter(), asyncio.get_running_loop().create_future())
        self.starts.add(start.done)
        start.done.add_done_callback(self.starts.discard)
        written = self.persistence.commit_match_soon(effect.record, _players(effect.record))
        written.add_done_callback(functools.partial(self._on_written, start))

    def _on_written(self, start: _Start, written: asyncio.Future[None]) -> None:
        error = asyncio.CancelledError() if written.cancelled() else written.exception()
        if error is None:
            self._committed(start)
            return
        log.error("match_commit_failed", match=start.record.id, attempt=1, error=str(error))
        task = asyncio.create_task(self._retry_start(start))
        self.starts.add(task)
        task.add_done_callback(self.starts.discard)

    async def _retry_start(self, start: _Start) -> None:
        try:
            if await self._commit(start.record, first_attempt=2):
                self._committed(start)
                return
            self.metrics.matches_cancelled["storage_failed"] += 1
            record = start.record
            self.apply(self.lobby.abort_start(record.id, time.time()))
            cancelled = [
                fx.Send(send.session, m.MatchCancelled(match=record.id, reason="storage_failed", requeued=False))
                for send in start.sends
            ]
            self.apply(cancelled)
        finally:
            if not start.done.done() and start.committed is None:
                start.done.set_result(None)

    def _committed(self, start: _Start) -> None:
        start.committed = time.perf_counter()
        self.metrics.matches_started[start.record.queue] += 1
        self._announcements.run_or_put(start)

    def _announce(self, start: _Start) -> None:
        """Write every match_start of a committed match; wait for slow sockets in a task."""
        try:
            written, stalled = write_all(start.sends, self.registry)
            if stalled:
                task = asyncio.create_task(self._announce_to_stalled(start, written, stalled))
                self.starts.add(task)
                task.add_done_callback(self.starts.discard)
                return
            self._log_started(start, written)
        finally:
            if not start.done.done():
                start.done.set_result(None)

    async def _announce_to_stalled(self, start: _Start, written: int, stalled: list[Session]) -> None:
        drained = await drain_stalled(stalled, self.send_timeout)
        self._log_started(start, written - len(stalled) + drained)

    def _log_started(self, start: _Start, delivered: int) -> None:
        record = start.record
        committed = start.committed if start.committed is not None else start.began
        log.info(
            "match_started",
            match=record.id,
            queue=record.queue,
            teams=[list(t) for t in record.teams],
            explanation=record.explanation,
            commit_ms=round((committed - start.began) * 1000, 2),
            start_ms=round((time.perf_counter() - start.began) * 1000, 2),
        )
        if delivered < len(start.sends):
            log.info("match_start_partial", match=record.id, delivered=delivered, players=len(start.sends))

    def _spawn_finish(self, effect: fx.FinishMatch) -> None:
        # A reply among the sends (result_applied) waits for the commit; its session's
        # later output waits behind it, so a repeated report's already_reported cannot
        # overtake it.
        slots: dict[int, tuple[Session, ReplySlot]] = {}
        for index, send in enumerate(effect.sends):
            session = self.registry.get(send.session)
            if session is not None and send.message.rid is not None:
                slots[index] = (session, session.reserve())
        task = asyncio.create_task(self._finish(effect.record, effect.players, effect.sends, slots))
        self.starts.add(task)
        task.add_done_callback(self.starts.discard)

    async def _finish(
        self,
        record: MatchRecord,
        players: tuple[PlayerRecord, ...],
        sends: tuple[fx.Send, ...],
        slots: dict[int, tuple[Session, ReplySlot]],
    ) -> None:
        # The result is applied in memory already. If the commit fails, the records stay
        # dirty for the flusher, and the players and the server still hear of it.
        for player in players:
            self.persistence.mark_player(player)
        try:
            committed = await self._commit(record)
        except BaseException:
            # Cancelled at shutdown: give the places up unanswered, so they block nothing.
            for session, slot in slots.values():
                session.fill(slot, None)
            raise
        for index, (session, slot) in slots.items():
            session.fill(slot, sends[index].message)
        if not committed:
            self.persistence.mark_match(record)
        log.info("match_finished_stored" if committed else "match_finished_unstored", match=record.id)
        self.apply(send for index, send in enumerate(sends) if index not in slots)

    async def _commit(self, record: MatchRecord, first_attempt: int = 1) -> bool:
        """Commit ``record``, waiting ``COMMIT_RETRY_DELAYS`` between attempts; return whether it was written.

        ``first_attempt`` above 1 goes on after attempts that failed elsewhere,
        starting with the wait that follows the last of them.
        """
        for attempt in range(first_attempt, len(COMMIT_RETRY_DELAYS) + 2):
            if attempt > 1:
                await asyncio.sleep(COMMIT_RETRY_DELAYS[attempt - 2])
            try:
                await self.persistence.commit_match(record, _players(record))
                return True
            except StoreError as exc:
                log.error("match_commit_failed", match=record.id, attempt=attempt, error=str(exc))
        return False


@dataclass(slots=True)
class _Start:
    """A match between its last accept and its match_start messages."""

    record: MatchRecord
    sends: tuple[fx.Send, ...]
    began: float
    """``time.perf_counter()`` when the lobby started the match."""
    done: asyncio.Future[None]
    """Done once every match_start is written, or the match is cancelled."""
    committed: float | None = None


def _players(record: MatchRecord) -> list[str]:
    return [player for team in record.teams for player in team]


def _bounded(request: Request) -> TypeGuard[Incoming]:
    """Return whether ``request`` counts against the queue bound: a request of a player session."""
    return type(request) is Incoming and request.session.role is not SessionRole.GAME_SERVER
