"""Random request sequences against ``Lobby``, with its invariants checked after every step.

The state machine plays the server. It connects and disconnects sessions, forwards
requests (valid ones and ones the lobby must reject) and ticks the clock past
ready-check deadlines. It also voids freshly offered matches, as the server does when
a session died before ``match_found`` went out. It keeps its own model of the live
sessions and of every offered match, and checks the lobby against it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lobbyd.core import effects as fx
from lobbyd.core.allocation import MatchPhase
from lobbyd.core.expansion import Expansion
from lobbyd.core.hosting import Hosting, HostingSettings
from lobbyd.core.join_ticket import verify
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, MatchState, Place, PlayerRecord, QueueRules, Ticket
from lobbyd.core.penalties import PenaltyLadder
from lobbyd.core.ready_check import CheckState, ReadyCheck
from lobbyd.errors import (
    AlreadyQueued,
    AlreadyReported,
    InMatch,
    InReadyCheck,
    InvalidPartySize,
    InvalidResult,
    MatchOver,
    NotPartyLeader,
    NotQueued,
    QueueLocked,
    RemoteError,
    UnknownMatch,
    UnknownPlayer,
    UnknownQueue,
)
from lobbyd.protocol import messages as m

RATINGS = {"p0": 1500, "p1": 1520, "p2": 1450, "p3": 1600, "p4": 1700, "p5": 1300, "p6": 1480, "p7": 1550}
PLAYERS = tuple(RATINGS)
QUEUES = {
    "duel": QueueRules("duel", team_count=2, team_size=1, window_start=50.0, window_growth=20.0),
    "squad": QueueRules(
        "squad", team_count=2, team_size=2, window_start=150.0, window_growth=50.0, party_sizes=(1, 2)
    ),
    "ffa": QueueRules("ffa", team_count=3, team_size=1, window_start=300.0, window_growth=0.0),
    "roles": QueueRules(
        "roles",
        team_count=2,
        team_size=2,
        window_start=300.0,
        party_sizes=(1, 2),
        roles=("front", "back"),
        autofill_after=25.0,
        latency_steps=Expansion.of((0, 40), (25, 80)),
    ),
}
# What each player sends in join_queue for the "roles" queue: every kind of role list,
# and latencies that share a region under 40 ms only for some pairs.
ROLE_PREFS = {"p0": ("front",), "p1": ("back", "front"), "p2": (), "p3": ("front",), "p4": ("back",)}
LATENCY = {p: {"eu": 10.0 + 15 * i, "us": 70.0 - 10 * i} for i, p in enumerate(PLAYERS)}
READY_TIMEOUT = 10.0
FINISHED_TTL = 30.0
# A warning, then lockouts the time steps below both reach and overrun.
LADDER = PenaltyLadder(lockouts=(0.0, 5.0, 60.0), decay_after=100.0)
SETTINGS = LobbySettings(ready_timeout=READY_TIMEOUT, finished_ttl=FINISHED_TTL, penalties=LADDER)

# Steps cross the ready deadline (10 s) both exactly and by far, and stay below it.
TIME_STEPS = (0.0, 0.5, 3.0, 9.99, 10.0, 25.0, 120.0)
rids = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
# Mostly duel, so that matches form often. The queue "ranked" does not exist.
queue_names = st.sampled_from(["duel", "duel", "duel", "squad", "ffa", "roles", "ranked"])


@dataclass(frozen=True)
class CheckView:
    """What a ready check looked like before a call, to judge how it was cancelled."""

    queue: str
    players: tuple[str, ...]
    accepted: frozenset[str]
    waiting_since: dict[str, float]
    rosters: dict[str, tuple[str, ...]]
    """Each player's ticket's players: the party, or the player alone."""


def snapshot(lobby: Lobby) -> tuple[Any, ...]:
    """Return a comparable copy of every piece of lobby state a request could change."""
    players = {
        pid: (p.session, p.place, p.queue, p.match, p.name, p.rating, p.last_seen, p.skill, p.games, p.wins, p.party)
        for pid, p in lobby.players.items()
    }
    queues = {
        name: {pid: (t.queue, t.rating, t.waiting_since, t.seq, t.priority) for pid, t in tickets.items()}
        for name, tickets in lobby.queues.items()
    }
    checks = {
        match: (c.state, frozenset(c.accepted), c.teams, c.deadline, tuple(c.tickets))
        for match, c in lobby.checks.items()
    }
    hosted: tuple[Any, ...] = ()
    if lobby.hosting is not None:
        hosting = lobby.hosting
        hosted = (
            {match: (h.phase, frozenset(h.bound), h.deadline) for match, h in hosting.matches.items()},
            {sid: (s.session, s.capacity, dict(s.matches)) for sid, s in hosting.pool.servers.items()},
            dict(hosting.ended),
        )
    parties = {pid: (list(party.members), set(party.invited)) for pid, party in lobby.parties.parties.items()}
    return players, queues, checks, dict(lobby.sessions), dict(lobby.finished), hosted, parties


def check_views(lobby: Lobby) -> dict[str, CheckView]:
    return {
        match: CheckView(
            queue=check.queue,
            players=check.players,
            accepted=frozenset(check.accepted),
            waiting_since={pid: t.waiting_since for pid, t in check.tickets.items()},
            rosters={pid: t.players for pid, t in check.tickets.items()},
        )
        for match, check in lobby.checks.items()
    }


def ticket_of(lobby: Lobby, queue: str, player: str) -> Ticket | None:
    """Return the ticket in ``queue`` that ``player`` is on, their own or their party's."""
    for ticket in lobby.queues[queue].values():
        if player in ticket.players:
            return ticket
    return None


def queued_players(tickets: Iterable[Ticket]) -> list[str]:
    return [player for ticket in tickets for player in ticket.players]


def _party_left(send: fx.Send, player: str) -> bool:
    """Return whether ``send`` is a party update saying that ``player`` left by disconnecting."""
    message = send.message
    return isinstance(message, m.Party) and message.reason == "disconnected" and player not in message.members


def all_sends(effects: Iterable[fx.Effect]) -> list[fx.Send]:
    found: list[fx.Send] = []
    for effect in effects:
        if isinstance(effect, fx.Send):
            found.append(effect)
        elif isinstance(effect, fx.OfferMatch | fx.StartMatch | fx.FinishMatch):
            found.extend(effect.sends)
    return found


class LobbyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        counter = itertools.count(1)
        self.lobby = Lobby(QUEUES, SETTINGS, lambda: f"m{next(counter)}")
        self.now = 1_000.0
        self.session_ids = itertools.count(1)
        # The server's view: live sessions, and every session ever issued.
        self.live: dict[str, str] = {}
        self.issued: list[str] = []
        self.store = {pid: PlayerRecord(pid, pid, rating, 0.0, 0.0) for pid, rating in RATINGS.items()}
        # Offered matches not yet started or cancelled, and how each offered match ended.
        self.pending: dict[str, frozenset[str]] = {}
        self.outcomes: dict[str, str] = {}
        # Matches offered by the latest tick, before any request has touched them.
        self.fresh: list[str] = []
        # Players who were ever in a party.
        self.partied: set[str] = set()

    # Helpers.

    def player_of(self, session: str) -> str:
        return self.live[session]

    def draw_live_session(self, data: st.DataObject, *likely: Place) -> str:
        """Draw a live session, three times in four among players in a ``likely`` place.

        The bias keeps valid requests common, while every session can still send
        a request that the lobby must reject.
        """
        preferred = sorted(s for s, pid in self.live.items() if self.lobby.players[pid].place in likely)
        if preferred and data.draw(st.integers(0, 3), label="prefer") > 0:
            return data.draw(st.sampled_from(preferred), label="session")
        return data.draw(st.sampled_from(sorted(self.live)), label="session")

    def request(
        self,
        call: Callable[[], list[fx.Effect]],
        rid: int | None,
        expected_error: type[RemoteError] | None,
    ) -> list[fx.Effect] | None:
        """Run one request. A rejection must be the expected error and change nothing."""
        before = snapshot(self.lobby)
        try:
            effects = call()
        except RemoteError as error:
            assert type(error) is expected_error, f"{type(error).__name__}: {error.message}"
            assert error.rid == rid
            assert error.fatal is False
            assert snapshot(self.lobby) == before
            return None
        assert expected_error is None, f"expected {expected_error.__name__}, got success"
        return effects

    def track(
        self,
        effects: list[fx.Effect],
        before: dict[str, CheckView],
        culprit: str | None = None,
        lost: frozenset[str] = frozenset(),
        departed: bool = False,
    ) -> None:
        """Follow offered matches through ``effects`` and check every ended ready check.

        ``departed`` is true when ``culprit``'s session closed in this call.
        """
        ended: dict[str, str] = {}
        for effect in effects:
            if isinstance(effect, fx.OfferMatch):
                self.track_offer(effect)
            elif isinstance(effect, fx.StartMatch):
                self.track_start(effect)
            elif isinstance(effect, fx.SaveMatch):
                assert effect.record.state is MatchState.CANCELLED
                assert effect.record.reason is not None
                self.end(effect.record.id, "cancelled")
                ended[effect.record.id] = effect.record.reason
            elif isinstance(effect, fx.Close):
                assert effect.reason == "logged_in_elsewhere"
                assert fx.Send(effect.session, m.Kicked(reason="logged_in_elsewhere")) in effects
                del self.live[effect.session]

        for send in all_sends(effects):
            if isinstance(send.message, m.MatchCancelled):
                assert self.outcomes.get(send.message.match) == "cancelled"
                assert send.message.match in ended
        for match, reason in ended.items():
            self.check_cancelled(effects, before[match], match, reason, culprit, lost, departed)

    def track_offer(self, offer: fx.OfferMatch) -> None:
        assert offer.match not in self.pending
        assert offer.match not in self.outcomes
        check = self.lobby.checks[offer.match]
        assert [send.session for send in offer.sends] == [self.lobby.players[t].session for t in check.tickets]
        for send in offer.sends:
            assert isinstance(send.message, m.MatchFound)
            assert send.message.match == offer.match
            assert send.message.players == len(check.tickets)
            assert send.message.accept_ms == round(READY_TIMEOUT * 1000)
        rules = QUEUES[check.queue]
        if rules.roles:
            self.check_roles(check)
        if rules.latency_steps is not None:
            assert check.region is not None
            assert all(check.region in LATENCY[player] for player in check.players)
        self.pending[offer.match] = frozenset(check.players)

    def check_roles(self, check: ReadyCheck) -> None:
        """Every team covers every role once; a role off a player's list only after the autofill wait."""
        rules = QUEUES[check.queue]
        for team in check.teams:
            assert sorted(check.roles[player].role for player in team) == sorted(rules.roles)
        for player, given in check.roles.items():
            ticket = check.tickets[player]
            listed = ticket.prefs_of(ticket.players.index(player))
            if given.autofilled:
                assert rules.autofill_after is not None
                assert self.now - ticket.waiting_since >= rules.autofill_after
            else:
                assert not listed or given.role in listed

    def track_start(self, start: fx.StartMatch) -> None:
        record = start.record
        players = self.pending[record.id]
        self.end(record.id, "started")
        assert record.state is MatchState.STARTED
        assert {p for team in record.teams for p in team} == players
        assert len(start.sends) == len(players)
        for send in start.sends:
            player = self.live[send.session]
            assert isinstance(send.message, m.MatchStart)
            assert player in send.message.teams[send.message.team]
            assert self.lobby.players[player].place is Place.IDLE

    def end(self, match: str, outcome: str) -> None:
        assert match in self.pending, f"match {match} ended but was not pending"
        assert match not in self.outcomes, f"match {match} ended twice"
        del self.pending[match]
        self.outcomes[match] = outcome

    def check_cancelled(
        self,
        effects: list[fx.Effect],
        view: CheckView,
        match: str,
        reason: str,
        culprit: str | None,
        lost: frozenset[str],
        departed: bool = False,
    ) -> None:
        """Check who got match_cancelled and who was requeued after ``match`` was cancelled."""
        sends = all_sends(effects)
        for pid in view.players:
            player = self.lobby.players[pid]
            ticket = ticket_of(self.lobby, view.queue, pid)
            if player.place is Place.READY_CHECK and player.match != match:
                # A tick may requeue a player and match them again at once.
                assert player.match is not None
                ticket = self.lobby.checks[player.match].tickets[pid]

            # Who goes back: players who accepted (never the culprit), or everyone reachable on void.
            if reason == "undeliverable":
                expect_back = all(
                    q not in lost and self.lobby.players[q].session is not None for q in view.rosters[pid]
                )
            else:
                # A ticket goes back whole: every player on it accepted, is connected,
                # and none caused the cancel.
                expect_back = all(
                    q in view.accepted and q != culprit and self.lobby.players[q].session is not None
                    for q in view.rosters[pid]
                )
            assert (ticket is not None) == expect_back, (
                f"{pid} requeued={ticket is not None} reason={reason} culprit={culprit} roster={view.rosters[pid]}"
                f" accepted={sorted(view.accepted)}"
            )
            if ticket is not None:
                assert ticket.priority is True
                assert ticket.waiting_since == view.waiting_since[pid]

            # Who gets match_cancelled: nobody on void, and on a cancellation everyone
            # still connected except a player who disconnected.
            notices = [
                s.message
                for s in sends
                if isinstance(s.message, m.MatchCancelled)
                and s.message.match == match
                and self.lobby.sessions.get(s.session) == pid
            ]
            if reason == "undeliverable":
                # Nobody heard of the match. Only the reachable members of a party
                # that cannot go back whole learn that its ticket is gone.
                for send in sends:
                    assert send.message == m.LeftQueue(queue=view.queue, reason="party_changed"), send
                    assert len(view.rosters[self.lobby.sessions[send.session]]) > 1
            elif player.session is None or (pid == culprit and (reason == "disconnected" or departed)):
                assert notices == []
            else:
                assert len(notices) == 1, f"{pid} got {len(notices)} match_cancelled"
                assert notices[0].reason == reason
                assert notices[0].requeued is expect_back
                # Only who declined, or who let the check expire, is penalised.
                dodged = (reason == "declined" and pid == culprit) or (reason == "expired" and pid not in view.accepted)
                assert (notices[0].penalty_level is not None) is dodged, f"{pid} penalty"
                if dodged:
                    assert notices[0].penalty_level == player.penalty_level
                    assert player.penalty_since == self.now

    # Sessions.

    @initialize(players=st.lists(st.sampled_from(PLAYERS), min_size=2, max_size=len(PLAYERS), unique=True))
    def connect_some(self, players: list[str]) -> None:
        for player in players:
            self.connect(player)

    @rule(player=st.sampled_from(PLAYERS))
    def connect(self, player: str) -> None:
        session = f"s{next(self.session_ids)}"
        known = self.lobby.players.get(player)
        old = known.session if known else None
        in_match = known is not None and known.place is Place.IN_MATCH
        before = check_views(self.lobby)

        effects = self.lobby.connect(session, self.store[player], player, None, self.now)
        self.issued.append(session)
        self.live[session] = player
        self.track(effects, before, culprit=player, departed=True)
        self.save_players(effects)
        self.fresh = []

        assert self.lobby.players[player].session == session
        assert self.lobby.players[player].place is (Place.IN_MATCH if in_match else Place.IDLE)
        if old is not None:
            assert old not in self.live
            assert old not in self.lobby.sessions

    @precondition(lambda self: self.issued)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(self.issued), label="session")
        self.drop(session)
        self.fresh = []

    @rule()
    def disconnect_everyone(self) -> None:
        self.drop_all()

    def drop(self, session: str) -> None:
        before = check_views(self.lobby)
        player = self.live.get(session)
        effects = self.lobby.disconnect(session, self.now)
        self.save_players(effects)
        if player is None:
            assert effects == []
            return

        del self.live[session]
        self.track(effects, before, culprit=player, departed=True)
        assert [s for s in all_sends(effects) if s.session == session] == []
        assert self.lobby.players[player].session is None

    def drop_all(self) -> None:
        for session in sorted(self.live):
            self.drop(session)
        self.fresh = []
        assert all(not tickets for tickets in self.lobby.queues.values())
        assert self.lobby.checks == {}
        assert self.pending == {}
        assert self.lobby.sessions == {}

    def save_players(self, effects: list[fx.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, fx.SavePlayer):
                self.store[effect.record.id] = effect.record

    # Queue requests.

    @precondition(lambda self: self.live)
    @rule(data=st.data(), queue=queue_names, rid=rids)
    def join_queue(self, data: st.DataObject, queue: str, rid: int | None) -> None:
        self.join_as(self.draw_live_session(data, Place.IDLE), queue, rid)

    @rule(queue=st.sampled_from(["duel", "duel", "squad", "ffa", "roles"]))
    def join_every_idle(self, queue: str) -> None:
        """Send join_queue from every idle player at once, as a burst of clients would."""
        for session, pid in sorted(self.live.items()):
            if self.lobby.players[pid].place is Place.IDLE:
                self.join_as(session, queue, None)

    def join_as(self, session: str, queue: str, rid: int | None) -> None:
        player = self.lobby.players[self.player_of(session)]
        expected: type[RemoteError] | None = None
        if queue not in QUEUES:
            expected = UnknownQueue
        elif player.place is Place.QUEUED:
            expected = AlreadyQueued
        elif player.place is Place.READY_CHECK:
            expected = InReadyCheck
        elif player.place is Place.IN_MATCH:
            expected = InMatch
        elif player.locked_until > self.now:
            expected = QueueLocked
        elif player.party is not None:
            expected = self.expected_party_join(player.id, queue)
        elif 1 not in QUEUES[queue].party_sizes:
            expected = InvalidPartySize

        prefs = ROLE_PREFS.get(player.id, ()) if queue == "roles" else ()
        latency = LATENCY[player.id] if queue == "roles" else None
        effects = self.request(
            lambda: self.lobby.join_queue(session, queue, self.now, rid, roles=prefs, latency=latency), rid, expected
        )
        self.fresh = []
        if effects is None:
            return
        roster = self.lobby.parties.parties[player.party].members if player.party else [player.id]
        expected_sends = [
            fx.Send(session_of, m.Queued(queue=queue, rid=rid if pid == player.id else None))
            for pid in roster
            if (session_of := self.lobby.players[pid].session) is not None
        ]
        assert all_sends(effects) == expected_sends
        for pid in roster:
            assert self.lobby.players[pid].place is Place.QUEUED
        ticket = self.lobby.queues[queue][player.id]
        assert ticket.waiting_since == self.now
        assert list(ticket.players) == list(roster)

    def expected_party_join(self, player: str, queue: str) -> type[RemoteError] | None:
        party = self.lobby.parties.parties[self.lobby.players[player].party or ""]
        members = [self.lobby.players[pid] for pid in party.members]
        if party.leader != player:
            return NotPartyLeader
        if len(members) not in QUEUES[queue].party_sizes:
            return InvalidPartySize
        if any(member.place is Place.IN_MATCH for member in members):
            return InMatch
        if any(member.locked_until > self.now for member in members):
            return QueueLocked
        return None

    # Parties.

    @precondition(lambda self: len(self.live) >= 2)
    @rule(data=st.data())
    def form_party(self, data: st.DataObject) -> None:
        """Make an idle player lead a party, or grow theirs, with another idle player."""
        idle = sorted(
            pid
            for pid in self.live.values()
            if self.lobby.players[pid].place is Place.IDLE and self.lobby.players[pid].party is None
        )
        if len(idle) < 2:
            return
        leader, joiner = data.draw(st.lists(st.sampled_from(idle), min_size=2, max_size=2, unique=True))
        leader_session = self.lobby.players[leader].session
        joiner_session = self.lobby.players[joiner].session
        assert leader_session is not None and joiner_session is not None
        before = check_views(self.lobby)

        self.partied.update((leader, joiner))
        self.lobby.parties.create(leader_session, self.now)
        party = self.lobby.players[leader].party
        assert party is not None
        self.lobby.parties.invite(leader_session, joiner, self.now)
        effects = self.lobby.parties.join(joiner_session, party, self.now)
        self.track(effects, before, culprit=leader)
        self.fresh = []

        assert self.lobby.parties.parties[party].members == [leader, joiner]

    @precondition(lambda self: self.lobby.parties.parties)
    @rule(data=st.data(), kick=st.booleans())
    def leave_party(self, data: st.DataObject, kick: bool) -> None:
        """A member leaves, or the leader kicks them: the party's ticket must end."""
        members = sorted(pid for party in self.lobby.parties.parties.values() for pid in party.members)
        leaver = data.draw(st.sampled_from(members), label="leaver")
        party = self.lobby.parties.parties[self.lobby.players[leaver].party or ""]
        roster = list(party.members)
        leader = self.lobby.players[party.leader]
        was_busy = leader.place in (Place.QUEUED, Place.READY_CHECK)
        before = check_views(self.lobby)
        assert leader.session is not None

        if kick and leaver != party.leader:
            effects = self.lobby.parties.kick(leader.session, leaver, self.now)
        else:
            session = self.lobby.players[leaver].session
            assert session is not None
            effects = self.lobby.parties.leave(session, self.now)
        self.track(effects, before, culprit=leaver)
        self.fresh = []

        assert self.lobby.players[leaver].party is None
        if was_busy:
            for pid in roster:
                assert self.lobby.players[pid].place in (Place.IDLE, Place.IN_MATCH), f"{pid} kept its ticket"

    @precondition(lambda self: self.live)
    @rule(data=st.data(), queue=st.sampled_from([None, *QUEUES, "ranked"]), rid=rids)
    def leave_queue(self, data: st.DataObject, queue: str | None, rid: int | None) -> None:
        session = self.draw_live_session(data, Place.QUEUED, Place.READY_CHECK)
        player = self.lobby.players[self.player_of(session)]
        place = player.place
        current = player.queue
        if place is Place.READY_CHECK:
            assert player.match is not None
            current = self.lobby.checks[player.match].queue
        rejected = current is None or (queue is not None and queue != current)
        expected = NotQueued if rejected else None
        before = check_views(self.lobby)

        effects = self.request(lambda: self.lobby.leave_queue(session, queue, self.now, rid), rid, expected)
        self.fresh = []
        if effects is None:
            return
        self.track(effects, before, culprit=player.id)

        # Exactly one outcome: left_queue, preceded by a declined match when in a check.
        mine = [s.message for s in all_sends(effects) if s.session == session]
        assert mine[-1] == m.LeftQueue(queue=current, rid=rid)
        cancelled = [msg for msg in mine if isinstance(msg, m.MatchCancelled)]
        if place is Place.READY_CHECK:
            assert len(cancelled) == 1
            assert (cancelled[0].reason, cancelled[0].requeued, cancelled[0].rid) == ("declined", False, None)
            assert cancelled[0].penalty_level == player.penalty_level
        else:
            assert cancelled == []
        assert len(mine) == len(cancelled) + 1
        assert player.place is Place.IDLE

    # Accept and decline.

    def draw_match(self, data: st.DataObject, player: str) -> str:
        """Draw the player's own match, a finished or foreign one, or an unknown id."""
        own = self.lobby.players[player].match
        choices = sorted({*self.outcomes, *self.lobby.checks, "m-unknown"})
        if own is not None:
            return data.draw(st.sampled_from([own, own, *choices]), label="match")
        return data.draw(st.sampled_from(choices), label="match")

    @precondition(lambda self: self.live)
    @rule(data=st.data(), rid=rids)
    def accept(self, data: st.DataObject, rid: int | None) -> None:
        session = self.draw_live_session(data, Place.READY_CHECK)
        self.accept_as(session, self.draw_match(data, self.player_of(session)), rid)

    @precondition(lambda self: self.lobby.checks)
    @rule(data=st.data())
    def accept_several(self, data: st.DataObject) -> None:
        """Accept one ready check from some of its players, some of them twice."""
        match = data.draw(st.sampled_from(sorted(self.lobby.checks)), label="match")
        players = self.lobby.checks[match].players
        answers = data.draw(st.lists(st.sampled_from(players), max_size=2 * len(players)), label="players")
        for pid in answers:
            session = self.lobby.players[pid].session
            assert session is not None
            self.accept_as(session, match, None)

    def accept_as(self, session: str, match: str, rid: int | None) -> None:
        player = self.lobby.players[self.player_of(session)]
        valid = player.place is Place.READY_CHECK and player.match == match
        already = valid and player.id in self.lobby.checks[match].accepted
        finished = self.lobby.finished.get(match)
        # A repeated accept after the start is answered again and changes nothing.
        repeat = finished is not None and finished[0] is CheckState.STARTED and player.id in finished[2]

        effects = self.request(
            lambda: self.lobby.accept(session, match, self.now, rid), rid, None if valid or repeat else UnknownMatch
        )
        self.fresh = []
        if effects is None:
            return
        if repeat:
            assert effects == [fx.Send(session, m.Accepted(match=match, rid=rid))]
            return
        self.track(effects, {})
        assert effects[0] == fx.Send(session, m.Accepted(match=match, rid=rid))
        # The last accept starts the match, asks a game server for it, or finds none.
        starts = [e for e in effects if isinstance(e, fx.StartMatch)]
        allocations = [s for s in all_sends(effects) if isinstance(s.message, m.Allocate)]
        no_server = [e for e in effects if isinstance(e, fx.SaveMatch) and e.record.reason == "no_server"]
        ends = len(starts) + len(allocations) + len(no_server)
        if already:
            assert ends == 0
        started = match not in self.lobby.checks
        assert ends == (1 if started else 0)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), rid=rids)
    def decline(self, data: st.DataObject, rid: int | None) -> None:
        session = self.draw_live_session(data, Place.READY_CHECK)
        player = self.lobby.players[self.player_of(session)]
        match = self.draw_match(data, player.id)
        valid = player.place is Place.READY_CHECK and player.match == match
        before = check_views(self.lobby)

        effects = self.request(
            lambda: self.lobby.decline(session, match, self.now, rid), rid, None if valid else UnknownMatch
        )
        self.fresh = []
        if effects is None:
            return
        self.track(effects, before, culprit=player.id)
        assert self.outcomes[match] == "cancelled"
        mine = [e.message for e in all_sends(effects) if e.session == session]
        assert len(mine) == 1
        assert isinstance(mine[0], m.MatchCancelled)
        assert (mine[0].reason, mine[0].requeued, mine[0].rid) == ("declined", False, rid)

    # Time.

    @rule(step=st.sampled_from(TIME_STEPS))
    def tick(self, step: float) -> None:
        self.now += step
        overdue = {match for match, check in self.lobby.checks.items() if check.deadline <= self.now}
        before = check_views(self.lobby)

        effects = self.lobby.tick(self.now)
        self.track(effects, before)
        for match in overdue:
            assert self.outcomes[match] == "cancelled"
            assert self.lobby.finished[match][:2] == (CheckState.CANCELLED, self.now)
        assert all(check.deadline > self.now for check in self.lobby.checks.values())
        self.fresh = [e.match for e in effects if isinstance(e, fx.OfferMatch)]

    @precondition(lambda self: self.fresh)
    @rule(data=st.data(), disconnect_first=st.booleans())
    def void_fresh_match(self, data: st.DataObject, disconnect_first: bool) -> None:
        match = data.draw(st.sampled_from(self.fresh), label="match")
        self.fresh.remove(match)
        check = self.lobby.checks[match]
        player = data.draw(st.sampled_from(check.players), label="unreachable")
        session = self.lobby.players[player].session
        assert session is not None

        # The server voids the offer when a session is dead. The lobby may or may not
        # have processed that session's disconnect yet.
        if disconnect_first:
            self.drop(session)
            assert self.lobby.void_match(match, [player], self.now) == []
            return
        before = check_views(self.lobby)
        effects = self.lobby.void_match(match, [player], self.now)
        self.track(effects, before, lost=frozenset([player]))
        assert self.outcomes[match] == "cancelled"
        assert self.lobby.finished[match][:2] == (CheckState.CANCELLED, self.now)

        pending_disconnect = self.lobby.disconnect(session, self.now)
        del self.live[session]
        self.save_players(pending_disconnect)
        # The void already settled the match, so the disconnect sends nothing about it.
        # A party member's disconnect still sends the rest of the party a party update.
        assert [s for s in all_sends(pending_disconnect) if not _party_left(s, player)] == []
        assert [e for e in pending_disconnect if isinstance(e, fx.SaveMatch)] == []

    @rule(player_ttl=st.sampled_from([0.0, 5.0, 60.0]))
    def forget(self, player_ttl: float) -> None:
        online = {pid for pid, p in self.lobby.players.items() if p.session is not None}
        count = self.remembered()

        dropped = self.lobby.forget(self.now, player_ttl)
        assert dropped == count - self.remembered()
        assert online <= set(self.lobby.players)
        for _, finished_at, _ in self.lobby.finished.values():
            assert finished_at >= self.now - FINISHED_TTL
        # Players of a hosted match stay, because its result may still rate them.
        rostered = self.lobby.hosting.rostered() if self.lobby.hosting is not None else set()
        for p in self.lobby.players.values():
            assert p.session is not None or p.last_seen >= self.now - player_ttl or p.id in rostered

    def remembered(self) -> int:
        """Return how many records ``forget`` could drop."""
        ended = len(self.lobby.hosting.ended) if self.lobby.hosting is not None else 0
        return len(self.lobby.players) + len(self.lobby.finished) + ended

    # Invariants.

    @invariant()
    def places_match_records(self) -> None:
        hosted = self.lobby.hosting.matches if self.lobby.hosting is not None else {}
        for pid, player in self.lobby.players.items():
            if player.place is Place.IDLE:
                assert player.queue is None
                assert player.match is None
            elif player.place is Place.QUEUED:
                assert player.match is None
                assert player.queue in self.lobby.queues
                assert pid in queued_players(self.lobby.queues[player.queue].values())
            elif player.place is Place.IN_MATCH:
                assert player.queue is None
                assert player.match in hosted
                assert pid in hosted[player.match].bound
            else:
                assert player.queue is None
                assert player.match in self.lobby.checks
                assert pid in self.lobby.checks[player.match].tickets
            # One player in one place: a queue, a ready check, or a hosted match.
            queued_in = [
                name
                for name, tickets in self.lobby.queues.items()
                for queued in queued_players(tickets.values())
                if queued == pid
            ]
            checked_in = [match for match, check in self.lobby.checks.items() if pid in check.tickets]
            playing_in = [match for match, match_state in hosted.items() if pid in match_state.bound]
            assert len(queued_in) + len(checked_in) + len(playing_in) == (0 if player.place is Place.IDLE else 1)

    @invariant()
    def no_ticket_during_lockout(self) -> None:
        for tickets in self.lobby.queues.values():
            for ticket in tickets.values():
                for pid in ticket.players:
                    player = self.lobby.players[pid]
                    assert ticket.waiting_since >= player.locked_until, f"{pid} queued during a lockout"

    @invariant()
    def tickets_belong_to_queued_players(self) -> None:
        for name, tickets in self.lobby.queues.items():
            for key, ticket in tickets.items():
                assert ticket.player == key
                assert ticket.queue == name
                for pid in ticket.players:
                    player = self.lobby.players[pid]
                    assert player.session is not None, f"ticket of disconnected {pid}"
                    assert player.place is Place.QUEUED
                    assert player.queue == name

    @invariant()
    def parties_hold_together(self) -> None:
        """Party records agree, and a ticket or ready check holds a party exactly as it is now."""
        for party_id, party in self.lobby.parties.parties.items():
            assert party.members, f"empty party {party_id}"
            for pid in party.members:
                assert self.lobby.players[pid].party == party_id
                assert self.lobby.players[pid].session is not None, f"offline {pid} in {party_id}"
        for pid, player in self.lobby.players.items():
            if player.party is not None:
                assert pid in self.lobby.parties.parties[player.party].members
        for tickets in self.lobby.queues.values():
            for ticket in tickets.values():
                if ticket.members:
                    party = self.lobby.players[ticket.player].party
                    assert party is not None
                    assert list(ticket.members) == self.lobby.parties.parties[party].members
        for check in self.lobby.checks.values():
            for ticket in check.tickets.values():
                if ticket.members:
                    party = self.lobby.players[ticket.player].party
                    assert party is not None
                    assert list(ticket.members) == self.lobby.parties.parties[party].members
                    teams = [team for team in check.teams if ticket.player in team]
                    assert set(ticket.members) <= set(teams[0]), "a party was split across teams"

    @invariant()
    def checks_hold_connected_players(self) -> None:
        seen: set[str] = set()
        for match, check in self.lobby.checks.items():
            assert check.state is CheckState.PENDING
            assert set(check.players) == set(check.tickets)
            assert check.accepted <= set(check.tickets)
            assert len(check.players) == QUEUES[check.queue].match_size
            for pid in check.players:
                player = self.lobby.players[pid]
                assert player.session is not None, f"check {match} holds disconnected {pid}"
                assert player.place is Place.READY_CHECK
                assert player.match == match
                assert pid not in seen, f"{pid} is in two ready checks"
                seen.add(pid)

    @invariant()
    def sessions_agree(self) -> None:
        assert self.lobby.sessions == self.live
        for session, pid in self.lobby.sessions.items():
            assert self.lobby.players[pid].session == session
        for pid, player in self.lobby.players.items():
            if player.session is not None:
                assert self.lobby.sessions[player.session] == pid

    @invariant()
    def offers_end_once(self) -> None:
        assert set(self.pending) == set(self.lobby.checks)
        assert not set(self.pending) & set(self.outcomes)

    @invariant()
    def empty_when_everyone_left(self) -> None:
        if not self.live:
            assert all(not tickets for tickets in self.lobby.queues.values())
            assert self.lobby.checks == {}
            assert self.pending == {}

    def teardown(self) -> None:
        self.drop_all()


LobbyMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLobbyInvariants = LobbyMachine.TestCase


# The same machine with game servers: matches are allocated, run, report and end.

SERVER_IDS = ("gs1", "gs2")
TICKET_KEY = b"k" * 32
HOSTING = HostingSettings(ticket_key=TICKET_KEY, allocate_timeout=5.0, ticket_ttl=60.0, match_timeout=300.0)
# Reasons a hosted match is saved with when it ends without a result.
REQUEUE_REASONS = ("no_server", "allocation_failed")
ABANDON_REASONS = ("server_lost", "timed_out")


class HostedLobbyMachine(LobbyMachine):
    """``LobbyMachine`` plus registered game servers, as the server drives them.

    Besides the lobby's rules it registers and loses servers, and sends their
    requests (valid ones and ones the lobby must reject): acknowledge, refuse,
    report a result and release a player. Its model tracks each hosted match from
    allocation to its end.
    """

    def __init__(self) -> None:
        super().__init__()
        counter = itertools.count(1)
        self.lobby = Lobby(QUEUES, SETTINGS, lambda: f"m{next(counter)}", HOSTING)
        self.server_ids = itertools.count(1)
        self.servers: dict[str, str] = {}
        self.allocating: dict[str, frozenset[str]] = {}
        self.running: dict[str, frozenset[str]] = {}

    @property
    def hosting(self) -> Hosting:
        assert self.lobby.hosting is not None
        return self.lobby.hosting

    # Following effects.

    def track(
        self,
        effects: list[fx.Effect],
        before: dict[str, CheckView],
        culprit: str | None = None,
        lost: frozenset[str] = frozenset(),
        departed: bool = False,
    ) -> None:
        """Follow hosted matches through ``effects``; hand the rest to the lobby's tracking."""
        rest: list[fx.Effect] = []
        for effect in effects:
            if not self.track_hosted(effect):
                rest.append(effect)
        super().track(rest, before, culprit, lost, departed)

    def track_hosted(self, effect: fx.Effect) -> bool:
        """Check and follow one effect of a hosted match; return False when it is not one."""
        if isinstance(effect, fx.Send):
            return self.track_hosted_send(effect)
        if isinstance(effect, fx.Close) and effect.session not in self.live:
            # A game server registered again under the same id: its old session goes.
            assert effect.reason == "logged_in_elsewhere"
            return True
        if isinstance(effect, fx.StartMatch):
            self.track_acknowledged(effect)
            return True
        if isinstance(effect, fx.FinishMatch):
            self.track_finished(effect)
            return True
        if isinstance(effect, fx.SaveMatch) and effect.record.reason in REQUEUE_REASONS:
            self.track_requeued(effect.record.id, effect.record.reason)
            return True
        if isinstance(effect, fx.SaveMatch) and effect.record.reason in ABANDON_REASONS:
            assert effect.record.state is MatchState.ABANDONED
            del self.running[effect.record.id]
            self.outcomes[effect.record.id] = "abandoned"
            return True
        return False

    def track_hosted_send(self, send: fx.Send) -> bool:
        message = send.message
        if isinstance(message, m.Allocate):
            players = self.pending.pop(message.match)
            self.allocating[message.match] = players
            assert send.session in self.servers.values()
            for entry in message.players:
                assert verify(TICKET_KEY, entry.ticket, self.now).match == message.match
                assert self.lobby.players[entry.player].place is Place.IN_MATCH
            return True
        if isinstance(message, m.MatchCancelled) and message.reason in REQUEUE_REASONS:
            # A player whose party changed while the match waited for its server stays out:
            # their old ticket no longer matches their party.
            assert message.requeued is True or self.live[send.session] in self.partied
            return True
        return isinstance(message, m.MatchEnded | m.RatingChanged | m.Deallocate | m.Registered)

    def track_requeued(self, match: str, reason: str) -> None:
        """Check that a match that got no server sent its connected players back with priority."""
        players = self.pending.pop(match, None) if reason == "no_server" else self.allocating.pop(match)
        assert players is not None
        self.outcomes[match] = "cancelled"
        for pid in players:
            player = self.lobby.players[pid]
            if player.session is None:
                assert player.place is Place.IDLE
                continue
            # A later tick in the same step may already have matched the player again.
            tickets = [t for name in self.lobby.queues if (t := ticket_of(self.lobby, name, pid)) is not None]
            # A party ticket whose party changed during the allocation stays out.
            assert player.place is not Place.IDLE or pid in self.partied, f"{pid} not requeued"
            assert all(ticket.priority for ticket in tickets)

    def track_acknowledged(self, start: fx.StartMatch) -> None:
        match = start.record.id
        players = self.allocating.pop(match)
        self.running[match] = players
        assert start.record.server is not None
        for send in start.sends:
            assert isinstance(send.message, m.MatchStart)
            assert send.message.server == start.record.server
            assert send.message.ticket is not None
            player = self.live[send.session]
            assert verify(TICKET_KEY, send.message.ticket, self.now).player == player
            assert self.lobby.players[player].place is Place.IN_MATCH

    def track_finished(self, finish: fx.FinishMatch) -> None:
        match = finish.record.id
        players = self.running.pop(match)
        self.outcomes[match] = "finished"
        assert finish.record.state is MatchState.FINISHED
        assert {record.id for record in finish.players} == players
        for record in finish.players:
            assert record.mu is not None
            assert self.lobby.players[record.id].games == record.games

    def expected_hosted_error(self, server: str, match: str) -> type[RemoteError] | None:
        """Return the error a request of ``server`` about ``match`` must get, None if none."""
        hosted = self.hosting.matches.get(match)
        if hosted is not None and hosted.server == server:
            return None
        ended = self.hosting.ended.get(match)
        if ended is not None and ended[2] == server:
            return AlreadyReported if ended[0] is MatchPhase.FINISHED else MatchOver
        return UnknownMatch

    def draw_server(self, data: st.DataObject) -> tuple[str, str]:
        server = data.draw(st.sampled_from(sorted(self.servers)), label="server")
        return server, self.servers[server]

    def draw_hosted_match(self, data: st.DataObject, server: str) -> str:
        """Draw, three times in four, a live match of ``server``; else any match id at all."""
        own = sorted(match for match, hosted in self.hosting.matches.items() if hosted.server == server)
        if own and data.draw(st.integers(0, 3), label="prefer") > 0:
            return data.draw(st.sampled_from(own), label="match")
        choices = sorted({*self.hosting.matches, *self.hosting.ended, *self.outcomes, "m-unknown"})
        return data.draw(st.sampled_from(choices), label="match")

    @initialize()
    def register_first_server(self) -> None:
        self.register_server("gs1", 2, ("duel", "squad", "ffa"))

    @precondition(lambda self: self.lobby.checks)
    @rule(data=st.data())
    def accept_everyone(self, data: st.DataObject) -> None:
        """Accept one ready check from all its players, so that allocations are common."""
        match = data.draw(st.sampled_from(sorted(self.lobby.checks)), label="match")
        for pid in self.lobby.checks[match].players:
            session = self.lobby.players[pid].session
            assert session is not None
            self.accept_as(session, match, None)

    @rule()
    def play_duel(self) -> None:
        """Queue two idle players for a duel, form the match and accept it from both."""
        idle = sorted(s for s, pid in self.live.items() if self.lobby.players[pid].place is Place.IDLE)
        for session in idle[:2]:
            self.join_as(session, "duel", None)
        self.tick(0.0)
        for match in sorted(self.lobby.checks):
            for pid in self.lobby.checks[match].players if match in self.lobby.checks else ():
                session = self.lobby.players[pid].session
                assert session is not None
                self.accept_as(session, match, None)

    # Game servers.

    @rule(
        server=st.sampled_from(SERVER_IDS),
        capacity=st.integers(1, 2),
        queues=st.sampled_from([("duel",), ("duel", "squad", "ffa"), ("duel", "ranked")]),
    )
    def register_server(self, server: str, capacity: int, queues: tuple[str, ...]) -> None:
        """Register a game server; a second one under the same id replaces the first."""
        session = f"g{next(self.server_ids)}"
        address = f"{server}:7777"
        message = m.Register(v=1, server=server, secret="s", address=address, capacity=capacity, queues=list(queues))
        expected = UnknownQueue if "ranked" in queues else None
        before = check_views(self.lobby)

        effects = self.request(lambda: self.hosting.register(session, message, self.now), None, expected)
        self.fresh = []
        if effects is None:
            return
        old = self.servers.get(server)
        if old is not None:
            assert fx.Close(old, "logged_in_elsewhere") in effects
        self.servers[server] = session
        self.track(effects, before)
        assert self.hosting.pool.servers[server].session == session

    @precondition(lambda self: self.servers)
    @rule(data=st.data())
    def lose_server(self, data: st.DataObject) -> None:
        server, session = self.draw_server(data)
        del self.servers[server]
        held = set(self.hosting.pool.servers[server].matches)

        effects = self.lobby.disconnect(session, self.now)
        self.fresh = []
        self.track(effects, {})
        assert server not in self.hosting.pool.servers
        assert not held & set(self.hosting.matches)

    @precondition(lambda self: self.servers)
    @rule(data=st.data(), rid=rids)
    def acknowledge(self, data: st.DataObject, rid: int | None) -> None:
        server, session = self.draw_server(data)
        match = self.draw_hosted_match(data, server)
        expected = self.expected_hosted_error(server, match)
        repeat = expected is None and self.hosting.matches[match].phase is MatchPhase.RUNNING

        effects = self.request(lambda: self.hosting.acknowledge(session, match, self.now, rid), rid, expected)
        self.fresh = []
        if effects is None:
            return
        if repeat:
            assert effects == []
            return
        self.track(effects, {})
        assert match in self.running

    @precondition(lambda self: self.servers)
    @rule(data=st.data(), rid=rids)
    def refuse(self, data: st.DataObject, rid: int | None) -> None:
        server, session = self.draw_server(data)
        match = self.draw_hosted_match(data, server)
        expected = self.expected_hosted_error(server, match)
        if expected is None and self.hosting.matches[match].phase is MatchPhase.RUNNING:
            expected = MatchOver

        effects = self.request(lambda: self.hosting.refuse(session, match, "busy", self.now, rid), rid, expected)
        self.fresh = []
        if effects is None:
            return
        self.track(effects, {})
        assert self.outcomes[match] == "cancelled"

    @precondition(lambda self: self.servers)
    @rule(data=st.data(), winner=st.integers(0, 3), rid=rids)
    def report(self, data: st.DataObject, winner: int, rid: int | None) -> None:
        server, session = self.draw_server(data)
        match = self.draw_hosted_match(data, server)
        expected = self.expected_hosted_error(server, match)
        if expected is None:
            hosted = self.hosting.matches[match]
            if hosted.phase is MatchPhase.ALLOCATING:
                expected = MatchOver
            elif winner >= len(hosted.record.teams):
                expected = InvalidResult
        games = {pid: p.games for pid, p in self.lobby.players.items()}
        result = m.MatchResult(match=match, winner=winner, rid=rid)

        effects = self.request(lambda: self.hosting.report(session, result, self.now), rid, expected)
        self.fresh = []
        if effects is None:
            return
        self.track(effects, {})
        assert self.outcomes[match] == "finished"
        assert fx.Send(session, m.ResultApplied(match=match, rid=rid)) in all_sends(effects)
        (finish,) = [e for e in effects if isinstance(e, fx.FinishMatch)]
        for record in finish.players:
            assert self.lobby.players[record.id].games == games[record.id] + 1

    @precondition(lambda self: self.servers)
    @rule(data=st.data(), rid=rids)
    def release(self, data: st.DataObject, rid: int | None) -> None:
        server, session = self.draw_server(data)
        match = self.draw_hosted_match(data, server)
        hosted = self.hosting.matches.get(match)
        own = sorted(p for team in hosted.record.teams for p in team) if hosted is not None else []
        player = data.draw(st.sampled_from(own + own + list(PLAYERS)), label="player")
        expected = self.expected_hosted_error(server, match)
        if expected is None:
            hosted = self.hosting.matches[match]
            if hosted.phase is MatchPhase.ALLOCATING:
                expected = MatchOver
            elif not any(player in team for team in hosted.record.teams):
                expected = UnknownPlayer

        effects = self.request(lambda: self.hosting.release(session, match, player, self.now, rid), rid, expected)
        self.fresh = []
        if effects is None:
            return
        self.track(effects, {})
        assert fx.Send(session, m.PlayerReleased(match=match, player=player, rid=rid)) in effects
        assert player not in self.hosting.matches[match].bound
        # A player released before may be in another match by now, but not in this one.
        assert self.lobby.players[player].match != match

    # Invariants.

    @invariant()
    def hosted_matches_agree(self) -> None:
        assert set(self.allocating) | set(self.running) == set(self.hosting.matches)
        for match, hosted in self.hosting.matches.items():
            expected_phase = MatchPhase.ALLOCATING if match in self.allocating else MatchPhase.RUNNING
            assert hosted.phase is expected_phase
            assert hosted.bound <= {p for team in hosted.record.teams for p in team}
            if hosted.phase is MatchPhase.ALLOCATING:
                assert hosted.bound == self.allocating[match]
            server = self.hosting.pool.servers[hosted.server]
            assert server.session == hosted.session
            assert match in server.matches

    @invariant()
    def servers_within_capacity(self) -> None:
        assert set(self.hosting.pool.by_session) == set(self.servers.values())
        for server in self.hosting.pool:
            assert len(server.matches) <= server.capacity
            assert set(server.matches) <= set(self.hosting.matches)


HostedLobbyMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHostedLobbyInvariants = HostedLobbyMachine.TestCase
