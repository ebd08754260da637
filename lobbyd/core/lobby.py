"""The lobby: every player, queue and ready check, changed only by synchronous calls.

Each public method is one atomic state change. It checks the request first and
raises a ``RemoteError`` before touching anything, so a rejected request changes
nothing; otherwise it changes state and returns the effects for the server to carry
out, in order. ``now`` is passed in on every call.

A player is always in exactly one ``Place``: idle, in one queue, in one ready check,
or in one hosted match. Without game servers, a started match releases its players at
once; with them, ``Hosting`` holds the players until the match ends.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from lobbyd.core import effects as fx
from lobbyd.core.arrangement import Arrangement, arrange
from lobbyd.core.hosting import Hosting, HostingSettings
from lobbyd.core.match_start import match_start
from lobbyd.core.matchmaker import GroupPolicy, take_groups
from lobbyd.core.model import (
    DEFAULT_RATING,
    LobbySettings,
    MatchRecord,
    MatchState,
    Place,
    Player,
    PlayerRecord,
    QueueRules,
    Ticket,
)
from lobbyd.core.parties import Parties, require_idle
from lobbyd.core.pool import TicketPool
from lobbyd.core.preferences import check_latency, check_roles
from lobbyd.core.ratings import Skill, display_rating, win_probability
from lobbyd.core.ready_check import CANCEL_REASONS, CheckEvent, CheckState, ReadyCheck
from lobbyd.core.teams import split_teams
from lobbyd.errors import (
    InvalidField,
    InvalidPartySize,
    NotQueued,
    QueueLocked,
    UnknownMatch,
    UnknownQueue,
)
from lobbyd.protocol import messages as m


class Lobby:
    """All matchmaking state of one daemon."""

    def __init__(
        self,
        queues: Mapping[str, QueueRules],
        settings: LobbySettings,
        new_match_id: Callable[[], str],
        hosting: HostingSettings | None = None,
    ) -> None:
        self.rules = dict(queues)
        self.settings = settings
        self._new_match_id = new_match_id
        self.players: dict[str, Player] = {}
        self.sessions: dict[str, str] = {}
        self.queues: dict[str, TicketPool] = {name: TicketPool() for name in queues}
        self.checks: dict[str, ReadyCheck] = {}
        # Finished ready checks by match id: (state, finished at, players of a started
        # match), so that a late accept or decline gets a precise reply. ``forget``
        # trims it.
        self.finished: dict[str, tuple[CheckState, float, frozenset[str]]] = {}
        self._seq = itertools.count()
        # True when the last tick stopped at max_matches_per_tick and may have left
        # matches to form; the server then ticks again without waiting an interval.
        self.more_to_match = False
        self.hosting = Hosting(self, hosting) if hosting is not None else None
        # Party members to the pool key (the leader's id) of their party's ticket.
        self.ticket_keys: dict[str, str] = {}
        self.parties = Parties(self)

    # Sessions.

    def known_record(self, player: str) -> PlayerRecord | None:
        """Return the in-memory record of ``player``, if the lobby still has one."""
        known = self.players.get(player)
        return known.record() if known else None

    def connect(
        self,
        session: str,
        record: PlayerRecord | None,
        player_id: str,
        name: str | None,
        now: float,
        rid: int | None = None,
    ) -> list[fx.Effect]:
        """Bind ``session`` to ``player_id``; a previous session of that player is kicked.

        ``record`` is what the store holds for the player, or ``None`` for a new one.
        The kicked session's queue place or ready check ends as a disconnect would end
        it, so the new session starts idle, unless the player is in a hosted match: then
        it stays there, and gets the match's ``match_start`` again once it is running.
        """
        effects: list[fx.Effect] = []
        player = self.players.get(player_id)
        if player is not None and player.session is not None:
            old = player.session
            effects.append(fx.Send(old, m.Kicked(reason="logged_in_elsewhere")))
            effects.append(fx.Close(old, "logged_in_elsewhere"))
            effects.extend(self.disconnect(old, now))

        if player is None:
            player = self._load(record, player_id, name, now)
            self.players[player_id] = player
        if name:
            player.name = name
        player.session = session
        player.last_seen = now
        self.sessions[session] = player_id

        welcome = m.Welcome(
            session=session,
            player=player_id,
            heartbeat_ms=self.settings.heartbeat_ms,
            rating=player.rating,
            dev_mode=self.settings.dev_mode,
            rid=rid,
        )
        effects.append(fx.Send(session, welcome))
        if player.place is Place.IN_MATCH and self.hosting is not None:
            effects.extend(self.hosting.rejoin(player, session, now))
        effects.append(fx.SavePlayer(player.record()))
        effects.append(fx.Event("player_connected", {"player": player_id, "session": session}))
        return effects

    def disconnect(self, session: str, now: float) -> list[fx.Effect]:
        """Unbind ``session``: its ticket is removed and its ready check cancelled.

        A player in a hosted match stays in it. A game server's session ends its matches.
        """
        if self.hosting is not None and session in self.hosting.pool.by_session:
            return self.hosting.server_lost(session, now)
        player_id = self.sessions.pop(session, None)
        if player_id is None:
            return []
        player = self.players[player_id]
        if player.session != session:
            return []

        effects: list[fx.Effect] = []
        if player.party is not None:
            # Leaving the party also ends the party's ticket or ready check. The
            # session goes first, so that nothing is sent to it or requeued for it.
            player.session = None
            effects.extend(self.parties.remove_member(player, "disconnected", now))
        self.parties.drop_invites(player_id)
        if player.place is Place.QUEUED:
            queue = self._remove_ticket(player)
            effects.append(fx.Event("queue_left", {"player": player_id, "queue": queue, "reason": "disconnected"}))
        elif player.place is Place.READY_CHECK:
            assert player.match is not None
            effects.extend(self._cancel(self.checks[player.match], CheckEvent.DISCONNECT, player_id, now))

        player.session = None
        player.last_seen = now
        effects.append(fx.SavePlayer(player.record()))
        return effects

    # Queue requests.

    def join_queue(
        self,
        session: str,
        queue: str,
        now: float,
        rid: int | None = None,
        *,
        roles: Sequence[str] = (),
        latency: Mapping[str, float] | None = None,
        party_roles: Mapping[str, Sequence[str]] | None = None,
    ) -> list[fx.Effect]:
        """Queue the session's player, or their whole party when they lead one.

        ``roles`` are the player's preferred roles, most wanted first; empty means any
        role. ``latency`` is round-trip milliseconds by region. A party leader gives the
        other members' roles in ``party_roles`` by player id, and the leader's latency
        stands for the party. ``lobbyd.core.preferences`` lists the checks.
        """
        player = self._player_of(session)
        if queue not in self.rules:
            known = ", ".join(sorted(self.rules))
            msg = f"queue {queue!r} does not exist: this server has {known}"
            raise UnknownQueue(msg, rid=rid)
        rules = self.rules[queue]
        prefs = check_roles(rules, roles, "roles", rid)
        report = check_latency(rules, latency, rid)
        require_idle(player, rid)
        self._check_lockout(player, now, rid)
        if player.party is not None:
            return self.parties.join_queue(player, rules, now, rid, prefs, report, party_roles)
        if party_roles:
            msg = f"party_roles: player {player.id!r} is in no party; their own roles go in roles"
            raise InvalidField(msg, rid=rid)
        self._check_party_size(rules, 1, rid)

        ticket = Ticket(
            player.id,
            queue,
            player.rating,
            now,
            next(self._seq),
            skill=player.current_skill,
            role_prefs=(prefs,) if prefs else (),
            latency=report,
        )
        self._add_ticket(player, ticket)
        return [
            fx.Send(session, m.Queued(queue=queue, rid=rid)),
            fx.Event("queue_joined", {"player": player.id, "session": session, "queue": queue}),
        ]

    def join_queue_request(self, session: str, request: m.JoinQueue, now: float) -> list[fx.Effect]:
        """Apply a wire ``join_queue`` with all its fields."""
        return self.join_queue(
            session,
            request.queue,
            now,
            request.rid,
            roles=request.roles or (),
            latency=request.latency,
            party_roles=request.party_roles,
        )

    def leave_queue(self, session: str, queue: str | None, now: float, rid: int | None = None) -> list[fx.Effect]:
        """Leave the queue; inside a ready check this declines the match.

        A player whose ticket was just taken into a ready check gets one outcome:
        the match they were found for is cancelled as declined, then ``left_queue``.
        """
        player = self._player_of(session)
        current = player.queue if player.place is Place.QUEUED else None
        if player.place is Place.READY_CHECK:
            current = self.checks[player.match or ""].queue
        if current is None or (queue is not None and queue != current):
            where = f"queue {current!r}" if current else "no queue"
            msg = f"player {player.id!r} is not in queue {queue!r}: they are in {where}"
            if queue is None:
                msg = f"player {player.id!r} is not in any queue"
            raise NotQueued(msg, rid=rid)

        effects: list[fx.Effect] = []
        if player.place is Place.READY_CHECK:
            assert player.match is not None
            effects.extend(self._cancel(self.checks[player.match], CheckEvent.DECLINE, player.id, now))
        else:
            effects.extend(self._drop_ticket(player, "member_left_queue"))
        effects.append(fx.Send(session, m.LeftQueue(queue=current, rid=rid)))
        effects.append(fx.Event("queue_left", {"player": player.id, "queue": current, "reason": "requested"}))
        return effects

    # Ready check accepts and declines.

    def accept(self, session: str, match: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        """Record an accept; the last one starts the match.

        A repeated accept, even one that arrives after the match started, is answered
        with ``accepted`` again and changes nothing.
        """
        player = self._player_of(session)
        if self._started_with(player.id, match):
            return [fx.Send(session, m.Accepted(match=match, rid=rid))]
        check = self._check_of(player, match, rid)
        if now >= check.deadline:
            return self._expire_late(check, session, now, rid)

        first = player.id not in check.accepted
        state = check.accept(player.id)
        effects: list[fx.Effect] = [fx.Send(session, m.Accepted(match=match, rid=rid))]
        if first:
            effects.append(fx.Event("match_accepted", {"match": match, "player": player.id}))
        if state is CheckState.STARTED:
            effects.extend(self._start(check, now))
        return effects

    def decline(self, session: str, match: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self._player_of(session)
        check = self._check_of(player, match, rid)
        if now >= check.deadline:
            return self._expire_late(check, session, now, rid)
        return self._cancel(check, CheckEvent.DECLINE, player.id, now, rid=rid)

    def abort_start(self, match: str, now: float) -> list[fx.Effect]:
        """Record that a started match could not be stored and so was never announced."""
        if match in self.finished:
            self.finished[match] = (CheckState.CANCELLED, now, frozenset())
        if self.hosting is not None:
            return self.hosting.abort(match, now)
        return []

    def profile(self, session: str, rid: int | None = None) -> list[fx.Effect]:
        """Send the session's player their rating, skill and match counts."""
        player = self._player_of(session)
        skill = player.current_skill
        profile = m.Profile(
            player=player.id,
            name=player.name,
            rating=player.rating,
            mu=skill.mu,
            sigma=skill.sigma,
            games=player.games,
            wins=player.wins,
            rid=rid,
        )
        return [fx.Send(session, profile)]

    def requeue(self, player: Player, ticket: Ticket) -> bool:
        """Put ``player`` back in the queue ahead of newer tickets, keeping their wait.

        The members of a party share the ticket: the first call queues it for all of
        them, and later calls for the other members find it queued already. Returns
        False, and leaves the player idle, when the ticket is stale: its party changed
        or lost a member's connection since the match formed.
        """
        ticket.priority = True
        if self.queues[ticket.queue].get(ticket.player) is ticket:
            player.place, player.queue = Place.QUEUED, ticket.queue
            return True
        if not self._ticket_current(ticket):
            return False
        self._add_ticket(player, ticket)
        return True

    def _ticket_current(self, ticket: Ticket) -> bool:
        """Return True when every player on ``ticket`` is connected and a party ticket still matches its party."""
        if ticket.queue not in self.rules:
            return False
        if any(self.players[p].session is None for p in ticket.players):
            return False
        if not ticket.members:
            return True
        party_id = self.players[ticket.player].party
        party = self.parties.parties.get(party_id) if party_id is not None else None
        return party is not None and party.members == list(ticket.members)

    # Time.

    def tick(self, now: float, *, form_matches: bool = True, policy: GroupPolicy = take_groups) -> list[fx.Effect]:
        """Expire overdue ready checks, then form new matches in every queue unless ``form_matches`` is false.

        ``policy`` picks the groups; the daemon always uses ``take_groups``.
        """
        effects: list[fx.Effect] = self.hosting.tick(now) if self.hosting is not None else []
        for check in [c for c in self.checks.values() if c.deadline <= now]:
            effects.extend(self._cancel(check, CheckEvent.EXPIRE, None, now))
        if not form_matches:
            self.more_to_match = False
            return effects
        budget = self.settings.max_matches_per_tick
        pending = Counter(check.queue for check in self.checks.values()) if self.hosting is not None else None
        for name, rules in self.rules.items():
            limit = budget
            if pending is not None:
                limit = min(limit, self._hosting_room(rules, pending[name], effects))
                rules = self._hostable(rules)
            for group in policy(self.queues[name], rules, now, limit):
                effects.extend(self._propose(rules, group, now))
                budget -= 1
        self.more_to_match = budget <= 0
        return effects

    def _hosting_room(self, rules: QueueRules, pending: int, effects: list[fx.Effect]) -> int:
        """Return how many matches ``rules``' queue may propose: free server slots not yet promised.

        Every ready check still running may take a slot when it ends, so it counts as
        taken. Without this, players who all accept get ``no_server``, go back to the
        queue with priority and are matched again on the next tick, in a loop that
        lasts as long as no server is free.
        """
        assert self.hosting is not None
        room = self.hosting.free_slots(rules) - pending
        on_hold = self.hosting.queues_on_hold
        if room <= 0 and rules.name not in on_hold:
            on_hold.add(rules.name)
            effects.append(fx.Event("queue_held", {"queue": rules.name, "reason": "no_free_game_server"}))
        elif room > 0 and rules.name in on_hold:
            on_hold.discard(rules.name)
            effects.append(fx.Event("queue_resumed", {"queue": rules.name}))
        return max(room, 0)

    def _hostable(self, rules: QueueRules) -> QueueRules:
        """Return ``rules`` limited to the regions with a free game server slot.

        Players' latency may favour a region whose servers are all busy or absent. A
        match formed there would end in ``no_server`` and then form again at once.
        """
        if rules.latency_steps is None or self.hosting is None:
            return rules
        free = self.hosting.free_regions(rules)
        return dataclasses.replace(rules, regions=free) if free else rules

    def void_match(self, match: str, unreachable: Iterable[str], now: float) -> list[fx.Effect]:
        """Undo a proposed match whose ``match_found`` could not reach every player.

        No player has been told of the match, so nobody gets a message: the reachable
        players silently return to the queue with priority and their wait; the
        unreachable ones go idle and their pending disconnect finds nothing to undo.
        If a reload removed the queue meanwhile, the reachable players go idle too and
        get ``left_queue`` {reason ``queue_removed``}.
        If a disconnect or decline already ended the check, there is nothing left to
        undo and this returns no effects.
        """
        check = self.checks.get(match)
        if check is None:
            return []
        lost = set(unreachable)
        check.apply(CheckEvent.VOID)
        effects = self._finish(check, now, "undeliverable")
        for player_id in check.tickets:
            player = self.players[player_id]
            player.place, player.match = Place.IDLE, None
        back = self._requeueable(check, lambda ticket: not any(p in lost for p in ticket.players))
        for player_id, ticket in check.tickets.items():
            player = self.players[player_id]
            if player_id in lost or player.session is None:
                continue
            if id(ticket) in back:
                if player.place is Place.IDLE:
                    ticket.priority = True
                    self._add_ticket(player, ticket)
            elif check.queue in self.rules:
                # A party whose member was unreachable cannot go back whole.
                effects.append(fx.Send(player.session, m.LeftQueue(queue=check.queue, reason="party_changed")))
            else:
                # The player still believes they are queued, so they must hear that the queue is gone.
                effects.append(fx.Send(player.session, m.LeftQueue(queue=check.queue, reason="queue_removed")))
        effects.append(fx.Event("match_voided", {"match": match, "unreachable": sorted(lost)}))
        return effects

    def replace_rules(self, queues: Mapping[str, QueueRules], now: float) -> list[fx.Effect]:
        """Switch to new queue rules at once; every ticket of a queue that stays is kept.

        Kept tickets keep their wait and priority, and the next tick matches them by
        the new rules. Each player of a removed queue goes idle and gets ``left_queue``
        {reason ``queue_removed``}. Running ready checks of a removed queue finish as
        usual, but nobody is put back into that queue afterwards.
        """
        effects: list[fx.Effect] = []
        for name in [name for name in self.queues if name not in queues]:
            for ticket in list(self.queues[name].values()):
                self._remove_ticket(self.players[ticket.player])
                for player in (self.players[p] for p in ticket.players):
                    if player.session is not None:
                        effects.append(fx.Send(player.session, m.LeftQueue(queue=name, reason="queue_removed")))
                    fields = {"player": player.id, "queue": name, "reason": "queue_removed"}
                    effects.append(fx.Event("queue_left", fields))
            del self.queues[name]
        for name in queues:
            self.queues.setdefault(name, TicketPool())
        self.rules = dict(queues)
        return effects

    def forget(self, now: float, player_ttl: float) -> int:
        """Drop finished ready checks past their TTL and offline players idle past ``player_ttl``.

        Returns how many records were dropped. The store still holds every player,
        so a forgotten player who returns is loaded again. Players of a hosted match
        stay, because its result may still rate them.
        """
        dropped = self.hosting.forget(now) if self.hosting is not None else 0
        keep = self.hosting.rostered() if self.hosting is not None else set()
        cutoff = now - self.settings.finished_ttl
        for match in [k for k, (_, at, _) in self.finished.items() if at < cutoff]:
            del self.finished[match]
            dropped += 1
        idle_cutoff = now - player_ttl
        idle = [p for p in self.players.values() if p.session is None and p.last_seen < idle_cutoff]
        for player in [p for p in idle if p.place is Place.IDLE and p.id not in keep]:
            del self.players[player.id]
            dropped += 1
        return dropped

    # Helpers.

    def _load(self, record: PlayerRecord | None, player_id: str, name: str | None, now: float) -> Player:
        if record is None:
            return Player(player_id, name or player_id, DEFAULT_RATING, now, now)
        player = Player(record.id, record.name, record.rating, record.first_seen, record.last_seen)
        if record.mu is not None and record.sigma is not None:
            player.skill = Skill(record.mu, record.sigma)
            player.rating = display_rating(player.skill, self.settings.rating_k)
        player.games, player.wins = record.games, record.wins
        player.penalty_level, player.penalty_since = record.penalty_level, record.penalty_since
        player.locked_until = record.locked_until
        return player

    def _player_of(self, session: str) -> Player:
        # The server only forwards requests of authenticated sessions, so a miss here
        # is a bug of ours, not the peer's.
        return self.players[self.sessions[session]]

    def _started_with(self, player: str, match: str) -> bool:
        finished = self.finished.get(match)
        return finished is not None and finished[0] is CheckState.STARTED and player in finished[2]

    def _expire_late(self, check: ReadyCheck, session: str, now: float, rid: int | None) -> list[fx.Effect]:
        """End a ready check whose deadline passed before the tick noticed, and reply with an error."""
        effects = self._cancel(check, CheckEvent.EXPIRE, None, now)
        error = m.Error(code=UnknownMatch.code, message=f"match {check.match!r} expired before this request", rid=rid)
        effects.append(fx.Send(session, error))
        return effects

    def _check_lockout(self, player: Player, now: float, rid: int | None) -> None:
        remaining = player.penalty.remaining(now)
        if remaining <= 0:
            return
        retry_ms = math.ceil(remaining * 1000)
        msg = (
            f"player {player.id!r} declined or missed too many matches and may not queue for {retry_ms} ms "
            f"(penalty level {player.penalty_level})"
        )
        raise QueueLocked(msg, retry_after_ms=retry_ms, rid=rid)

    def _penalise(self, player: Player, match: str, now: float) -> list[fx.Effect]:
        """Move ``player`` one rung up the dodge ladder and store the new standing."""
        ladder = self.settings.penalties
        if ladder is None:
            return []
        player.penalty = player.penalty.after_dodge(ladder, now)
        fields = {
            "player": player.id,
            "match": match,
            "level": player.penalty_level,
            "lockout_ms": math.ceil(player.penalty.remaining(now) * 1000),
        }
        return [fx.SavePlayer(player.record()), fx.Event("dodge_penalised", fields)]

    def _check_of(self, player: Player, match: str, rid: int | None) -> ReadyCheck:
        if player.place is Place.READY_CHECK and player.match == match:
            return self.checks[match]
        if match in self.finished:
            state, _, _ = self.finished[match]
            msg = f"match {match!r} is already {state.value}"
        else:
            msg = f"match {match!r} has no ready check for player {player.id!r}"
        raise UnknownMatch(msg, rid=rid)

    def _add_ticket(self, player: Player, ticket: Ticket) -> None:
        """Queue ``ticket``, which is ``player``'s own or their party's, for every player on it."""
        self.queues[ticket.queue].add(ticket)
        player.place, player.queue = Place.QUEUED, ticket.queue
        for member in ticket.members:
            self.players[member].place, self.players[member].queue = Place.QUEUED, ticket.queue
            self.ticket_keys[member] = ticket.player

    def _remove_ticket(self, player: Player) -> str:
        """Remove ``player``'s ticket, or their party's, and make every player on it idle."""
        queue = player.queue
        assert queue is not None
        ticket = self.queues[queue].remove(self.ticket_keys.get(player.id, player.id))
        player.place, player.queue = Place.IDLE, None
        for member in ticket.members:
            self.players[member].place, self.players[member].queue = Place.IDLE, None
            self.ticket_keys.pop(member, None)
        return queue

    def _drop_ticket(self, player: Player, reason: str) -> list[fx.Effect]:
        """Remove ``player``'s ticket; the other members of a party ticket get ``left_queue`` {``reason``}."""
        key = self.ticket_keys.get(player.id, player.id)
        assert player.queue is not None
        ticket = self.queues[player.queue][key]
        queue = self._remove_ticket(player)
        effects: list[fx.Effect] = []
        for member in ticket.members:
            target = self.players[member].session
            if member != player.id and target is not None:
                effects.append(fx.Send(target, m.LeftQueue(queue=queue, reason=reason)))
        return effects

    def _check_party_size(self, rules: QueueRules, size: int, rid: int | None) -> None:
        if size in rules.party_sizes:
            return
        sizes = [str(n) for n in rules.party_sizes]
        if sizes == ["1"]:
            msg = f"queue {rules.name!r} takes solo players only, not parties of {size} players"
        else:
            allowed = sizes[0] if len(sizes) == 1 else f"{', '.join(sizes[:-1])} or {sizes[-1]}"
            msg = f"queue {rules.name!r} takes parties of {allowed} players, not {size}"
        raise InvalidPartySize(msg, rid=rid)

    def _requeueable(self, check: ReadyCheck, keep: Callable[[Ticket], bool]) -> set[int]:
        """Return the ids of the check's tickets that go back to the queue: ``keep`` passes,
        every player on them is connected, and the queue still exists."""
        if check.queue not in self.rules:
            return set()
        back = set()
        for ticket in {id(t): t for t in check.tickets.values()}.values():
            connected = all(self.players[p].session is not None for p in ticket.players)
            if connected and keep(ticket):
                back.add(id(ticket))
        return back

    def _propose(self, rules: QueueRules, group: list[Ticket], now: float) -> list[fx.Effect]:
        match = self._new_match_id()
        arrangement = self._arrange(rules, group, now)
        teams = arrangement.teams
        odds: dict[str, object] = {}
        if len(teams) == 2:
            first, second = ([skill for t in team for skill in t.skills] for team in teams)
            odds["win_probability"] = round(win_probability(first, second), 3)
        # take_groups puts the anchor first; its wait chose the expansion step.
        anchor_wait = now - group[0].waiting_since
        odds["expansion_step"] = rules.expansion_step(anchor_wait)
        ratings = [t.rating_of(p) for t in group for p in t.players]
        odds["rating_spread"] = max(ratings) - min(ratings)
        odds["anchor_wait"] = round(anchor_wait, 3)
        odds["region"] = arrangement.region
        if arrangement.roles:
            odds["roles"] = {
                player: {"role": given.role, "autofilled": given.autofilled}
                for player, given in arrangement.roles.items()
            }
        check = ReadyCheck(
            match=match,
            queue=rules.name,
            teams=tuple(tuple(p for t in team for p in t.players) for team in teams),
            tickets={p: t for t in group for p in t.players},
            created_at=now,
            deadline=now + self.settings.ready_timeout,
            explanation=dict(odds),
            region=arrangement.region,
            roles=arrangement.roles,
        )
        self.checks[match] = check

        sends = []
        accept_ms = round(self.settings.ready_timeout * 1000)
        for player_id in check.tickets:
            player = self.players[player_id]
            # take_groups already removed the ticket from the pool.
            player.place, player.queue, player.match = Place.READY_CHECK, None, match
            self.ticket_keys.pop(player_id, None)
            assert player.session is not None
            given = check.roles.get(player_id)
            found = m.MatchFound(
                match=match,
                queue=rules.name,
                players=len(check.tickets),
                accept_ms=accept_ms,
                region=check.region,
                role=given.role if given is not None else None,
                autofilled=given is not None and given.autofilled,
            )
            sends.append(fx.Send(player.session, found))
        return [
            fx.OfferMatch(match, tuple(sends)),
            fx.Event("match_found", {"match": match, "queue": rules.name, "players": list(check.players), **odds}),
        ]

    @staticmethod
    def _arrange(rules: QueueRules, group: list[Ticket], now: float) -> Arrangement:
        """Return the group's teams, roles and region, which ``take_groups`` made sure exist."""
        if not rules.constrained:
            teams = split_teams(group, rules.team_count, rules.team_size, rules.max_premade_gap)
            return Arrangement(teams, {}, rules.region)
        arrangement = arrange(group, rules, now)
        assert arrangement is not None, "take_groups formed a group that has no arrangement"
        return arrangement

    def _start(self, check: ReadyCheck, now: float) -> list[fx.Effect]:
        record = self._record(check, MatchState.STARTED, now, None)
        del self.checks[check.match]
        self.finished[check.match] = (CheckState.STARTED, now, frozenset(check.players))
        if self.hosting is not None:
            return self.hosting.begin(check, record, now)

        sends = []
        for team in check.teams:
            for player_id in team:
                player = self.players[player_id]
                player.place, player.match = Place.IDLE, None
                if player.session is None:
                    continue
                sends.append(fx.Send(player.session, match_start(record, player_id)))
        return [fx.StartMatch(record, tuple(sends))]

    def _cancel(
        self,
        check: ReadyCheck,
        event: CheckEvent,
        culprit: str | None,
        now: float,
        rid: int | None = None,
    ) -> list[fx.Effect]:
        """Cancel ``check``: players who accepted go back with priority, the rest go idle.

        ``culprit`` is the player who declined or disconnected; ``rid`` is echoed in the
        culprit's own ``match_cancelled`` when the decline was their request.
        """
        check.apply(event)
        reason = CANCEL_REASONS[event]
        effects = self._finish(check, now, reason)
        requeued: list[str] = []
        dodgers = self._dodgers(check, event, culprit)
        for player_id in check.tickets:
            player = self.players[player_id]
            player.place, player.match = Place.IDLE, None

        # A ticket goes back when every player on it accepted and none caused the cancel.
        def keep(ticket: Ticket) -> bool:
            return all(p in check.accepted and p != culprit for p in ticket.players)

        going_back = self._requeueable(check, keep)
        for player_id, ticket in check.tickets.items():
            player = self.players[player_id]
            if player_id in dodgers:
                effects.extend(self._penalise(player, check.match, now))
            back = id(ticket) in going_back
            if back:
                if player.place is Place.IDLE:
                    ticket.priority = True
                    self._add_ticket(player, ticket)
                requeued.append(player_id)

            # A player who disconnected is gone; everyone else hears of it at once.
            target = player.session
            if target is None or (player_id == culprit and event is CheckEvent.DISCONNECT):
                continue
            echo = rid if player_id == culprit else None
            cancelled = m.MatchCancelled(match=check.match, reason=reason, requeued=back, rid=echo)
            if player_id in dodgers and self.settings.penalties is not None:
                lockout_ms = math.ceil(player.penalty.remaining(now) * 1000)
                cancelled = msgspec.structs.replace(
                    cancelled, penalty_level=player.penalty_level, lockout_ms=lockout_ms
                )
            effects.append(fx.Send(target, cancelled))
        effects.append(
            fx.Event(
                "match_cancelled",
                {"match": check.match, "reason": reason, "player": culprit, "requeued": requeued},
            )
        )
        return effects

    @staticmethod
    def _dodgers(check: ReadyCheck, event: CheckEvent, culprit: str | None) -> set[str]:
        """Return the players a cancel penalises: who declined, or who let the check expire.

        A disconnect or a voided check penalises nobody, because the player may never
        have seen ``match_found``.
        """
        if event is CheckEvent.DECLINE and culprit is not None:
            return {culprit}
        if event is CheckEvent.EXPIRE:
            return set(check.tickets) - check.accepted
        return set()

    def _finish(self, check: ReadyCheck, now: float, reason: str) -> list[fx.Effect]:
        del self.checks[check.match]
        self.finished[check.match] = (check.state, now, frozenset())
        return [fx.SaveMatch(self._record(check, MatchState.CANCELLED, now, reason))]

    def _record(self, check: ReadyCheck, state: MatchState, now: float, reason: str | None) -> MatchRecord:
        order = [player for team in check.teams for player in team]
        return MatchRecord(
            id=check.match,
            queue=check.queue,
            teams=check.teams,
            ratings=tuple(tuple(check.tickets[p].rating_of(p) for p in team) for team in check.teams),
            state=state,
            created_at=check.created_at,
            ended_at=now,
            reason=reason,
            waits=tuple(round(check.created_at - check.tickets[p].waiting_since, 3) for p in order),
            explanation=check.explanation or None,
            region=check.region or self._queue_region(check.queue),
            roles=check.roles or None,
        )

    def _queue_region(self, queue: str) -> str | None:
        rules = self.rules.get(queue)
        return rules.region if rules is not None else None
