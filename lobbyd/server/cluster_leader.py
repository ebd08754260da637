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

With game servers, the lobby has a ``Hosting``. Registered servers, hosted matches
and how hosted matches ended are mirrored into the shared state like tickets. A
reported result goes through two commits in the same way as a start: the first
records it in ``finishing`` (with the rated players and the messages that announce
it), PostgreSQL then stores it once per match id, and the second delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from lobbyd.core import effects as fx
from lobbyd.core.hosting import HostingSettings
from lobbyd.core.hosting_snapshot import (
    PLAYER_RECORD_DECODER,
    RECORD_DECODER,
    ended_state,
    hosted_state,
    refresh_ratings,
    restore_hosting,
    server_state,
    track_hosting,
)
from lobbyd.core.lobby import Lobby
from lobbyd.core.match_start import match_start
from lobbyd.core.model import LobbySettings, MatchRecord, MatchState, Place, PlayerRecord, QueueRules
from lobbyd.core.parties import PARTY_REQUESTS
from lobbyd.core.snapshot import (
    check_snapshot,
    party_record,
    player_record,
    refresh_penalties,
    restore,
    ticket_state,
    track,
)
from lobbyd.errors import InvalidSecret, RemoteError, SharedStateError, StoreError
from lobbyd.protocol import cluster as c
from lobbyd.protocol import messages as m
from lobbyd.server import game_server_session, logs
from lobbyd.server.persistence import Persistence
from lobbyd.store.base import ResultStore
from lobbyd.store.shared import Commit, Fenced, SharedState, Snapshot

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
    hosting: HostingSettings | None = None
    """Game-server settings; None when matches need no game server."""


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
    finishes: list[c.FinishingMatch] = field(default_factory=list)


class LeaderTerm:
    """The lobby of the whole cluster for as long as this node holds the lease with ``token``."""

    def __init__(
        self,
        state: SharedState,
        settings: TermSettings,
        token: int,
        persistence: Persistence,
        new_match_id: Callable[[], str],
        results: ResultStore | None = None,
    ) -> None:
        """Lead with ``token``; ``results`` stores match results once per match id across nodes."""
        self.state = state
        self.settings = settings
        self.token = token
        self.owner = f"{settings.node}:{token}"
        self.persistence = persistence
        self.results = results
        self.lobby = Lobby(settings.rules, settings.lobby, new_match_id, settings.hosting)
        self.changes = track(self.lobby)
        self.hosting_changes = track_hosting(self.lobby.hosting) if self.lobby.hosting is not None else None
        # Effects made outside a request or tick (a start that could not be stored),
        # committed with the next batch so that commits stay in one task.
        self._later: list[_Batch] = []
        self.cursor = "0-0"
        self._logins: dict[str, float] = {}
        self._absent_since: dict[str, float] = {}
        self._delivery_ids = itertools.count(1)
        # While a batch is built: the (session, request seq) whose reply a result's
        # finishing delivery carries; see ``_build``.
        self._reply_after_finish: tuple[str, int] | None = None
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
            batches.extend(self._later)
            self._later.clear()

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
        restored = restore(self.lobby, snapshot.presence, snapshot.tickets, snapshot.checks, snapshot.parties)
        self._restore_hosting(snapshot)
        await self._refresh_ratings(snapshot)
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
        effects.extend(self._drop_absent(restored.absent, now))
        commit, outcome = self._build([_Batch(effects)])
        commit.ticket_deletes.update(restored.stale_tickets)
        await self._write(commit, outcome)

        for starting in snapshot.starting:
            self._spawn_start(starting)
        for finishing in snapshot.finishing:
            self._spawn_finish(finishing)
        log.info(
            "leader_elected",
            token=self.token,
            players=len(snapshot.presence),
            tickets=sum(len(pool) for pool in self.lobby.queues.values()),
            ready_checks=len(self.lobby.checks),
            starting=len(snapshot.starting),
            game_servers=len(snapshot.servers),
            hosted_matches=len(snapshot.hosted),
            finishing=len(snapshot.finishing),
            parties=len(self.lobby.parties.parties),
            orphans=len(restored.orphans),
            absent_party_members=len(restored.absent),
            rebuild_ms=round((time.perf_counter() - began) * 1000, 2),
        )

    def _drop_absent(self, absent: list[str], now: float) -> list[fx.Effect]:
        """Remove party members whose session is gone from their party, as a disconnect does, then forget them.

        Their party's ticket or ready check ends and the other members are told.
        """
        effects: list[fx.Effect] = []
        for player_id in absent:
            player = self.lobby.players[player_id]
            if player.party is not None:
                effects.extend(self.lobby.parties.remove_member(player, "disconnected", now))
            if player.session is None and player.place is Place.IDLE:
                # The stand-in has no stored record; a later login loads the real one.
                del self.lobby.players[player_id]
        return effects

    def _restore_hosting(self, snapshot: Snapshot) -> None:
        if self.lobby.hosting is None:
            if snapshot.servers or snapshot.hosted:
                # NOTE: the entries stay in Redis for a leader that has game servers configured.
                log.error("hosting_state_ignored", servers=len(snapshot.servers), hosted=len(snapshot.hosted))
            return
        restore_hosting(self.lobby, snapshot.servers, snapshot.hosted, snapshot.ended)

    async def _refresh_ratings(self, snapshot: Snapshot) -> None:
        """Bring the restored players' ratings and dodge penalties up to those stored or in flight since login."""
        records = [PLAYER_RECORD_DECODER.decode(raw) for finishing in snapshot.finishing for raw in finishing.players]
        try:
            stored = await self.persistence.store.load_players(list(self.lobby.players))
        except StoreError as exc:
            # NOTE: without the store the login-time ratings are used, which miss results
            # applied since; the next result of such a player is rated from them.
            log.error("leader_ratings_load_failed", error=str(exc), players=len(self.lobby.players))
            stored = {}
        changed = refresh_ratings(self.lobby, [*stored.values(), *records])
        penalised = refresh_penalties(self.lobby, stored.values())
        if changed or penalised:
            log.info("leader_ratings_refreshed", players=changed, penalties=penalised)

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
            elif forward.player is None:
                batch.effects = self._dispatch_server(forward, key, now)
            elif self._attach(forward, forward.player, key, now, batch.effects):
                batch.effects.extend(self._dispatch(forward, key, now))
        except RemoteError as exc:
            error = m.Error(code=exc.code, message=exc.message, rid=exc.rid, retry_after_ms=exc.retry_after_ms)
            batch.effects.append(fx.Send(key, error))
        except Exception:
            player = forward.player.id if forward.player is not None else None
            log.exception("forwarded_request_failed", session=key, player=player)
            rid = forward.request.rid if forward.request is not None else None
            error = m.Error(code="internal", message="the server failed to process this request", rid=rid)
            batch.effects.append(fx.Send(key, error))
        return batch

    def _gone(self, forward: c.Forward, key: str, now: float) -> list[fx.Effect]:
        if forward.session:
            return self.lobby.disconnect(key, now)
        # An empty session: the node started afresh, so none of its old sessions lives.
        effects: list[fx.Effect] = []
        for stale in self._sessions_of(forward.node):
            effects.extend(self.lobby.disconnect(stale, now))
        return effects

    def _sessions_of(self, node: str) -> list[str]:
        """Return the session keys of ``node``'s players and game servers that the lobby holds."""
        prefix = f"{node}/"
        servers = self.lobby.hosting.pool.by_session if self.lobby.hosting is not None else {}
        return [key for key in [*self.lobby.sessions, *servers] if key.startswith(prefix)]

    def _attach(self, forward: c.Forward, info: c.PlayerInfo, key: str, now: float, effects: list[fx.Effect]) -> bool:
        """Bind ``key`` to its player unless a later login of that player is bound; return whether it is."""
        player_id = info.id
        if self.lobby.sessions.get(key) == player_id:
            return True
        newest = self._logins.get(player_id)
        if newest is not None and newest > forward.since:
            # A request of a session that a later login replaced; its node closes it.
            return False
        # The node read the record at login, so the lobby's own copy of a known player
        # is newer. A dodge penalty that a former leader stored since is the exception.
        refresh_penalties(self.lobby, [info])
        record = player_record(info)
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
        if isinstance(request, m.GetProfile):
            return self.lobby.profile(key, request.rid)
        if isinstance(request, PARTY_REQUESTS):
            return self.lobby.parties.handle(key, request, now)
        if request is not None:
            # A game server's request on a player's session.
            game_server_session.check_player_request(request)
        return []

    def _dispatch_server(self, forward: c.Forward, key: str, now: float) -> list[fx.Effect]:
        """Apply one request of the game server on session ``key``, as the embedded matchmaker does."""
        request = forward.request
        hosting = self.lobby.hosting
        if request is None:
            return []
        if hosting is None:
            msg = "this lobby takes no game-server registrations: the cluster's leader has no game_server_secret"
            raise InvalidSecret(msg, rid=request.rid)
        if isinstance(request, m.Register):
            return hosting.register(key, request, now)
        if key not in hosting.pool.by_session:
            # A session replaced by a newer registration of its server; its node closes it.
            return []
        if self.hosting_changes is not None and isinstance(request, m.GAME_SERVER_REQUESTS):
            # These change the hosted match in place, which the tracker cannot see.
            self.hosting_changes.hosted.add(request.match)
        return game_server_session.dispatch(self.lobby, key, request, now)

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
        servers = self.lobby.hosting.pool.by_session if self.lobby.hosting is not None else {}
        nodes = {key.split("/", 1)[0] for key in [*self.lobby.sessions, *servers]} - {self.settings.node}
        live = await self.state.live_nodes(nodes)
        now = time.time()
        for node in live:
            self._absent_since.pop(node, None)
        ttl = self.settings.node_ttl
        dead = [node for node in nodes - live if now - self._absent_since.setdefault(node, now) >= ttl]
        batch = _Batch([])
        for node in dead:
            keys = self._sessions_of(node)
            log.warning("node_declared_dead", node=node, sessions=len(keys))
            for key in keys:
                player = self.lobby.sessions.get(key)
                if player is not None:
                    batch.presence_deletes.append((player, key))
                # A game server's session ends as a lost server: its matches are abandoned.
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
        for finishing in outcome.finishes:
            self._spawn_finish(finishing)

    def _build(self, batches: Iterable[_Batch]) -> tuple[Commit, _Outcome]:
        """Turn effects into one commit: deliveries per session in order, and the state that changed."""
        commit, outcome = Commit(), _Outcome()
        for batch in batches:
            commit.presence_deletes.extend(batch.presence_deletes)
            messages: dict[str, list[m.ServerMessage]] = {}
            closes: dict[str, str] = {}
            # A result's reply (result_applied) goes out with the finishing commit, after
            # the result is stored. The request is done only then, so the node sends the
            # replies to the server's later requests after it.
            self._reply_after_finish = None
            if batch.requester is not None and batch.seq > 0:
                # The session's node waits for the reply to this request.
                messages[batch.requester] = []
                if _finish_replies(batch.effects, batch.requester):
                    self._reply_after_finish = (batch.requester, batch.seq)
            for effect in batch.effects:
                if isinstance(effect, fx.Close):
                    messages.setdefault(effect.session, [])
                    closes.setdefault(effect.session, effect.reason)
                else:
                    self._route(effect, messages, commit, outcome)
            for key, sent in messages.items():
                done = [batch.seq] if key == batch.requester and batch.seq > 0 else []
                if self._reply_after_finish is not None and key == batch.requester:
                    if not sent and key not in closes:
                        continue
                    done = []
                self._add_delivery(commit, key, sent, done, closes.get(key))
            self._reply_after_finish = None

        players, matches = self.changes.take()
        for player_id in players:
            _stage(commit.tickets, commit.ticket_deletes, player_id, ticket_state(self.lobby, player_id))
        for match in matches:
            _stage(commit.checks, commit.check_deletes, match, check_snapshot(self.lobby, match))
        touched, self.lobby.parties.touched = self.lobby.parties.touched, set()
        for party_id in touched:
            _stage(commit.parties, commit.party_deletes, party_id, party_record(self.lobby, party_id))
        if self.hosting_changes is not None:
            self._build_hosting(commit)
        return commit, outcome

    def _build_hosting(self, commit: Commit) -> None:
        """Add the game servers, hosted matches and ended matches that changed to ``commit``."""
        hosting = self.lobby.hosting
        assert hosting is not None and self.hosting_changes is not None
        servers, hosted, ended = self.hosting_changes.take()
        for server_id in servers:
            _stage(commit.servers, commit.server_deletes, server_id, server_state(hosting, server_id))
        for match in hosted:
            _stage(commit.hosted, commit.hosted_deletes, match, hosted_state(self.lobby, match))
        for match in ended:
            _stage(commit.ended, commit.ended_deletes, match, ended_state(hosting, match))

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
            starting = self._starting(effect)
            commit.starting[starting.match] = c.ENCODER.encode(starting)
            outcome.starts.append(starting)
        elif isinstance(effect, fx.FinishMatch):
            finishing = self._finishing(effect)
            commit.finishing[finishing.match] = c.ENCODER.encode(finishing)
            outcome.finishes.append(finishing)
        elif isinstance(effect, fx.SavePlayer | fx.SaveMatch):
            outcome.saves.append(effect)
        elif isinstance(effect, fx.Event):
            outcome.events.append(effect)

    def _add_delivery(
        self, commit: Commit, key: str, sent: list[m.ServerMessage], done: list[int], close: str | None = None
    ) -> None:
        node, session = c.split_session_key(key)
        delivery = c.Delivery(f"{self.owner}-{next(self._delivery_ids)}", session, sent, close=close, done=done)
        commit.deliveries.setdefault(node, []).append(c.ENCODER.encode(delivery))

    def _starting(self, effect: fx.StartMatch) -> c.StartingMatch:
        record = effect.record
        starts = {send.session: send.message for send in effect.sends if isinstance(send.message, m.MatchStart)}
        sessions = []
        for team in record.teams:
            for player_id in team:
                player = self.lobby.players.get(player_id)
                sessions.append(player.session if player is not None and player.session else "")
        tickets = []
        if record.server is not None:
            for key in sessions:
                start = starts.get(key)
                tickets.append(start.ticket or "" if start is not None else "")
        return c.StartingMatch(
            match=record.id,
            queue=record.queue,
            teams=[list(team) for team in record.teams],
            ratings=[list(team) for team in record.ratings],
            waits=list(record.waits),
            created_at=record.created_at,
            ended_at=record.ended_at,
            sessions=sessions,
            server=record.server,
            tickets=tickets,
            record=c.ENCODER.encode(record),
        )

    def _finishing(self, effect: fx.FinishMatch) -> c.FinishingMatch:
        """Turn an applied result into its stored form, with deliveries whose ids any leader reproduces."""
        match = effect.record.id
        messages: dict[str, list[m.ServerMessage]] = {}
        for send in effect.sends:
            messages.setdefault(send.session, []).append(send.message)
        deliveries: dict[str, list[bytes]] = {}
        waiting = self._reply_after_finish
        for key, sent in messages.items():
            node, session = c.split_session_key(key)
            done = [waiting[1]] if waiting is not None and waiting[0] == key else []
            delivery = c.Delivery(f"finish-{match}-{session}", session, sent, done=done)
            deliveries.setdefault(node, []).append(c.ENCODER.encode(delivery))
        return c.FinishingMatch(
            match=match,
            record=c.ENCODER.encode(effect.record),
            players=[c.ENCODER.encode(player) for player in effect.players],
            deliveries=deliveries,
        )

    # Starting matches.

    def _spawn_start(self, starting: c.StartingMatch) -> None:
        task = asyncio.create_task(self._finish_start(starting))
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)

    async def _finish_start(self, starting: c.StartingMatch) -> None:
        """Store a started match, then announce it, or cancel it if it cannot be stored."""
        began = time.perf_counter()
        record = _started_record(starting)
        stored = await self._store(record)
        players = [player for team in starting.teams for player in team]
        commit = Commit(starting_deletes={starting.match})
        tickets = starting.tickets or [""] * len(players)
        for player_id, key, ticket in zip(players, starting.sessions, tickets, strict=True):
            if not key:
                continue
            message: m.ServerMessage
            if stored:
                message = match_start(record, player_id, starting.server, ticket or None)
            else:
                message = m.MatchCancelled(match=starting.match, reason="storage_failed", requeued=False)
            node, session = c.split_session_key(key)
            # The same id whichever leader delivers it, so a node drops a second copy.
            delivery = c.Delivery(f"start-{starting.match}-{session}", session, [message])
            commit.deliveries.setdefault(node, []).append(c.ENCODER.encode(delivery))
        if not await self._commit_final(starting.match, commit):
            return
        if not stored:
            # A hosted match's server is told to deallocate it, in the next commit.
            self._later.append(_Batch(self.lobby.abort_start(starting.match, time.time())))
            log.error("match_start_cancelled", match=starting.match, reason="storage_failed")
            return
        log.info(
            "match_started",
            match=starting.match,
            queue=starting.queue,
            teams=starting.teams,
            start_ms=round((time.perf_counter() - began) * 1000, 2),
        )

    async def _commit_final(self, match: str, commit: Commit) -> bool:
        """Write a start's or a result's outcome, retrying Redis errors; return False once fenced or out of tries.

        Either way the match stays in ``starting`` or ``finishing`` when this returns
        False, and the next leader finishes it.
        """
        for attempt, delay in enumerate((*START_RETRY_DELAYS, None), start=1):
            try:
                await self.state.commit(self.owner, commit)
                return True
            except Fenced as exc:
                log.warning("match_final_commit_fenced", match=match, error=str(exc))
                return False
            except SharedStateError as exc:
                log.warning("match_final_commit_failed", match=match, attempt=attempt, error=str(exc))
                if delay is None:
                    return False
                await asyncio.sleep(delay)
        return False

    # Results.

    def _spawn_finish(self, finishing: c.FinishingMatch) -> None:
        task = asyncio.create_task(self._finish_result(finishing))
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)

    async def _finish_result(self, finishing: c.FinishingMatch) -> None:
        """Store an applied result once per match id, then announce it.

        It is announced even when it cannot be stored, as the embedded daemon does:
        the leader's memory has it, and the flusher retries the records.
        """
        began = time.perf_counter()
        record = RECORD_DECODER.decode(finishing.record)
        players = [PLAYER_RECORD_DECODER.decode(raw) for raw in finishing.players]
        applied = await self._store_result(record, players)
        commit = Commit(finishing_deletes={finishing.match}, deliveries=finishing.deliveries)
        if not await self._commit_final(finishing.match, commit):
            return
        log.info(
            "match_result_stored",
            match=finishing.match,
            applied=applied,
            finish_ms=round((time.perf_counter() - began) * 1000, 2),
        )

    async def _store_result(self, record: MatchRecord, players: list[PlayerRecord]) -> bool | None:
        """Store a result; return True if this call applied it, False if it was stored before, None on failure."""
        for attempt, delay in enumerate((*START_RETRY_DELAYS, None), start=1):
            try:
                if self.results is not None:
                    return await self.results.apply_match_result(record, players)
                for player in players:
                    self.persistence.mark_player(player)
                await self.persistence.commit_match(record, [player.id for player in players])
                return True
            except StoreError as exc:
                log.error("match_result_store_failed", match=record.id, attempt=attempt, error=str(exc))
                if delay is None:
                    break
                await asyncio.sleep(delay)
        for player in players:
            self.persistence.mark_player(player)
        self.persistence.mark_match(record)
        return None

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


def _started_record(starting: c.StartingMatch) -> MatchRecord:
    """Return the record of a started match: the full one the leader encoded, else one rebuilt from its fields."""
    if starting.record:
        return RECORD_DECODER.decode(starting.record)
    return MatchRecord(
        id=starting.match,
        queue=starting.queue,
        teams=tuple(tuple(team) for team in starting.teams),
        ratings=tuple(tuple(team) for team in starting.ratings),
        state=MatchState.STARTED,
        created_at=starting.created_at,
        ended_at=starting.ended_at,
        waits=tuple(starting.waits),
        server=starting.server,
    )


def _stage(sets: dict[str, bytes], deletes: set[str], key: str, state: msgspec.Struct | None) -> None:
    """Stage ``state`` under ``key`` in one hash of a commit, or the key's deletion when ``state`` is None."""
    if state is None:
        deletes.add(key)
    else:
        sets[key] = c.ENCODER.encode(state)


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; return whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def _finish_replies(effects: Iterable[fx.Effect], requester: str) -> bool:
    """Return whether a result in ``effects`` sends ``requester`` its reply once stored."""
    return any(
        isinstance(effect, fx.FinishMatch) and any(send.session == requester for send in effect.sends)
        for effect in effects
    )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Return the exceptions of ``group`` and its nested groups, depth first."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
