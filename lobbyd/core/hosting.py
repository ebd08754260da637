"""Hosted matches: game-server allocation, the running match, its result and the new ratings.

When every player of a ready check has accepted, ``begin`` picks a game server. A
static server takes the match at once and its players are released, as without game
servers. A registered server is sent ``allocate`` and has ``allocate_timeout`` seconds
to answer ``allocated``; only then do players get ``match_start`` with its address and
their join ticket. Until the match ends the players are ``in_match``. A match that never
got a server (none free, refused, timed out, server lost) sends its players back to the
queue with priority and their wait; a running match ends with a result, when its
server is lost, or after ``match_timeout`` seconds.

Like ``Lobby``, every public method is one atomic state change that raises a
``RemoteError`` before changing anything, or returns the effects for the server.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lobbyd.core import effects as fx
from lobbyd.core import join_ticket
from lobbyd.core.allocation import HostedMatch, MatchEvent, MatchPhase
from lobbyd.core.game_servers import GameServer, GameServerPool, StaticServer, registered_slot
from lobbyd.core.match_start import match_start
from lobbyd.core.model import MatchRecord, MatchState, Place, Player, QueueRules, Ticket
from lobbyd.core.ratings import display_rating, rate
from lobbyd.core.ready_check import CheckState, ReadyCheck
from lobbyd.core.results import Outcome, check_result
from lobbyd.errors import AlreadyReported, InvalidResult, MatchOver, UnknownMatch, UnknownPlayer, UnknownQueue
from lobbyd.protocol import messages as m

if TYPE_CHECKING:
    from lobbyd.core.lobby import Lobby


@dataclass(frozen=True, slots=True)
class HostingSettings:
    ticket_key: bytes
    """HMAC key of join tickets, shared with the game servers."""
    allocate_timeout: float = 5.0
    """Seconds a registered server has to acknowledge an allocation."""
    ticket_ttl: float = 300.0
    """Seconds a join ticket stays valid after it is sent."""
    match_timeout: float = 7200.0
    """Seconds a running match may last before it is abandoned."""
    static_servers: tuple[StaticServer, ...] = ()
    static_slot: float = 1800.0
    """Seconds a match holds its static server's slot, since no static server reports an end."""
    failed_allocation_rest: float = 5.0
    """Seconds a server that refused or missed an allocation gets no new match."""


@dataclass(slots=True)
class HostingCounts:
    """How hosted matches went since the daemon started, for logs and metrics."""

    allocated: int = 0
    """Matches that got a game server: acknowledged, or placed on a static server."""
    no_server: int = 0
    refused: int = 0
    timed_out: int = 0
    """Allocations not acknowledged within the allocate timeout."""
    lost_while_allocating: int = 0
    finished: int = 0
    abandoned: int = 0
    results_rejected: int = 0


class Hosting:
    """Game servers and hosted matches of one lobby."""

    def __init__(self, lobby: Lobby, settings: HostingSettings) -> None:
        self.lobby = lobby
        self.settings = settings
        self.pool = GameServerPool(settings.static_servers)
        # TODO: hosted matches live only in memory. After a restart their players are idle
        # and their servers' results get unknown_match; keeping them needs the store to
        # load running matches at start and servers to re-register what they still host.
        self.matches: dict[str, HostedMatch] = {}
        # Ended hosted matches by id: (phase, ended at, server id), so that a late or
        # repeated request of their server gets a precise error. ``forget`` trims it.
        self.ended: dict[str, tuple[MatchPhase, float, str]] = {}
        self.counts = HostingCounts()
        # Queues whose last tick found no free game server slot, so that the lobby logs
        # when a queue stops and starts forming matches instead of every tick.
        self.queues_on_hold: set[str] = set()

    # Game servers.

    def _rest(self, server_id: str, now: float) -> None:
        """Keep a server that refused or missed an allocation out of new matches for a while.

        Without the rest, the requeued players are matched again on the next tick and
        sent to the same server, which fails the same way, in a loop.
        """
        server = self.pool.servers.get(server_id)
        if server is not None:
            server.resting_until = now + self.settings.failed_allocation_rest

    def free_regions(self, rules: QueueRules) -> tuple[str, ...]:
        """Return the regions where a server that hosts ``rules``' queue has a free slot."""
        allowed = rules.regions
        regions = {
            server.region
            for server in self.pool
            if rules.name in server.queues and server.has_room() and (not allowed or server.region in allowed)
        }
        return tuple(sorted(regions))

    def free_slots(self, rules: QueueRules) -> int:
        """Return the match slots free for ``rules``' queue on every server that may host it.

        A queue with a latency limit may host in any of its ``regions`` (or any region
        when it lists none); other queues only in their own region.
        """
        free = 0
        for server in self.pool:
            if rules.name not in server.queues:
                continue
            if rules.latency_steps is None:
                fits = server.region == rules.region
            else:
                fits = not rules.regions or server.region in rules.regions
            if fits and server.resting_until == 0.0:
                free += max(server.capacity - len(server.matches), 0)
        return free

    def register(self, session: str, message: m.Register, now: float) -> list[fx.Effect]:
        """Add a registered game server; an earlier session of the same server id is kicked."""
        unknown = sorted(set(message.queues) - set(self.lobby.rules))
        if unknown:
            known = ", ".join(sorted(self.lobby.rules))
            msg = f"queues {', '.join(unknown)} do not exist: this lobby has {known}"
            raise UnknownQueue(msg, rid=message.rid)

        effects: list[fx.Effect] = []
        old = self.pool.servers.get(message.server)
        if old is not None and old.session is not None:
            effects.append(fx.Send(old.session, m.Kicked(reason="logged_in_elsewhere")))
            effects.append(fx.Close(old.session, "logged_in_elsewhere"))
            effects.extend(self.server_lost(old.session, now))

        server = GameServer(
            message.server,
            message.address,
            message.region or m.DEFAULT_REGION,
            message.capacity,
            frozenset(message.queues),
            session,
        )
        self.pool.add(server)
        registered = m.Registered(
            session=session,
            server=server.id,
            heartbeat_ms=self.lobby.settings.heartbeat_ms,
            allocate_ms=round(self.settings.allocate_timeout * 1000),
            rid=message.rid,
        )
        effects.append(fx.Send(session, registered))
        fields = {"server": server.id, "session": session, "region": server.region, "capacity": server.capacity}
        effects.append(fx.Event("game_server_registered", fields))
        return effects

    def server_lost(self, session: str, now: float) -> list[fx.Effect]:
        """Drop a registered server whose session closed: its matches end, none is rated."""
        server = self.pool.of_session(session)
        if server is None:
            return []
        self.pool.remove(server)
        held = sorted(server.matches)
        effects: list[fx.Effect] = []
        for match in held:
            hosted = self.matches[match]
            if hosted.phase is MatchPhase.ALLOCATING:
                self.counts.lost_while_allocating += 1
                hosted.apply(MatchEvent.LOSE_SERVER)
                effects.extend(self._requeue_hosted(hosted, now, "server_lost"))
            else:
                effects.extend(self._abandon(hosted, MatchEvent.LOSE_SERVER, "server_lost", now))
        effects.append(fx.Event("game_server_lost", {"server": server.id, "matches": held}))
        return effects

    # The match, from the last accept on.

    def begin(self, check: ReadyCheck, record: MatchRecord, now: float) -> list[fx.Effect]:
        """Place a match whose players all accepted on a game server, or requeue them."""
        # The record's region is the one the match formed for: chosen by the players'
        # latency in a queue with a latency limit, else the queue's own.
        server = self.pool.pick(check.queue, record.region or self.lobby.rules[check.queue].region)
        if server is None:
            self.counts.no_server += 1
            effects = self._requeue(record, check.tickets, "no_server", now)
            effects.append(fx.Event("allocation_failed", {"match": record.id, "reason": "no_server"}))
            return effects

        record = dataclasses.replace(record, server=server.address)
        if server.session is None:
            return self._start_static(server, record, now)

        hosted = HostedMatch(
            record, dict(check.tickets), server.id, server.session, now + self.settings.allocate_timeout
        )
        hosted.bound.update(check.players)
        server.matches[record.id] = registered_slot()
        self.matches[record.id] = hosted
        for player_id in check.players:
            player = self.lobby.players[player_id]
            player.place, player.match = Place.IN_MATCH, record.id
        return [
            fx.Send(server.session, self._allocate(hosted, now)),
            fx.Event("allocation_requested", {"match": record.id, "server": server.id}),
        ]

    def acknowledge(self, session: str, match: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        """Start a match its server took: commit it, then send every player ``match_start``.

        A repeated ``allocated`` changes nothing.
        """
        hosted = self._hosted(session, match, rid)
        if hosted.phase is MatchPhase.RUNNING:
            return []
        hosted.apply(MatchEvent.ACKNOWLEDGE)
        hosted.deadline = now + self.settings.match_timeout
        self.counts.allocated += 1

        sends = []
        for player_id in sorted(hosted.bound):
            target = self.lobby.players[player_id].session
            if target is not None:
                sends.append(fx.Send(target, self._match_start(hosted.record, player_id, now)))
        return [
            fx.StartMatch(hosted.record, tuple(sends)),
            fx.Event("match_allocated", {"match": match, "server": hosted.server}),
        ]

    def refuse(
        self, session: str, match: str, reason: str | None, now: float, rid: int | None = None
    ) -> list[fx.Effect]:
        """Requeue the players of an allocation its server refused."""
        hosted = self._hosted(session, match, rid)
        if hosted.phase is not MatchPhase.ALLOCATING:
            msg = f"match {match!r} is already acknowledged: report its result or release its players"
            raise MatchOver(msg, rid=rid)
        hosted.apply(MatchEvent.REFUSE)
        self.counts.refused += 1
        self._rest(hosted.server, now)
        effects = self._requeue_hosted(hosted, now, "refused")
        effects.append(fx.Event("allocation_refused", {"match": match, "server": hosted.server, "detail": reason}))
        return effects

    def report(self, session: str, result: m.MatchResult, now: float) -> list[fx.Effect]:
        """Apply a running match's result once: rate its players, then release them."""
        try:
            hosted = self._running(session, result.match, result.rid)
            outcome = check_result(hosted.record, result)
        except (AlreadyReported, InvalidResult, MatchOver, UnknownMatch):
            self.counts.results_rejected += 1
            raise
        hosted.apply(MatchEvent.REPORT)
        self.counts.finished += 1
        record, before = self._rate(hosted, outcome, now)
        self._end(hosted, now)

        sends = [fx.Send(session, m.ResultApplied(match=record.id, rid=result.rid))]
        rated = [self.lobby.players[player_id] for player_id in before]
        for player in rated:
            sends.extend(self._finish_player(hosted, player, before[player.id], record.id))
        event = fx.Event("match_finished", {"match": record.id, "server": hosted.server, "ranks": list(outcome.ranks)})
        return [fx.FinishMatch(record, tuple(player.record() for player in rated), tuple(sends)), event]

    def release(self, session: str, match: str, player_id: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        """Free one player of a running match, who may then queue again; the result still rates them."""
        hosted = self._running(session, match, rid)
        if not any(player_id in team for team in hosted.record.teams):
            msg = f"player {player_id!r} is not in match {match!r}"
            raise UnknownPlayer(msg, rid=rid)

        effects: list[fx.Effect] = []
        if player_id in hosted.bound:
            hosted.bound.discard(player_id)
            player = self.lobby.players[player_id]
            player.place, player.match = Place.IDLE, None
            if player.session is not None:
                effects.append(fx.Send(player.session, m.MatchEnded(match=match, reason="released")))
            effects.append(fx.Event("player_released", {"match": match, "player": player_id}))
        effects.append(fx.Send(session, m.PlayerReleased(match=match, player=player_id, rid=rid)))
        return effects

    def abort(self, match: str, now: float) -> list[fx.Effect]:
        """End a running match that could not be stored, and send its server ``deallocate``."""
        hosted = self.matches.get(match)
        if hosted is None:
            # A match placed on a static server is not tracked, only its slot.
            for server in self.pool:
                server.matches.pop(match, None)
            return []
        hosted.apply(MatchEvent.FAIL_STORAGE)
        self._end(hosted, now)
        self._unbind(hosted)
        return [fx.Send(hosted.session, m.Deallocate(match=match, reason="storage_failed"))]

    def rejoin(self, player: Player, session: str, now: float) -> list[fx.Effect]:
        """Send a reconnected player the ``match_start`` of their running match again, with a fresh ticket."""
        hosted = self.matches.get(player.match or "")
        if hosted is None or hosted.phase is not MatchPhase.RUNNING:
            return []
        return [fx.Send(session, self._match_start(hosted.record, player.id, now))]

    # Time.

    def tick(self, now: float) -> list[fx.Effect]:
        """Time out unacknowledged allocations and overlong matches, and free static slots."""
        effects: list[fx.Effect] = []
        for server in self.pool:
            if server.resting_until and server.resting_until <= now:
                server.resting_until = 0.0
                effects.append(fx.Event("game_server_rested", {"server": server.id}))
        for hosted in [h for h in self.matches.values() if h.deadline <= now]:
            effects.append(fx.Send(hosted.session, m.Deallocate(match=hosted.id, reason="timed_out")))
            if hosted.phase is MatchPhase.ALLOCATING:
                self.counts.timed_out += 1
                hosted.apply(MatchEvent.TIME_OUT)
                self._rest(hosted.server, now)
                effects.extend(self._requeue_hosted(hosted, now, "timed_out"))
            else:
                effects.extend(self._abandon(hosted, MatchEvent.TIME_OUT, "timed_out", now))
        for match in self.pool.expire_static_slots(now):
            effects.append(fx.Event("static_slot_freed", {"match": match}))
        return effects

    def forget(self, now: float) -> int:
        """Drop ended matches older than the lobby's finished TTL; return how many."""
        cutoff = now - self.lobby.settings.finished_ttl
        old = [match for match, (_, at, _) in self.ended.items() if at < cutoff]
        for match in old:
            del self.ended[match]
        return len(old)

    def rostered(self) -> set[str]:
        """Return every player of a hosted match, released or not: their ratings may still move."""
        return {player for hosted in self.matches.values() for team in hosted.record.teams for player in team}

    # Helpers.

    def _hosted(self, session: str, match: str, rid: int | None) -> HostedMatch:
        """Return the live match ``match`` of the server on ``session``, or raise why not."""
        server = self.pool.of_session(session)
        server_id = server.id if server is not None else None
        hosted = self.matches.get(match)
        if hosted is not None and hosted.server == server_id:
            return hosted
        ended = self.ended.get(match)
        if ended is not None and ended[2] == server_id:
            phase = ended[0]
            if phase is MatchPhase.FINISHED:
                msg = f"match {match!r} already has its result; this request changed nothing"
                raise AlreadyReported(msg, rid=rid)
            msg = f"match {match!r} is over: it was {phase.value} without a result"
            raise MatchOver(msg, rid=rid)
        msg = f"match {match!r} is not hosted by game server {server_id!r}"
        raise UnknownMatch(msg, rid=rid)

    def _running(self, session: str, match: str, rid: int | None) -> HostedMatch:
        hosted = self._hosted(session, match, rid)
        if hosted.phase is not MatchPhase.RUNNING:
            msg = f"match {match!r} is not running yet: send allocated first"
            raise MatchOver(msg, rid=rid)
        return hosted

    def _allocate(self, hosted: HostedMatch, now: float) -> m.Allocate:
        record = hosted.record
        players = [
            m.AllocatedPlayer(
                player=player_id,
                name=self.lobby.players[player_id].name,
                team=team_index,
                ticket=self._ticket(player_id, record.id, now),
                role=record.roles[player_id].role if record.roles else None,
            )
            for team_index, team in enumerate(record.teams)
            for player_id in team
        ]
        return m.Allocate(
            match=record.id,
            queue=record.queue,
            teams=[list(team) for team in record.teams],
            players=players,
            allocate_ms=round(self.settings.allocate_timeout * 1000),
            region=record.region,
        )

    def _ticket(self, player: str, match: str, now: float) -> str:
        expires = math.ceil(now + self.settings.ticket_ttl)
        return join_ticket.sign(self.settings.ticket_key, player, match, expires)

    def _match_start(self, record: MatchRecord, player: str, now: float) -> m.MatchStart:
        return match_start(record, player, record.server, self._ticket(player, record.id, now))

    def _start_static(self, server: GameServer, record: MatchRecord, now: float) -> list[fx.Effect]:
        # A static server never reports an end, so its players are released at once
        # and the slot frees itself after static_slot seconds.
        server.matches[record.id] = now + self.settings.static_slot
        self.counts.allocated += 1
        sends = []
        for team in record.teams:
            for player_id in team:
                player = self.lobby.players[player_id]
                player.place, player.match = Place.IDLE, None
                if player.session is not None:
                    sends.append(fx.Send(player.session, self._match_start(record, player_id, now)))
        event = fx.Event("match_allocated", {"match": record.id, "server": server.id, "static": True})
        return [fx.StartMatch(record, tuple(sends)), event]

    def _requeue_hosted(self, hosted: HostedMatch, now: float, detail: str) -> list[fx.Effect]:
        """Requeue the players of an allocation that failed; the server's slot is freed."""
        self._end(hosted, now)
        effects = self._requeue(hosted.record, hosted.tickets, "allocation_failed", now)
        effects.append(fx.Event("allocation_failed", {"match": hosted.id, "reason": detail, "server": hosted.server}))
        return effects

    def _requeue(self, record: MatchRecord, tickets: dict[str, Ticket], reason: str, now: float) -> list[fx.Effect]:
        """Cancel a match that got no server: connected players go back to the queue with priority."""
        self.lobby.finished[record.id] = (CheckState.CANCELLED, now, frozenset())
        cancelled = dataclasses.replace(record, state=MatchState.CANCELLED, ended_at=now, reason=reason)
        effects: list[fx.Effect] = [fx.SaveMatch(cancelled)]
        for player_id, ticket in tickets.items():
            player = self.lobby.players[player_id]
            player.place, player.match = Place.IDLE, None
            if player.session is not None:
                back = self.lobby.requeue(player, ticket)
                message = m.MatchCancelled(match=record.id, reason=reason, requeued=back)
                effects.append(fx.Send(player.session, message))
        return effects

    def _abandon(self, hosted: HostedMatch, event: MatchEvent, reason: str, now: float) -> list[fx.Effect]:
        """End a running match without a result: its players go idle and keep their ratings."""
        hosted.apply(event)
        self.counts.abandoned += 1
        self._end(hosted, now)
        wire_reason = "abandoned" if event is MatchEvent.LOSE_SERVER else reason
        effects: list[fx.Effect] = []
        for player_id in self._unbind(hosted):
            target = self.lobby.players[player_id].session
            if target is not None:
                effects.append(fx.Send(target, m.MatchEnded(match=hosted.id, reason=wire_reason)))
        record = dataclasses.replace(hosted.record, state=MatchState.ABANDONED, ended_at=now, reason=reason)
        effects.append(fx.SaveMatch(record))
        effects.append(fx.Event("match_abandoned", {"match": hosted.id, "server": hosted.server, "reason": reason}))
        return effects

    def _unbind(self, hosted: HostedMatch) -> list[str]:
        """Set every player still held by ``hosted`` idle; return them in a stable order."""
        players = sorted(hosted.bound)
        for player_id in players:
            player = self.lobby.players[player_id]
            player.place, player.match = Place.IDLE, None
        hosted.bound.clear()
        return players

    def _end(self, hosted: HostedMatch, now: float) -> None:
        """Forget ``hosted`` as live: free its server slot and remember how it ended."""
        del self.matches[hosted.id]
        server = self.pool.servers.get(hosted.server)
        if server is not None:
            server.matches.pop(hosted.id, None)
        self.ended[hosted.id] = (hosted.phase, now, hosted.server)

    def _rate(self, hosted: HostedMatch, outcome: Outcome, now: float) -> tuple[MatchRecord, dict[str, int]]:
        """Move every player's skill and rating by ``outcome``.

        Returns the finished record and each player's display rating before the match.
        """
        teams = hosted.record.teams
        players = [[self.lobby.players[player_id] for player_id in team] for team in teams]
        after = rate([[player.current_skill for player in team] for team in players], outcome.ranks)
        k = self.lobby.settings.rating_k
        before: dict[str, int] = {}
        for team_index, team in enumerate(players):
            for player, skill in zip(team, after[team_index], strict=True):
                before[player.id] = player.rating
                player.skill = skill
                player.rating = display_rating(skill, k)
                player.games += 1
                player.wins += 1 if outcome.won(team_index) else 0
        ratings_after = tuple(tuple(display_rating(skill, k) for skill in team) for team in after)
        record = dataclasses.replace(
            hosted.record,
            state=MatchState.FINISHED,
            ended_at=now,
            ranks=outcome.ranks,
            scores=outcome.scores,
            ratings_after=ratings_after,
        )
        return record, before

    def _finish_player(self, hosted: HostedMatch, player: Player, old_rating: int, match: str) -> list[fx.Send]:
        """Release ``player`` if the match still held them, and send them their new rating."""
        assert player.skill is not None
        held = player.id in hosted.bound
        if held:
            hosted.bound.discard(player.id)
            player.place, player.match = Place.IDLE, None
        if player.session is None:
            return []
        changed = m.RatingChanged(
            match=match,
            rating=player.rating,
            change=player.rating - old_rating,
            mu=player.skill.mu,
            sigma=player.skill.sigma,
            games=player.games,
            wins=player.wins,
        )
        sends = [fx.Send(player.session, changed)]
        if held:
            sends.insert(0, fx.Send(player.session, m.MatchEnded(match=match, reason="finished")))
        return sends
