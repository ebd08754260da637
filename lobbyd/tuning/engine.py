"""The offline engine: the daemon's ``Lobby`` driven by a stream of events on a virtual clock.

The engine runs what the daemon's matchmaker loop runs, minus the sockets. It calls
``connect``, ``join_queue``, ``leave_queue``, ``accept``, ``decline`` and
``disconnect`` at each event's time. It calls ``tick`` every ``tick_interval`` seconds
of virtual time, and again at once while a tick left matches to form. Requests due at the
same instant as a tick go first, as the daemon drains its requests before ticking.
Ready checks are answered by a ``Behaviour``: a recording's answers, or a population's
random ones. Nothing waits for real time, so an hour of traffic takes seconds.

Matches start without game servers: a started match releases its players at once,
and ratings never change during a run.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.matchmaker import GroupPolicy, take_groups
from lobbyd.core.model import LobbySettings, MatchRecord, Place, PlayerRecord, QueueRules
from lobbyd.core.ratings import Skill, display_rating
from lobbyd.errors import QueueLocked, RemoteError
from lobbyd.protocol import messages as m
from lobbyd.tuning.events import Accept, Decline, Disconnect, Event, Join, Leave, Member, Offer

# Seconds of virtual time the engine keeps ticking after its last event while
# players still wait, so that widening windows can still match them. A run ends
# earlier once no player waits.
DEFAULT_DRAIN_S: Final = 120.0

# Order of actions due at the same instant: requests before the tick.
_REQUEST: Final = 0

# A reply that is no reply: the player lets the ready check expire.
SILENT: Final = "silent"
# Seconds after a recorded check ended at which a player who had not replied yet
# replies: the reply was on its way, so it arrives late.
LATE_ANSWER_S: Final = 0.001


class Behaviour(Protocol):
    """The players' replies to ready checks and their returns after a cancelled match."""

    def answer(self, player: str, match: str) -> tuple[str, float] | None:
        """Return ("accept" | "decline" | "disconnect" | "silent", delay in seconds), or None when unknown."""
        ...

    def return_after(self, reason: str) -> float | None:
        """Return the seconds until a player of a cancelled match queues again, or None for never."""
        ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    rules: Mapping[str, QueueRules]
    settings: LobbySettings
    tick_interval: float
    """Seconds of virtual time between ticks, the daemon's ``tick_interval_ms`` / 1000."""
    drain_s: float = DEFAULT_DRAIN_S


@dataclass(frozen=True, slots=True)
class PlayerFacts:
    """A player's queue, rating, skill, roles and latencies from their last join."""

    queue: str
    rating: int
    skill: float | None
    roles: tuple[str, ...]
    latency: Mapping[str, float]
    first_join: float
    """Virtual time of the player's first successful join."""


@dataclass(slots=True)
class Outcome:
    """The matches, cancels, penalties and rejected requests of one run."""

    policy: str
    started: list[MatchRecord] = field(default_factory=list)
    players: dict[str, PlayerFacts] = field(default_factory=dict)
    penalties: collections.Counter[str] = field(default_factory=collections.Counter)
    """Dodge penalties by player."""
    cancelled: collections.Counter[str] = field(default_factory=collections.Counter)
    """Cancelled ready checks by reason."""
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    """Joins and leaves the lobby rejected, by error code."""
    late_answers: int = 0
    """Answers that reached a ready check that had already ended."""
    unscripted_answers: int = 0
    """Ready checks the behaviour had no answer for; the player accepted at once."""
    duration: float = 0.0
    """Virtual seconds from the first event to the end of the run."""


def _join_kwargs(join: Join, rules: QueueRules | None) -> dict[str, Any]:
    """Return the extra ``join_queue`` arguments: role preferences and latencies.

    Roles go only to a queue that assigns roles, which would otherwise refuse them, so
    one recording or population can be replayed against rules with and without roles.
    The leader's latency stands for the whole party, as in the daemon; each member's
    roles go in ``party_roles``.
    """
    if rules is None:
        return {}
    kwargs: dict[str, Any] = {"latency": dict(join.latency) or None}
    if rules.roles:
        party_roles = {member.player: tuple(member.roles) for member in join.members if member.roles}
        kwargs["roles"] = tuple(join.roles)
        kwargs["party_roles"] = party_roles or None
    return kwargs


class Engine:
    """One run of the lobby over a stream of events."""

    def __init__(
        self,
        config: EngineConfig,
        behaviour: Behaviour,
        *,
        policy: GroupPolicy = take_groups,
        policy_name: str = "lobbyd",
        record: Callable[[Event], None] | None = None,
    ) -> None:
        """``record``, when given, receives every request the engine applied, as an event."""
        self.config = config
        self.behaviour = behaviour
        self.policy = policy
        self.record = record
        match_ids = itertools.count(1)
        self.lobby = Lobby(config.rules, config.settings, lambda: f"m{next(match_ids)}")
        self.outcome = Outcome(policy_name)
        self._actions: list[tuple[float, int, int, Callable[[float], None]]] = []
        self._order = itertools.count()
        self._connections = itertools.count(1)
        self._sessions: dict[str, str] = {}
        """Player id to the session the engine opened for them, while connected."""
        self._joins: dict[str, Join] = {}
        """Player id to the join that last queued them: their own, or their party leader's."""
        self._returns: set[tuple[str, str]] = set()
        """(party leader or solo player, match) pairs whose return to the queue is scheduled."""
        self._last_change = 0.0

    # The run.

    def run(self, events: Iterable[Event]) -> Outcome:
        """Apply ``events``, whose times start at 0, tick until no player can be matched, and return the outcome."""
        for event in events:
            self._schedule_event(event)
        now = 0.0
        next_tick = self.config.tick_interval
        while True:
            if self._actions and self._actions[0][0] <= next_tick:
                now, _, _, action = heapq.heappop(self._actions)
                action(now)
                self._last_change = now
                continue
            if not self._actions and self._finished(next_tick):
                break
            now = next_tick
            self._tick(now)
            next_tick += self.config.tick_interval
        self.outcome.duration = round(now, 3)
        return self.outcome

    def _finished(self, now: float) -> bool:
        if self.lobby.checks:
            return False
        waiting = any(len(pool) for pool in self.lobby.queues.values())
        return not waiting or now - self._last_change >= self.config.drain_s

    def _tick(self, now: float) -> None:
        while True:
            effects = self.lobby.tick(now, policy=self.policy)
            if any(isinstance(effect, fx.OfferMatch) for effect in effects):
                self._last_change = now
            self._apply(effects, now)
            if not self.lobby.more_to_match:
                return

    def _at(self, when: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._actions, (when, _REQUEST, next(self._order), action))

    def _schedule_event(self, event: Event) -> None:
        # Offers and answers to them are not replayed as such: the behaviour built
        # from the recording answers the engine's own ready checks.
        if isinstance(event, Join):
            self._at(event.t, functools.partial(self._join, event))
        elif isinstance(event, Leave):
            self._at(event.t, functools.partial(self._leave, event.player))
        elif isinstance(event, Disconnect) and event.match is None:
            self._at(event.t, functools.partial(self._disconnect, event.player))

    # Requests.

    def _join(self, join: Join, now: float, deadline: float | None = None) -> None:
        # A recorded join can come a few milliseconds after the player's decline.
        # Replayed ticks fall at other instants than the daemon's, so the replayed
        # match may not be offered yet. The join waits up to one ready check and two
        # ticks for the player to be idle, and is then tried regardless.
        if deadline is None:
            deadline = now + self.config.settings.ready_timeout + 2 * self.config.tick_interval
        if now < deadline and any(self._busy(player) for player in join.players):
            self._at(now + self.config.tick_interval, functools.partial(self._join, join, deadline=deadline))
            return
        try:
            self._prepare(join, now)
            extra = _join_kwargs(join, self.lobby.rules.get(join.queue))
            effects = self.lobby.join_queue(self._sessions[join.player], join.queue, now, **extra)
        except QueueLocked as exc:
            # A locked-out player tries again when the lockout ends, as a client would.
            retry = now + (exc.retry_after_ms or 0) / 1000
            self._at(retry, functools.partial(self._join, join))
            return
        except RemoteError as exc:
            self.outcome.rejected[exc.code] += 1
            return
        for person in _people(join):
            self._joins[person.player] = join
            known = self.outcome.players.get(person.player)
            first = known.first_join if known is not None else now
            self.outcome.players[person.player] = PlayerFacts(
                join.queue, person.rating, person.skill, tuple(person.roles), person.latency, first
            )
        self._emit(msgspec.structs.replace(join, t=round(now, 6)))
        self._apply(effects, now)

    def _busy(self, player_id: str) -> bool:
        player = self.lobby.players.get(player_id)
        busy = (Place.QUEUED, Place.READY_CHECK)
        return player is not None and player.session is not None and player.place in busy

    def _prepare(self, join: Join, now: float) -> None:
        """Connect every player of ``join`` with the recorded rating and put them in one party."""
        for person in _people(join):
            self._connect(person, now)
        wanted = join.players
        leader = self.lobby.players[join.player]
        parties = self.lobby.parties
        current = parties.parties.get(leader.party) if leader.party is not None else None
        if (current.members if current is not None else [join.player]) == wanted:
            return

        for player in wanted:
            if self.lobby.players[player].party is not None:
                self._apply(parties.leave(self._sessions[player], now), now)
        if len(wanted) == 1:
            return
        leader_session = self._sessions[join.player]
        self._apply(parties.create(leader_session, now), now)
        party = leader.party
        assert party is not None
        for member in wanted[1:]:
            self._apply(parties.invite(leader_session, member, now), now)
            self._apply(parties.join(self._sessions[member], party, now), now)

    def _connect(self, person: Member, now: float) -> None:
        if person.player not in self._sessions:
            session = f"{person.player}#{next(self._connections)}"
            record = PlayerRecord(person.player, person.player, person.rating, now, now, person.mu, person.sigma)
            self._apply(self.lobby.connect(session, record, person.player, None, now), now)
            self._sessions[person.player] = session
        # A returning player keeps their penalties but takes the rating of this join,
        # the way the daemon loads it from the store.
        player = self.lobby.players[person.player]
        if person.mu is not None and person.sigma is not None:
            player.skill = Skill(person.mu, person.sigma)
            player.rating = display_rating(player.skill, self.config.settings.rating_k)
        else:
            player.skill, player.rating = None, person.rating

    def _leave(self, player: str, now: float) -> None:
        session = self._sessions.get(player)
        if session is None:
            self.outcome.rejected["not_connected"] += 1
            return
        try:
            effects = self.lobby.leave_queue(session, None, now)
        except RemoteError as exc:
            self.outcome.rejected[exc.code] += 1
            return
        self._emit(Leave(t=round(now, 6), player=player))
        self._apply(effects, now)

    def _disconnect(self, player: str, now: float, match: str | None = None) -> None:
        """Close the player's session; ``match`` is the ready check this disconnect answers, if any."""
        session = self._sessions.pop(player, None)
        if session is None:
            return
        self._emit(Disconnect(t=round(now, 6), player=player, match=match))
        self._apply(self.lobby.disconnect(session, now), now)

    def _answer(self, player: str, match: str, action: str, now: float) -> None:
        session = self._sessions.get(player)
        if session is None or action == SILENT:
            return
        if action == "disconnect":
            self._disconnect(player, now, match)
            self._return_later(player, match, "disconnected", now)
            return
        try:
            if action == "decline":
                effects = self.lobby.decline(session, match, now)
            else:
                effects = self.lobby.accept(session, match, now)
        except RemoteError:
            self.outcome.late_answers += 1
            return
        event = Decline if action == "decline" else Accept
        self._emit(event(t=round(now, 6), player=player, match=match))
        self._apply(effects, now)

    def _return_later(self, player: str, match: str, reason: str, now: float) -> None:
        """Queue the player's last ticket again after the behaviour's delay, once per ticket and match."""
        join = self._joins.get(player)
        delay = self.behaviour.return_after(reason)
        if join is None or delay is None or (join.player, match) in self._returns:
            return
        self._returns.add((join.player, match))
        self._at(now + delay, functools.partial(self._join, join))

    # Effects.

    def _apply(self, effects: Iterable[fx.Effect], now: float) -> None:
        for effect in effects:
            if isinstance(effect, fx.OfferMatch):
                self._offer(effect, now)
            elif isinstance(effect, fx.StartMatch):
                self.outcome.started.append(effect.record)
            elif isinstance(effect, fx.SaveMatch):
                self.outcome.cancelled[effect.record.reason or "unknown"] += 1
            elif isinstance(effect, fx.Event) and effect.name == "dodge_penalised":
                self.outcome.penalties[str(effect.fields["player"])] += 1
            elif isinstance(effect, fx.Send) and isinstance(effect.message, m.MatchCancelled):
                self._cancelled(effect.session, effect.message, now)

    def _offer(self, offer: fx.OfferMatch, now: float) -> None:
        check = self.lobby.checks[offer.match]
        players = list(check.players)
        self._emit(Offer(t=round(now, 6), match=offer.match, queue=check.queue, players=players))
        for player in players:
            answer = self.behaviour.answer(player, offer.match)
            if answer is None:
                self.outcome.unscripted_answers += 1
                answer = ("accept", 0.0)
            action, delay = answer
            self._at(now + delay, functools.partial(self._answer, player, offer.match, action))

    def _cancelled(self, session: str, message: m.MatchCancelled, now: float) -> None:
        player = self.lobby.sessions.get(session)
        if player is not None and not message.requeued:
            self._return_later(player, message.match, message.reason, now)

    def _emit(self, event: Event) -> None:
        if self.record is not None:
            self.record(event)


def _people(join: Join) -> list[Member]:
    """Return every player of ``join``, the leader first, as members."""
    leader = Member(
        player=join.player,
        rating=join.rating,
        mu=join.mu,
        sigma=join.sigma,
        skill=join.skill,
        roles=join.roles,
        latency=join.latency,
    )
    return [leader, *join.members]


class ScriptedBehaviour:
    """Answers from a recording: each player's answers in offer order, each as long after its offer as recorded.

    An offer the player never answered in the recording (the check ended first, or
    their answer came too late) is answered the same way: with an accept just after
    the recorded check ended, or not at all if it expired. A recording has no returns
    to script, because a player who queued again after a cancel has their own join.
    """

    def __init__(self, events: Iterable[Event]) -> None:
        offers: list[Offer] = []
        answers: dict[tuple[str, str], tuple[str, float]] = {}
        ended: dict[str, float] = {}
        for event in events:
            if isinstance(event, Offer):
                offers.append(event)
            elif isinstance(event, Accept):
                answers[event.player, event.match] = ("accept", event.t)
            elif isinstance(event, Decline) or (isinstance(event, Disconnect) and event.match is not None):
                assert event.match is not None
                answers[event.player, event.match] = (_action(event), event.t)
                ended.setdefault(event.match, event.t)

        self.answers: dict[str, collections.deque[tuple[str, float]]] = collections.defaultdict(collections.deque)
        for offer in offers:
            for player in offer.players:
                action, at = answers.get((player, offer.match), (SILENT, math.inf))
                if action == SILENT and offer.match in ended:
                    action, at = "accept", ended[offer.match] + LATE_ANSWER_S
                self.answers[player].append((action, max(at - offer.t, 0.0)))

    def answer(self, player: str, match: str) -> tuple[str, float] | None:
        queue = self.answers.get(player)
        return queue.popleft() if queue else None

    def return_after(self, reason: str) -> float | None:
        return None


def _action(event: Decline | Disconnect) -> str:
    return "decline" if isinstance(event, Decline) else "disconnect"
