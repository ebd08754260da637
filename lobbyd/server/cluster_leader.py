"""One term of cluster leadership: the single-writer matchmaker of every node's players.

Theory of operation. A node that takes the lease (``SharedState.acquire_lease``)
runs a ``LeaderTerm`` until it loses the lease. The term builds a fresh ``Lobby``
from the shared state (presence, tickets, ready checks) and then loops:

1. read the requests that nodes forwarded, after the cursor;
2. apply each to the lobby in one synchronous call, and tick on schedule, exactly
   as the single-node matchmaker does;
3. write the tickets and ready checks that changed, the new cursor and every message
   the changes caused, in one fenced commit (``SharedState.commit``);
4. only then carry out local side effects: mark records for the database flusher,
   and start storing the matches that started.

Nothing leaves the leader but through a fenced commit, so a leader that was paused
past its lease and wakes up can neither change the shared state nor tell any player
anything: its first commit raises ``Fenced`` and the term ends. A started match
goes through two commits: the first records it in ``starting``, the database write
follows, and the second removes it from ``starting`` and delivers ``match_start``.
A new leader finishes every match it finds in ``starting``, with the same delivery
ids, so a node drops what the old leader had already delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, MatchRecord, MatchState, Place, PlayerRecord, QueueRules
from lobbyd.core.snapshot import check_snapshot, restore, ticket_state, track
from lobbyd.errors import RemoteError, SharedStateError, StoreError
from lobbyd.protocol import cluster as c
from lobbyd.protocol import messages as m
from lobbyd.server import logs
from lobbyd.server.persistence import Persistence
from lobbyd.store.shared import Commit, Fenced, SharedState

# Waits, in seconds, between attempts to store a started match. They add up to
# 7.75 s, so a PostgreSQL restart (1 to 3 s on the test machine) costs no match.
# After the last attempt the match is cancelled with storage_failed, because it
# must not be announced without a record.
START_RETRY_DELAYS: Final = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)

# Forwarded requests applied per commit at most, so that one commit stays small.
READ_BATCH: Final = 1000

log = logs.get(__name__)


class LeadershipLost(Exception):
    """The term ended: the lease is held by another node, lapsed, or Redis failed."""


@dataclass(frozen=True, slots=True)
class TermSettings:
    node: str
    rules: Mapping[str, QueueRules]
    lobby: LobbySettings
    tick_interval: float
    lease_ms: int
    node_ttl: float
    cleanup_interval: float = 60.0
    """Seconds between drops of finished ready checks and idle offline players."""
    player_ttl: float = 600.0
    """Seconds an offline player's record stays in the leader's memory."""


@dataclass(slots=True)
class _Batch:
    """Effects of one step, with the session whose request caused them, if any."""

    effects: list[fx.Effect]
    requester: str | None = None
    seq: int = 0
    presence_deletes: list[tuple[str, str]] = field(default_factory=list)
    """(player, session key) presence entries of dead nodes to delete."""


@dataclass(slots=True)
class _Outcome:
    """What a commit makes happen once it succeeded."""

    saves: list[fx.SavePlayer | fx.SaveMatch] = field(default_factory=list)
    events: list[fx.Event] = field(default_factory=list)
    starts: list[c.StartingMatch] = field(default_factory=list)


class LeaderTerm:
    """The lobby of the whole cluster for as long as this node holds the lease with ``token``."""

    def __init__(
        self,
        state: SharedState,
        settings: TermSettings,
        token: int,
        persistence: Persistence,
        new_match_id: Callable[[], str],
    ) -> None:
        self.state = state
        self.settings = settings
        self.token = token
        self.owner = f"{settings.node}:{token}"
        self.persistence = persistence
        self.lobby = Lobby(settings.rules, settings.lobby, new_match_id)
        self.changes = track(self.lobby)
        self.cursor = "0-0"
        self._logins: dict[str, float] = {}
        self._absent_since: dict[str, float] = {}
        self._delivery_ids = itertools.count(1)
        self._starts: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.started_at = time.time()

    def request_stop(self) -> None:
        """End the term after the Redis call in progress, without cancelling it.

        NOTE: cancelling a redis-py 8.2 command on uvloop was seen to leave the task
        waiting forever, so the term's loops check this flag between calls instead.
        """
        self._stop.set()

    async def run(self) -> None:
        """Lead until the lease is lost or ``request_stop``; raises ``LeadershipLost`` with the reason."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_lease())
                group.create_task(self._lead())
        except BaseExceptionGroup as caught:
            # Both loops can fail at once, for one cause; the first names it. Anything
            # else is a bug of ours and propagates.
            ended, rest = caught.split((LeadershipLost, SharedStateError))
            if rest is not None or ended is None:
                raise
            first = _leaves(ended)[0]
            reason = str(first) if isinstance(first, LeadershipLost) else f"redis failed: {first}"
            if isinstance(first, Fenced):
                reason = f"a commit was fenced: {first}"
            raise LeadershipLost(reason) from None
        finally:
            for task in self._starts:
                task.cancel()

    async def _keep_lease(self) -> None:
        loop = asyncio.get_running_loop()
        lease = self.settings.lease_ms / 1000
        renewed = loop.time()
        while not await wait_event(self._stop, lease / 3):
            try:
                held = await self.state.renew_lease(self.owner, self.settings.lease_ms)
            except SharedStateError as exc:
                if loop.time() - renewed >= lease:
                    msg = f"the lease lapsed while redis was unreachable: {exc}"
                    raise LeadershipLost(msg) from exc
                log.warning("lease_renew_failed", token=self.token, error=str(exc))
                continue
            if not held:
                msg = "the lease expired or another node holds it"
                raise LeadershipLost(msg)
            renewed = loop.time()

    async def _lead(self) -> None:
        await self._rebuild()
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        next_sweep = loop.time() + self.settings.node_ttl / 2
        next_cleanup = loop.time() + self.settings.cleanup_interval
        while not self._stop.is_set():
            wait_ms = int((next_tick - loop.time()) * 1000)
            entries = await self.state.read_requests(self.cursor, block_ms=max(wait_ms, 0), count=READ_BATCH)
            batches = [self._apply(entry_id, payload) for entry_id, payload in entries]

            if loop.time() >= next_sweep:
                batches.append(await self._sweep_dead_nodes())
                next_sweep = loop.time() + self.settings.node_ttl / 2
            if loop.time() >= next_cleanup:
                self._forget()
                next_cleanup = loop.time() + self.settings.cleanup_interval
            if loop.time() >= next_tick:
                batches.append(_Batch(self.lobby.tick(time.time())))
                # A tick that hit its match budget continues right after this commit.
                next_tick = loop.time() if self.lobby.more_to_match else loop.time() + self.settings.tick_interval
            await self._commit(batches, cursor_moved=bool(entries))

    def _forget(self) -> None:
        """Drop finished ready checks and idle offline players, as the embedded daemon does."""
        dropped = self.lobby.forget(time.time(), self.settings.player_ttl)
        for player in [p for p in self._logins if p not in self.lobby.players]:
            del self._logins[player]
        log.info("leader_cleanup_done", dropped=dropped, players=len(self.lobby.players))

    # Rebuild.

    async def _rebuild(self) -> None:
        """Build the lobby from the shared state, then end what the old leader left half done."""
        began = time.perf_counter()
        snapshot = await self.state.snapshot()
        restored = restore(self.lobby, snapshot.presence, snapshot.tickets, snapshot.checks)
        self.cursor = snapshot.cursor
        self._logins = {player: where.since for player, where in snapshot.presence.items()}

        # Ready checks whose players' sessions are gone end as a disconnect ends them.
        now = time.time()
        effects: list[fx.Effect] = []
        for orphan in restored.orphans:
            player_id = self.lobby.sessions[orphan]
            effects.extend(self.lobby.disconnect(orphan, now))
            current = restored.rebind.get(orphan)
            if current is not None:
                # The player's newer session, seen in the presence map, is bound again.
                self.lobby.players[player_id].session = current
                self.lobby.sessions[current] = player_id
        commit, outcome = self._build([_Batch(effects)])
        commit.ticket_deletes.update(restored.stale_tickets)
        await self._write(commit, outcome)

        for starting in snapshot.starting:
            self._spawn_start(starting)
        log.info(
            "leader_elected",
            token=self.token,
            players=len(snapshot.presence),
            tickets=sum(len(pool) for pool in self.lobby.queues.values()),
            ready_checks=len(self.lobby.checks),
            starting=len(snapshot.starting),
            orphans=len(restored.orphans),
            rebuild_ms=round((time.perf_counter() - began) * 1000, 2),
        )

    # Requests.

    def _apply(self, entry_id: str, payload: bytes) -> _Batch:
        """Apply one forwarded request; a rejected request is answered with its error."""
        self.cursor = entry_id
        forward = c.FORWARD_DECODER.decode(payload)
        key = c.session_key(forward.node, forward.session)
        batch = _Batch([], requester=key, seq=forward.seq)
        now = time.time()
        try:
            if forward.gone:
                batch.effects = self._gone(forward, key, now)
            elif self._attach(forward, key, now, batch.effects):
                batch.effects.extend(self._dispatch(forward, key, now))
        except RemoteError as exc:
            batch.effects.append(fx.Send(key, m.Error(code=exc.code, message=exc.message, rid=exc.rid)))
        except Exception:
            log.exception("forwarded_request_failed", session=key, player=forward.player.id)
            rid = forward.request.rid if forward.request is not None else None
            error = m.Error(code="internal", message="the server failed to process this request", rid=rid)
            batch.effects.append(fx.Send(key, error))
        return batch

    def _gone(self, forward: c.Forward, key: str, now: float) -> list[fx.Effect]:
        if forward.session:
            return self.lobby.disconnect(key, now)
        # An empty session: the node started afresh, so none of its old sessions lives.
        effects: list[fx.Effect] = []
        prefix = f"{forward.node}/"
        for stale in [k for k in self.lobby.sessions if k.startswith(prefix)]:
            effects.extend(self.lobby.disconnect(stale, now))
        return effects

    def _attach(self, forward: c.Forward, key: str, now: float, effects: list[fx.Effect]) -> bool:
        """Bind ``key`` to its player unless a later login of that player is bound; return whether it is."""
        player_id = forward.player.id
        if self.lobby.sessions.get(key) == player_id:
            return True
        newest = self._logins.get(player_id)
        if newest is not None and newest > forward.since:
            # A request of a session that a later login replaced; its node closes it.
            return False
        info = forward.player
        record = PlayerRecord(info.id, info.name, info.rating, info.first_seen, info.last_seen)
        # The node already sent welcome and kicked any older session, so those
        # effects of connect are dropped; the old session's queue place still ends.
        for effect in self.lobby.connect(key, record, player_id, None, now):
            if isinstance(effect, fx.Send) and isinstance(effect.message, m.Welcome | m.Kicked):
                continue
            if not isinstance(effect, fx.Close):
                effects.append(effect)
        self._logins[player_id] = forward.since
        return True

    def _dispatch(self, forward: c.Forward, key: str, now: float) -> list[fx.Effect]:
        request = forward.request
        if forward.sync:
            return self._sync(key, forward.believed_queue)
        if isinstance(request, m.JoinQueue):
            return self.lobby.join_queue_request(key, request, now)
        if isinstance(request, m.LeaveQueue):
            return self.lobby.leave_queue(key, request.queue, now, request.rid)
        if isinstance(request, m.Accept):
            # An accept changes its ready check in place, which the tracker cannot see.
            self.changes.matches.add(request.match)
            return self.lobby.accept(key, request.match, now, request.rid)
        if isinstance(request, m.Decline):
            return self.lobby.decline(key, request.match, now, request.rid)
        return []

    def _sync(self, key: str, believed_queue: str | None) -> list[fx.Effect]:
        """Tell a player whose node lost Redis whether they are still queued."""
        player = self.lobby.players[self.lobby.sessions[key]]
        if player.place is Place.QUEUED and player.queue is not None:
            return [fx.Send(key, m.Queued(queue=player.queue))]
        if player.place is Place.IDLE and believed_queue is not None:
            return [fx.Send(key, m.LeftQueue(queue=believed_queue, reason="unavailable"))]
        return []

    # Dead nodes.

    async def _sweep_dead_nodes(self) -> _Batch:
        """Disconnect the sessions of nodes whose liveness key stayed missing for ``node_ttl``.

        A node counts as missing only from the first time this leader saw its key
        missing, so nodes that could not refresh their key while Redis itself was
        unreachable get a full ``node_ttl`` to do so once it is back.
        """
        nodes = {key.split("/", 1)[0] for key in self.lobby.sessions} - {self.settings.node}
        live = await self.state.live_nodes(nodes)
        now = time.time()
        for node in live:
            self._absent_since.pop(node, None)
        ttl = self.settings.node_ttl
        dead = [node for node in nodes - live if now - self._absent_since.setdefault(node, now) >= ttl]
        batch = _Batch([])
        for node in dead:
            prefix = f"{node}/"
            keys = [key for key in self.lobby.sessions if key.startswith(prefix)]
            log.warning("node_declared_dead", node=node, sessions=len(keys))
            for key in keys:
                batch.presence_deletes.append((self.lobby.sessions[key], key))
                batch.effects.extend(self.lobby.disconnect(key, now))
            self._absent_since.pop(node, None)
        return batch

    # Commits.

    async def _commit(self, batches: list[_Batch], *, cursor_moved: bool) -> None:
        commit, outcome = self._build(batches)
        if cursor_moved:
            commit.cursor = self.cursor
        await self._write(commit, outcome)

    async def _write(self, commit: Commit, outcome: _Outcome) -> None:
        if commit:
            await self.state.commit(self.owner, commit)
        for save in outcome.saves:
            if isinstance(save, fx.SavePlayer):
                self.persistence.mark_player(save.record)
            else:
                self.persistence.mark_match(save.record)
        for event in outcome.events:
            log.info(event.name, **event.fields)
        for starting in outcome.starts:
            self._spawn_start(starting)

    def _build(self, batches: Iterable[_Batch]) -> tuple[Commit, _Outcome]:
        """Turn effects into one commit: deliveries per session in order, and the state that changed."""
        commit, outcome = Commit(), _Outcome()
        for batch in batches:
            commit.presence_deletes.extend(batch.presence_deletes)
            messages: dict[str, list[m.ServerMessage]] = {}
            if batch.requester is not None:
                messages[batch.requester] = []
            for effect in batch.effects:
                self._route(effect, messages, commit, outcome)
            for key, sent in messages.items():
                done = [batch.seq] if key == batch.requester and batch.seq > 0 else []
                self._add_delivery(commit, key, sent, done)

        players, matches = self.changes.take()
        for player_id in players:
            state = ticket_state(self.lobby, player_id)
            if state is None:
                commit.ticket_deletes.add(player_id)
            else:
                commit.tickets[player_id] = c.ENCODER.encode(state)
        for match in matches:
            snapshot = check_snapshot(self.lobby, match)
            if snapshot is None:
                commit.check_deletes.add(match)
            else:
                commit.checks[match] = c.ENCODER.encode(snapshot)
        return commit, outcome

    def _route(
        self, effect: fx.Effect, messages: dict[str, list[m.ServerMessage]], commit: Commit, outcome: _Outcome
    ) -> None:
        if isinstance(effect, fx.Send):
            messages.setdefault(effect.session, []).append(effect.message)
        elif isinstance(effect, fx.OfferMatch):
            # Unlike one node, the leader cannot see whether a remote session is
            # still open; a session that closed sends gone, which cancels the check.
            for send in effect.sends:
                messages.setdefault(send.session, []).append(send.message)
        elif isinstance(effect, fx.StartMatch):
            starting = self._starting(effect.record)
            commit.starting[starting.match] = c.ENCODER.encode(starting)
            outcome.starts.append(starting)
        elif isinstance(effect, fx.SavePlayer | fx.SaveMatch):
            outcome.saves.append(effect)
        elif isinstance(effect, fx.Event):
            outcome.events.append(effect)
        # Close effects come only from connect, whose kick the node already made.

    def _add_delivery(self, commit: Commit, key: str, sent: list[m.ServerMessage], done: list[int]) -> None:
        node, session = c.split_session_key(key)
        delivery = c.Delivery(f"{self.owner}-{next(self._delivery_ids)}", session, sent, done=done)
        commit.deliveries.setdefault(node, []).append(c.ENCODER.encode(delivery))

    def _starting(self, record: MatchRecord) -> c.StartingMatch:
        sessions = []
        for team in record.teams:
            for player_id in team:
                player = self.lobby.players.get(player_id)
                sessions.append(player.session if player is not None and player.session else "")
        return c.StartingMatch(
            match=record.id,
            queue=record.queue,
            teams=[list(team) for team in record.teams],
            ratings=[list(team) for team in record.ratings],
            waits=list(record.waits),
            created_at=record.created_at,
            ended_at=record.ended_at,
            sessions=sessions,
        )

    # Starting matches.

    def _spawn_start(self, starting: c.StartingMatch) -> None:
        task = asyncio.create_task(self._finish_start(starting))
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)

    async def _finish_start(self, starting: c.StartingMatch) -> None:
        """Store a started match, then announce it, or cancel it if it cannot be stored."""
        began = time.perf_counter()
        record = MatchRecord(
            id=starting.match,
            queue=starting.queue,
            teams=tuple(tuple(team) for team in starting.teams),
            ratings=tuple(tuple(team) for team in starting.ratings),
            state=MatchState.STARTED,
            created_at=starting.created_at,
            ended_at=starting.ended_at,
            waits=tuple(starting.waits),
        )
        stored = await self._store(record)
        players = [player for team in starting.teams for player in team]
        commit = Commit(starting_deletes={starting.match})
        team_of = {player: index for index, team in enumerate(starting.teams) for player in team}
        for player_id, key in zip(players, starting.sessions, strict=True):
            if not key:
                continue
            message: m.ServerMessage
            if stored:
                message = m.MatchStart(
                    match=starting.match,
                    queue=starting.queue,
                    team=team_of[player_id],
                    teams=starting.teams,
                    ratings=starting.ratings,
                )
            else:
                message = m.MatchCancelled(match=starting.match, reason="storage_failed", requeued=False)
            node, session = c.split_session_key(key)
            # The same id whichever leader delivers it, so a node drops a second copy.
            delivery = c.Delivery(f"start-{starting.match}-{session}", session, [message])
            commit.deliveries.setdefault(node, []).append(c.ENCODER.encode(delivery))
        if not await self._commit_start(starting.match, commit):
            return
        if not stored:
            self.lobby.abort_start(starting.match, time.time())
            log.error("match_start_cancelled", match=starting.match, reason="storage_failed")
            return
        log.info(
            "match_started",
            match=starting.match,
            queue=starting.queue,
            teams=starting.teams,
            start_ms=round((time.perf_counter() - began) * 1000, 2),
        )

    async def _commit_start(self, match: str, commit: Commit) -> bool:
        """Write a start's outcome, retrying Redis errors; return False once fenced or out of tries.

        Either way the match stays in ``starting`` when this returns False, and the
        next leader finishes it.
        """
        for attempt, delay in enumerate((*START_RETRY_DELAYS, None), start=1):
            try:
                await self.state.commit(self.owner, commit)
                return True
            except Fenced as exc:
                log.warning("match_start_commit_fenced", match=match, error=str(exc))
                return False
            except SharedStateError as exc:
                log.warning("match_start_commit_failed", match=match, attempt=attempt, error=str(exc))
                if delay is None:
                    return False
                await asyncio.sleep(delay)
        return False

    async def _store(self, record: MatchRecord) -> bool:
        players = [player for team in record.teams for player in team]
        for attempt, delay in enumerate((*START_RETRY_DELAYS, None), start=1):
            try:
                await self.persistence.commit_match(record, players)
                return True
            except StoreError as exc:
                log.error("match_commit_failed", match=record.id, attempt=attempt, error=str(exc))
                if delay is None:
                    return False
                await asyncio.sleep(delay)
        return False


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; return whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Return the exceptions of ``group`` and its nested groups, depth first."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
