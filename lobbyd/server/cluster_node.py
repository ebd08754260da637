"""One node of a cluster: its sessions, their presence, and the way to and from the leader.

Every node serves its own connections. In cluster mode the ``Server`` hands each
session request to ``ClusterNode.submit`` instead of the local matchmaker:

* ``hello``: the node claims the player's presence in Redis. A claim that replaces
  another session kicks it with ``logged_in_elsewhere``, directly when it is on this
  node, else through that node's inbox. Then the node sends ``welcome`` itself.
* Lobby requests (``join_queue``, ``leave_queue``, ``accept``, ``decline``,
  ``get_profile`` and the party requests), logins and closed sessions go to the leader as ``Forward`` entries of
  the request stream. The leader answers through this node's inbox, and each answer
  names the requests it finishes (``done``), so that a session's own replies
  (``pong``, errors) wait behind them and every client gets its replies in request
  order.
* A game server's ``register`` (its secret checked here and blanked) and its
  requests go the same way; the leader allocates matches to it and answers through
  this node's inbox.
* While Redis is unreachable, the node keeps its sessions and answers lobby
  requests with ``unavailable`` and a retry hint. Once Redis is back it claims its
  sessions' presence again, forwards the closes it held, and asks the leader to
  tell each player it believed queued whether they still are.

Delivery rule: at least once. A delivery enters the inbox in the same atomic commit
as the state change that caused it. The node reads its inbox from the last entry it
handled and, after a Redis error, resumes there. A delivery that a new leader sends
again carries the same id, and the node drops ids it has handled before.

Every node also stands for election: it tries to take the leader lease every
``poll`` seconds and, once it holds it, runs a ``LeaderTerm`` until it loses it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Final

import msgspec

from lobbyd.core.model import DEFAULT_RATING
from lobbyd.core.snapshot import player_record
from lobbyd.errors import ServerBusy, SharedStateError, ShuttingDown, Unavailable
from lobbyd.protocol import cluster as c
from lobbyd.protocol import messages as m
from lobbyd.server import logs
from lobbyd.server.cluster_leader import LeadershipLost, LeaderTerm, TermSettings, wait_event
from lobbyd.server.game_server_session import SessionRole
from lobbyd.server.matchmaker import BUSY_RETRY_MS
from lobbyd.server.persistence import Persistence
from lobbyd.server.registry import Registry
from lobbyd.server.requests import Gone, Incoming, Login, Registration, Relay, Request
from lobbyd.server.session import Session
from lobbyd.store.base import ResultStore
from lobbyd.store.shared import SharedState

# Delivery ids remembered for de-duplication. A copy can only come from a new
# leader finishing a start, within seconds of the first; this covers far longer.
SEEN_DELIVERIES: Final = 100_000

# How long the inbox reader blocks in one read, and waits after a failed one.
INBOX_BLOCK_MS: Final = 1_000
RETRY_DELAY_S: Final = 0.2

# The place of ``welcome`` in a session's reply order while its presence is claimed.
_LOGIN: Final = -1

log = logs.get(__name__)


def default_node_id() -> str:
    """Return a node id unique to this process: host name, process id and random bits."""
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(slots=True)
class _SessionState:
    """The player (``None`` for a game server), login time and reply order of one authenticated session."""

    player: c.PlayerInfo | None
    since: float
    seq: int = 0
    believed_queue: str | None = None
    """The queue the player is in, as far as the messages this node delivered tell."""
    order: collections.deque[int | m.ServerMessage | Relay] = field(default_factory=collections.deque)
    """Replies waiting for their turn: an int is a forwarded request not yet done, a
    ``Relay`` the reply that ends the session."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    node: str
    lease_ms: int
    node_ttl_ms: int
    heartbeat_ms: int
    retry_after_ms: int
    dev_mode: bool
    max_queued: int = 50_000
    """Player requests waiting to be forwarded to the leader; one more gets ``server_busy``."""


class ClusterNode:
    def __init__(
        self,
        state: SharedState,
        settings: NodeSettings,
        term_settings: TermSettings,
        registry: Registry,
        persistence: Persistence,
        new_match_id: Callable[[], str],
        results: ResultStore | None = None,
    ) -> None:
        self.state = state
        self.results = results
        self.settings = settings
        self.node = settings.node
        self.term_settings = term_settings
        self.registry = registry
        self.persistence = persistence
        self.new_match_id = new_match_id
        self.draining = False
        self.healthy = True
        self.term: LeaderTerm | None = None
        self._unhealthy_since: float | None = None
        self._sessions: dict[str, _SessionState] = {}
        self._by_player: dict[str, str] = {}
        # Bounded by ``settings.max_queued`` player requests, checked in ``_incoming``;
        # logins, closes and game-server requests always enter.
        self._outbox: asyncio.Queue[Request | c.Forward | None] = asyncio.Queue()
        self._held: list[c.Forward] = []
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # What sessions hand in.

    def submit(self, request: Request) -> None:
        session = request.session
        if isinstance(request, Relay):
            session.inflight -= 1
            self._reply(session, request.message, close=request.close)
        elif isinstance(request, Incoming):
            self._incoming(session, request)
        elif isinstance(request, Login):
            # Tracked from now on, so that requests and replies that follow the hello
            # queue up behind its welcome while the presence claim runs.
            info = _player_info(request, time.time())
            self._sessions[session.id] = _SessionState(info, info.last_seen, order=collections.deque([_LOGIN]))
            self._outbox.put_nowait(request)
        elif isinstance(request, Registration):
            self._register(session, request)
        else:
            self._outbox.put_nowait(request)

    def _register(self, session: Session, request: Registration) -> None:
        """Forward a game server's registration, whose secret the session checked, without the secret."""
        tracked = _SessionState(None, time.time(), seq=1, order=collections.deque([1]))
        self._sessions[session.id] = tracked
        register = msgspec.structs.replace(request.register, secret="")
        self._outbox.put_nowait(c.Forward(self.node, session.id, 1, tracked.since, None, request=register))

    def _incoming(self, session: Session, request: Incoming) -> None:
        tracked = self._sessions.get(session.id)
        message = request.message
        if tracked is None or not session.open:
            session.inflight -= 1
            return
        rid = message.rid
        if isinstance(message, m.JoinQueue) and self.draining:
            msg = "the server is shutting down and takes no new queue entries; reconnect shortly"
            self._answer_locally(session, ShuttingDown.code, msg, rid)
            return
        if not self.healthy:
            self._answer_unavailable(session, rid)
            return
        if not isinstance(message, c.FORWARDED_TYPES):
            # A message type the leader has no handler for: our bug, as in the embedded matchmaker.
            session.log.error("request_not_forwardable", type=type(message).__name__)
            self._answer_locally(session, "internal", "the server failed to process this request", rid)
            return
        if self._outbox.qsize() >= self.settings.max_queued and session.role is not SessionRole.GAME_SERVER:
            self._answer_busy(session, rid)
            return
        tracked.seq += 1
        tracked.order.append(tracked.seq)
        forward = c.Forward(self.node, session.id, tracked.seq, tracked.since, tracked.player, request=message)
        self._outbox.put_nowait(forward)

    def _unavailable_error(self, rid: int | None) -> m.Error:
        msg = "the lobby cannot reach the cluster's shared state; retry after retry_after_ms"
        return m.Error(code=Unavailable.code, message=msg, rid=rid, retry_after_ms=self.settings.retry_after_ms)

    def _answer_unavailable(self, session: Session, rid: int | None) -> None:
        session.inflight -= 1
        self._reply(session, self._unavailable_error(rid))
        session.log.info("request_rejected", code=Unavailable.code)

    def _answer_busy(self, session: Session, rid: int | None) -> None:
        session.inflight -= 1
        msg = (
            f"the node has {self.settings.max_queued} requests waiting for the leader; "
            "this request was dropped, retry after retry_after_ms"
        )
        self._reply(session, m.Error(code=ServerBusy.code, message=msg, rid=rid, retry_after_ms=BUSY_RETRY_MS))
        session.log.warning("request_rejected", code=ServerBusy.code, queued=self._outbox.qsize())

    def _answer_locally(self, session: Session, code: str, message: str, rid: int | None) -> None:
        session.inflight -= 1
        self._reply(session, m.Error(code=code, message=message, rid=rid))

    def _reply(self, session: Session, message: m.ServerMessage, *, close: bool = False) -> None:
        """Send a reply the node made, behind the replies to earlier requests.

        ``close``: the reply ends the session, which closes once it is sent.

        NOTE: a request that reached the request stream is answered only by a leader,
        so while Redis is unreachable the replies queued behind it, ``pong`` too, wait
        until Redis is back. Answering it locally instead could contradict what the
        leader later applies.
        """
        tracked = self._sessions.get(session.id)
        if tracked is None or not tracked.order:
            session.send(message)
            if close:
                session.close_after_reply()
            return
        tracked.order.append(Relay(session, message, close=True) if close else message)

    def _resolve(self, session: Session, tracked: _SessionState, seq: int, reply: m.ServerMessage | None) -> None:
        """Mark ``seq`` answered, put ``reply`` in its place, and send what is now due."""
        try:
            index = tracked.order.index(seq)
        except ValueError:
            return
        if reply is None:
            del tracked.order[index]
        else:
            tracked.order[index] = reply
        session.inflight -= 1
        self._flush_order(session, tracked)

    def _flush_order(self, session: Session, tracked: _SessionState) -> None:
        while tracked.order and not isinstance(tracked.order[0], int):
            message = tracked.order.popleft()
            assert not isinstance(message, int)
            if isinstance(message, Relay):
                session.send(message.message)
                session.close_after_reply()
                return
            session.send(message)

    # Life cycle.

    async def run(self) -> None:
        """Serve until ``stop``: outbox, inbox, liveness and elections.

        Each loop checks ``_stopping`` between Redis calls and ends by itself, because
        cancelling a command in flight can hang (see ``LeaderTerm.request_stop``).
        """
        log.info("cluster_node_started", node=self.node, prefix=self.state.prefix)
        self._announce_start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_outbox())
                group.create_task(self._read_inbox())
                group.create_task(self._keep_alive())
                group.create_task(self._stand_for_election())
        finally:
            self._finished.set()

    async def stop(self, seconds: float) -> None:
        """Forward what sessions left behind and step down, within about ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._outbox.join()
        self._stopping.set()
        self._outbox.put_nowait(None)
        term = self.term
        if term is not None:
            term.request_stop()
        # The loops end after their current Redis call, which is bounded by its deadline.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(INBOX_BLOCK_MS / 1000 + self.state.timeout * 2):
                await self._finished.wait()
        if term is not None:
            try:
                await self.state.release_lease(term.owner)
                log.info("leadership_released", token=term.token)
            except SharedStateError as exc:
                log.warning("lease_release_failed", error=str(exc))

    def _announce_start(self) -> None:
        """Tell the leader that no session of an earlier process with this node id lives on."""
        forward = c.Forward(self.node, "", 0, 0.0, None, gone=True)
        self._outbox.put_nowait(forward)

    # Outbox: logins, forwarded requests, closes.

    async def _send_outbox(self) -> None:
        while not self._stopping.is_set():
            batch: list[Request | c.Forward | None] = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            forwards: list[c.Forward] = []
            for item in batch:
                if isinstance(item, Login):
                    await self._forward(forwards)
                    forwards = []
                    await self._login(item)
                elif isinstance(item, Gone):
                    forwards.extend(self._gone(item.session))
                elif isinstance(item, c.Forward):
                    forwards.append(item)
            await self._forward(forwards)
            for _ in batch:
                self._outbox.task_done()

    async def _forward(self, forwards: list[c.Forward]) -> None:
        if not forwards:
            return
        try:
            await self.state.forward([c.ENCODER.encode(forward) for forward in forwards])
        except SharedStateError as exc:
            self._mark_unhealthy(exc)
            for forward in forwards:
                self._forward_failed(forward)

    def _forward_failed(self, forward: c.Forward) -> None:
        """Answer a request that never reached Redis, or keep a close until Redis is back.

        A lost login needs nothing: the leader learns of the session from its first request.
        """
        if forward.login:
            return
        if forward.gone or forward.sync:
            self._held.append(forward)
            return
        session = self.registry.get(forward.session)
        tracked = self._sessions.get(forward.session)
        if session is None or tracked is None:
            return
        rid = forward.request.rid if forward.request is not None else None
        self._resolve(session, tracked, forward.seq, self._unavailable_error(rid))
        session.log.info("request_rejected", code=Unavailable.code)
        if isinstance(forward.request, m.Register):
            # A game server that is not registered can do nothing on this connection;
            # closed, it reconnects and registers again after retry_after_ms.
            session.close(Unavailable.code)

    async def _login(self, login: Login) -> None:
        session, hello = login.session, login.hello
        tracked = self._sessions.get(session.id)
        if tracked is None or tracked.player is None or not session.open:
            session.inflight -= 1
            return
        presence = c.Presence(self.node, session.id, tracked.since, tracked.player)
        claimed, other = True, None
        # While Redis is known to be down the player logs in locally at once, and
        # the presence is claimed once it is back; a silent Redis would otherwise
        # hold each login for the full command deadline, one after another.
        if self.healthy:
            try:
                claimed, other = await self.state.claim_presence(presence)
            except SharedStateError as exc:
                self._mark_unhealthy(exc)
        if not claimed:
            session.inflight -= 1
            session.log.info("login_superseded", newer_node=other.node if other else None)
            session.kick("logged_in_elsewhere")
            return
        if other is not None and (other.node, other.session) != (self.node, session.id):
            await self._kick(other)
        previous = self._by_player.get(hello.player)
        if previous is not None and previous != session.id and (old := self.registry.get(previous)) is not None:
            old.kick("logged_in_elsewhere")
        self._by_player[hello.player] = session.id

        info = tracked.player
        welcome = m.Welcome(
            session=session.id,
            player=hello.player,
            heartbeat_ms=self.settings.heartbeat_ms,
            rating=info.rating,
            dev_mode=self.settings.dev_mode,
            rid=hello.rid,
        )
        self._resolve(session, tracked, _LOGIN, welcome)
        if self.healthy:
            # The leader learns of the session now, so that a party invite can reach it.
            await self._forward([c.Forward(self.node, session.id, 0, tracked.since, info, login=True)])
        # The whole record goes back, so that the write keeps the player's rating and
        # penalty; the store keeps whichever penalty is the later one.
        self.persistence.mark_player(player_record(info))
        log.info("player_connected", player=hello.player, session=session.id, node=self.node)

    async def _kick(self, other: c.Presence) -> None:
        """End the player's older session, on this node or another."""
        if other.node == self.node:
            old = self.registry.get(other.session)
            if old is not None:
                old.kick("logged_in_elsewhere")
            return
        delivery = c.Delivery(
            f"kick-{self.node}-{secrets.token_hex(6)}",
            other.session,
            [m.Kicked(reason="logged_in_elsewhere")],
            close="logged_in_elsewhere",
        )
        try:
            await self.state.deliver(other.node, [c.ENCODER.encode(delivery)])
        except SharedStateError as exc:
            self._mark_unhealthy(exc)
        log.info("remote_session_kicked", player=other.player.id, node=other.node, session=other.session)

    def _gone(self, session: Session) -> list[c.Forward]:
        tracked = self._sessions.pop(session.id, None)
        if tracked is None:
            return []
        if tracked.player is None:
            # A game server's session: the leader treats its close as the server's loss.
            return [c.Forward(self.node, session.id, 0, tracked.since, None, gone=True)]
        player = tracked.player.id
        if self._by_player.get(player) == session.id:
            del self._by_player[player]
            self._spawn(self._release_presence(player, session.id))
        return [c.Forward(self.node, session.id, 0, tracked.since, tracked.player, gone=True)]

    async def _release_presence(self, player: str, session: str) -> None:
        try:
            await self.state.release_presence(player, self.node, session)
        except SharedStateError as exc:
            # The leader removes it when this node's sessions are swept, or a new
            # login of the player replaces it.
            self._mark_unhealthy(exc)

    # Inbox: what the leader and other nodes send to this node's sessions.

    async def _read_inbox(self) -> None:
        last = await self._retry(lambda: self.state.last_inbox_id(self.node))
        while not self._stopping.is_set():
            try:
                entries = await self.state.read_inbox(self.node, last, INBOX_BLOCK_MS)
            except SharedStateError as exc:
                self._mark_unhealthy(exc)
                await wait_event(self._stopping, RETRY_DELAY_S)
                continue
            for entry_id, payload in entries:
                last = entry_id
                self._deliver(c.DELIVERY_DECODER.decode(payload))

    def _deliver(self, delivery: c.Delivery) -> None:
        if delivery.id in self._seen:
            log.info("duplicate_delivery_dropped", delivery=delivery.id, session=delivery.session)
            return
        self._seen[delivery.id] = None
        if len(self._seen) > SEEN_DELIVERIES:
            self._seen.popitem(last=False)

        session = self.registry.get(delivery.session)
        if session is None:
            return
        tracked = self._sessions.get(delivery.session)
        answers = tracked is not None and delivery.done and delivery.close is None
        if answers and tracked is not None and self._answer(session, tracked, delivery):
            return
        for message in delivery.messages:
            session.send(message)
            if tracked is not None:
                _note_place(tracked, message)
        if delivery.close is not None:
            session.close(delivery.close)
        if tracked is not None:
            for seq in delivery.done:
                self._resolve(session, tracked, seq, None)

    def _answer(self, session: Session, tracked: _SessionState, delivery: c.Delivery) -> bool:
        """Put the messages of a delivery that answers requests in the place of the first of them.

        Replies then leave in request order even when the leader answers a later request
        first, as it does for a result, whose reply waits until the result is stored.
        Returns False when none of the requests is still waiting.
        """
        pending = [seq for seq in delivery.done if seq in tracked.order]
        if not pending:
            return False
        for message in delivery.messages:
            _note_place(tracked, message)
        items = list(tracked.order)
        for seq in pending[1:]:
            items.remove(seq)
        at = items.index(pending[0])
        items[at : at + 1] = delivery.messages
        tracked.order = collections.deque(items)
        session.inflight -= len(pending)
        self._flush_order(session, tracked)
        return True

    # Health.

    def _mark_unhealthy(self, exc: Exception) -> None:
        if self.healthy:
            log.error("redis_unreachable", node=self.node, error=str(exc))
            self.healthy = False
            self._unhealthy_since = time.monotonic()

    async def _keep_alive(self) -> None:
        """Refresh this node's liveness key; after an outage, bring the shared state up to date."""
        interval = self.settings.node_ttl_ms / 3000
        marked = False
        while not self._stopping.is_set():
            try:
                existed = await self.state.refresh_node(self.node, self.settings.node_ttl_ms)
            except SharedStateError as exc:
                self._mark_unhealthy(exc)
                await wait_event(self._stopping, RETRY_DELAY_S)
                continue
            if marked and not existed and self.healthy:
                # The mark was gone: Redis lost its data (a restart without persistence),
                # or this node stalled past its TTL and the leader took it for dead.
                # Either way the shared state may have forgotten this node's players, so
                # it recovers as after an outage long enough to be declared dead.
                log.warning("node_mark_lost", node=self.node)
                self.healthy = False
                self._unhealthy_since = time.monotonic() - self.settings.node_ttl_ms / 1000
            marked = True
            if not self.healthy:
                await self._recover()
            await wait_event(self._stopping, interval)

    async def _recover(self) -> None:
        """Claim presence again, forward held closes, and ask which players are still queued."""
        outage = time.monotonic() - (self._unhealthy_since or time.monotonic())
        try:
            # NOTE: one round trip per session; 10,000 sessions take an estimated 1 to 2 s here.
            for session_id, tracked in list(self._sessions.items()):
                if tracked.player is None:
                    continue
                presence = c.Presence(self.node, session_id, tracked.since, tracked.player)
                claimed, other = await self.state.claim_presence(presence)
                if not claimed and (session := self.registry.get(session_id)) is not None:
                    session.log.info("login_superseded", newer_node=other.node if other else None)
                    session.kick("logged_in_elsewhere")
            held, self._held = self._held, []
            await self.state.forward([c.ENCODER.encode(forward) for forward in held])
        except SharedStateError as exc:
            log.warning("redis_recovery_failed", error=str(exc))
            return
        servers = self._drop_game_servers() if outage >= self.settings.node_ttl_ms / 1000 else 0
        syncs = 0
        for session_id, tracked in self._sessions.items():
            if tracked.believed_queue is not None:
                forward = c.Forward(
                    self.node, session_id, 0, tracked.since, tracked.player, sync=True,
                    believed_queue=tracked.believed_queue,
                )
                self._outbox.put_nowait(forward)
                syncs += 1
        self.healthy = True
        self._unhealthy_since = None
        log.info(
            "redis_reachable_again",
            node=self.node,
            outage_s=round(outage, 3),
            closes=len(held),
            syncs=syncs,
            game_servers_closed=servers,
        )

    def _drop_game_servers(self) -> int:
        """Close this node's game-server sessions after an outage the leader may have taken for this node's death.

        The leader then dropped those servers and abandoned their matches, and would
        ignore their requests; closed, they reconnect and register again.
        """
        closed = 0
        for session_id, tracked in self._sessions.items():
            session = self.registry.get(session_id)
            if tracked.player is None and session is not None:
                session.kick(Unavailable.code)
                closed += 1
        return closed

    # Elections.

    async def _stand_for_election(self) -> None:
        poll = min(self.term_settings.tick_interval, self.settings.lease_ms / 3000)
        while not self._stopping.is_set():
            token = None
            if self.healthy:
                try:
                    token = await self.state.acquire_lease(self.node, self.settings.lease_ms)
                except SharedStateError as exc:
                    self._mark_unhealthy(exc)
            if token is None:
                await wait_event(self._stopping, poll)
                continue
            term = LeaderTerm(
                self.state, self.term_settings, token, self.persistence, self.new_match_id, self.results
            )
            self.term = term
            task = asyncio.create_task(term.run())
            self._tasks.add(task)
            try:
                await task
                log.info("leadership_ended", token=token)
            except LeadershipLost as exc:
                log.warning("leadership_lost", token=token, reason=str(exc))
            finally:
                self._tasks.discard(task)
                self.term = None

    async def _retry(self, call: Callable[[], Awaitable[str]]) -> str:
        while True:
            try:
                return await call()
            except SharedStateError as exc:
                self._mark_unhealthy(exc)
                await wait_event(self._stopping, RETRY_DELAY_S)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _note_place(tracked: _SessionState, message: m.ServerMessage) -> None:
    """Follow the player's queue from the messages delivered to them."""
    if isinstance(message, m.Queued):
        tracked.believed_queue = message.queue
    elif isinstance(message, m.LeftQueue | m.MatchStart):
        tracked.believed_queue = None
    elif isinstance(message, m.MatchFound):
        tracked.believed_queue = message.queue
    elif isinstance(message, m.MatchCancelled) and not message.requeued:
        tracked.believed_queue = None


def _player_info(login: Login, now: float) -> c.PlayerInfo:
    """Return what the leader needs to know of the player logging in."""
    record, hello = login.record, login.hello
    return c.PlayerInfo(
        id=hello.player,
        name=hello.name or (record.name if record else hello.player),
        rating=record.rating if record else DEFAULT_RATING,
        first_seen=record.first_seen if record else now,
        last_seen=now,
        mu=record.mu if record else None,
        sigma=record.sigma if record else None,
        games=record.games if record else 0,
        wins=record.wins if record else 0,
        penalty_level=record.penalty_level if record else 0,
        penalty_since=record.penalty_since if record else 0.0,
        locked_until=record.locked_until if record else 0.0,
    )

