"""Parties: players who queue together as one ticket and always play on one team.

A party has a leader and members, the leader first. The leader invites players by id;
an invited player joins or declines. Any member may leave; the leader may kick a
member or hand leadership to one. When the leader leaves, the next member leads, and
a party whose last member leaves is gone. A disconnect is a leave.

Only the leader sends ``join_queue``, which queues the whole party as one ticket
whose rating is the members' mean. Any member's ``leave_queue`` removes that ticket.
Every change of membership or leadership while the ticket is queued or in a ready
check removes the ticket at once. The members get ``left_queue`` or
``match_cancelled`` with reason ``party_changed``, and a member who left never
appears in a later match of that ticket. A match already started is not affected.

Every change is sent to every member as a ``party`` message with the full roster.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lobbyd.core import effects as fx
from lobbyd.core.model import Place, Player, QueueRules, Ticket
from lobbyd.core.preferences import check_party_roles
from lobbyd.core.ratings import Skill
from lobbyd.core.ready_check import CheckEvent
from lobbyd.errors import (
    AlreadyInParty,
    AlreadyQueued,
    InMatch,
    InReadyCheck,
    NotInParty,
    NotPartyLeader,
    PartyFull,
    QueueLocked,
    UnknownParty,
    UnknownPlayer,
)
from lobbyd.protocol import messages as m

if TYPE_CHECKING:
    from lobbyd.core.lobby import Lobby

PartyRequest = (
    m.CreateParty | m.InviteToParty | m.JoinParty | m.DeclineParty | m.LeaveParty | m.KickFromParty | m.PromoteInParty
)
PARTY_REQUESTS = (
    m.CreateParty, m.InviteToParty, m.JoinParty, m.DeclineParty, m.LeaveParty, m.KickFromParty, m.PromoteInParty,
)


@dataclass(slots=True)
class PartyState:
    """One party: ``members`` in join order with the leader first, and pending invites."""

    id: str
    members: list[str]
    invited: set[str] = field(default_factory=set)

    @property
    def leader(self) -> str:
        return self.members[0]


class Parties:
    """Every party of a lobby, with the reverse index of invites by player."""

    def __init__(self, lobby: Lobby) -> None:
        self.lobby = lobby
        self.parties: dict[str, PartyState] = {}
        self.invites: dict[str, set[str]] = {}
        """Player id to the ids of the parties that invited them."""
        self.touched: set[str] = set()
        """Ids of the parties created, changed or disbanded since the caller last cleared it;
        a cluster leader writes those to shared storage."""
        self._ids = itertools.count(1)

    @property
    def max_size(self) -> int:
        """The largest party any queue takes."""
        return max((max(rules.party_sizes) for rules in self.lobby.rules.values()), default=1)

    # Requests.

    def handle(self, session: str, message: PartyRequest, now: float) -> list[fx.Effect]:
        """Apply one party request of ``session``."""
        if isinstance(message, m.CreateParty):
            return self.create(session, now, message.rid)
        if isinstance(message, m.InviteToParty):
            return self.invite(session, message.player, now, message.rid)
        if isinstance(message, m.JoinParty):
            return self.join(session, message.party, now, message.rid)
        if isinstance(message, m.DeclineParty):
            return self.decline(session, message.party, message.rid)
        if isinstance(message, m.LeaveParty):
            return self.leave(session, now, message.rid)
        if isinstance(message, m.KickFromParty):
            return self.kick(session, message.player, now, message.rid)
        return self.promote(session, message.player, now, message.rid)

    def restore(self, party_id: str, members: list[str], invited: Iterable[str]) -> PartyState:
        """Put back a party a former cluster leader stored; every member must be in the lobby's players.

        Later ids of this lobby come after ``party_id``'s number, so they do not repeat it.
        """
        party = PartyState(party_id, list(members))
        self.parties[party_id] = party
        for member in members:
            self.lobby.players[member].party = party_id
        for invitee in invited:
            party.invited.add(invitee)
            self.invites.setdefault(invitee, set()).add(party_id)
        number = party_id.removeprefix("party")
        if number.isdigit():
            self._ids = itertools.count(max(int(number) + 1, next(self._ids)))
        return party

    def create(self, session: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self.lobby._player_of(session)
        if player.party is not None:
            msg = f"player {player.id!r} is already in party {player.party!r}; leave it first"
            raise AlreadyInParty(msg, rid=rid)
        require_idle(player, rid)

        party = PartyState(f"party{next(self._ids)}", [player.id])
        self.parties[party.id] = party
        self.touched.add(party.id)
        player.party = party.id
        return [*self._announce(party, "created", player.id, rid), _event("party_created", party, player.id)]

    def invite(self, session: str, target: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self.lobby._player_of(session)
        party = self._led_by(player, rid)
        if target in party.members:
            msg = f"player {target!r} is already in party {party.id!r}"
            raise AlreadyInParty(msg, rid=rid)
        invitee = self.lobby.players.get(target)
        if invitee is None or invitee.session is None:
            msg = f"player {target!r} is not online; only connected players can be invited"
            raise UnknownPlayer(msg, rid=rid)
        self._check_room(party, rid)

        party.invited.add(target)
        self.invites.setdefault(target, set()).add(party.id)
        self.touched.add(party.id)
        offer = m.PartyInvite(party=party.id, leader=party.leader, members=list(party.members))
        effects: list[fx.Effect] = [fx.Send(invitee.session, offer)]
        effects.extend(self._announce(party, "invited", player.id, rid))
        effects.append(_event("party_invited", party, target))
        return effects

    def join(self, session: str, party_id: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self.lobby._player_of(session)
        party = self._invited_to(player, party_id, rid)
        if player.party is not None:
            msg = f"player {player.id!r} is already in party {player.party!r}; leave it first"
            raise AlreadyInParty(msg, rid=rid)
        require_idle(player, rid)
        self._check_room(party, rid)

        effects = self._end_ticket(party, now)
        self._forget_invite(party, player.id)
        party.members.append(player.id)
        player.party = party.id
        self.touched.add(party.id)
        effects.extend(self._announce(party, "joined", player.id, rid))
        effects.append(_event("party_joined", party, player.id))
        return effects

    def decline(self, session: str, party_id: str, rid: int | None = None) -> list[fx.Effect]:
        """Decline an invite: the invitee gets ``party_left`` {reason ``invite_declined``}."""
        player = self.lobby._player_of(session)
        party = self._invited_to(player, party_id, rid)

        self._forget_invite(party, player.id)
        effects: list[fx.Effect] = [fx.Send(session, m.PartyLeft(party=party.id, reason="invite_declined", rid=rid))]
        effects.extend(self._announce(party, "invite_declined", None, None))
        return effects

    def leave(self, session: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self.lobby._player_of(session)
        if player.party is None:
            msg = f"player {player.id!r} is not in a party"
            raise NotInParty(msg, rid=rid)
        return self.remove_member(player, "left", now, requester=player.id, rid=rid)

    def kick(self, session: str, target: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self.lobby._player_of(session)
        party = self._led_by(player, rid)
        _require_other_member(party, player.id, target, rid)

        return self.remove_member(self.lobby.players[target], "kicked", now, requester=player.id, rid=rid)

    def promote(self, session: str, target: str, now: float, rid: int | None = None) -> list[fx.Effect]:
        player = self.lobby._player_of(session)
        party = self._led_by(player, rid)
        _require_other_member(party, player.id, target, rid)

        effects = self._end_ticket(party, now)
        party.members.remove(target)
        party.members.insert(0, target)
        self.touched.add(party.id)
        effects.extend(self._announce(party, "promoted", player.id, rid))
        effects.append(_event("party_promoted", party, target))
        return effects

    def join_queue(
        self,
        leader: Player,
        rules: QueueRules,
        now: float,
        rid: int | None,
        roles: tuple[str, ...] = (),
        latency: dict[str, float] | None = None,
        party_roles: Mapping[str, Sequence[str]] | None = None,
    ) -> list[fx.Effect]:
        """Queue the whole party of ``leader`` as one ticket.

        ``roles`` are the leader's checked preferences and ``party_roles`` the other
        members' by id; a member without an entry takes any role. ``latency`` is the
        leader's checked report, which stands for every member.
        """
        assert leader.party is not None
        party = self._led_by(leader, rid)
        members = [self.lobby.players[member] for member in party.members]
        self.lobby._check_party_size(rules, len(members), rid)
        prefs = check_party_roles(rules, leader.id, party.members, roles, party_roles, rid)
        for member in members[1:]:
            _require_member_free(member, rid)
        locked = max(members, key=lambda member: member.locked_until)
        if locked.id != leader.id:
            self._check_member_lockout(locked, now, rid)

        ticket = _party_ticket(members, rules.name, now, next(self.lobby._seq))
        ticket.role_prefs, ticket.latency = prefs, latency
        self.lobby._add_ticket(leader, ticket)
        effects: list[fx.Effect] = []
        for member in members:
            if member.session is not None:
                echo = rid if member is leader else None
                effects.append(fx.Send(member.session, m.Queued(queue=rules.name, rid=echo)))
        fields = {"player": leader.id, "party": party.id, "members": list(party.members), "queue": rules.name}
        effects.append(fx.Event("queue_joined", fields))
        return effects

    # Membership changes the lobby starts.

    def remove_member(
        self, player: Player, reason: str, now: float, *, requester: str | None = None, rid: int | None = None
    ) -> list[fx.Effect]:
        """Take ``player`` out of their party: the party's ticket ends, and everyone hears of it.

        ``player`` gets ``party_left``, the rest the new roster; whichever message goes
        to ``requester`` echoes ``rid``.
        """
        assert player.party is not None
        party = self.parties[player.party]
        effects = self._end_ticket(party, now)
        party.members.remove(player.id)
        player.party = None
        self.touched.add(party.id)
        if player.session is not None and reason != "disconnected":
            echo = rid if requester == player.id else None
            effects.append(fx.Send(player.session, m.PartyLeft(party=party.id, reason=reason, rid=echo)))
        effects.append(_event("party_left", party, player.id, reason=reason))
        if not party.members:
            self._disband(party)
            return effects
        effects.extend(self._announce(party, reason, requester, rid))
        return effects

    def drop_invites(self, player_id: str) -> None:
        """Withdraw every invite of ``player_id``, who went offline."""
        for party_id in self.invites.pop(player_id, set()):
            self.parties[party_id].invited.discard(player_id)
            self.touched.add(party_id)

    # Helpers.

    def _end_ticket(self, party: PartyState, now: float) -> list[fx.Effect]:
        """Remove the party's ticket from its queue or ready check, telling every member why."""
        leader = self.lobby.players[party.leader]
        if leader.place is Place.QUEUED:
            queue = leader.queue
            assert queue is not None
            self.lobby._remove_ticket(leader)
            effects: list[fx.Effect] = []
            for member in (self.lobby.players[member_id] for member_id in party.members):
                if member.session is not None:
                    effects.append(fx.Send(member.session, m.LeftQueue(queue=queue, reason="party_changed")))
            return effects
        if leader.place is Place.READY_CHECK:
            assert leader.match is not None
            check = self.lobby.checks[leader.match]
            return self.lobby._cancel(check, CheckEvent.PARTY_CHANGED, leader.id, now)
        return []

    def _announce(self, party: PartyState, reason: str, requester: str | None, rid: int | None) -> list[fx.Effect]:
        """Send the roster to every connected member; the requester's copy echoes ``rid``."""
        effects: list[fx.Effect] = []
        for member_id in party.members:
            session = self.lobby.players[member_id].session
            if session is None:
                continue
            echo = rid if member_id == requester else None
            roster = m.Party(
                party=party.id,
                leader=party.leader,
                members=list(party.members),
                invited=sorted(party.invited),
                reason=reason,
                rid=echo,
            )
            effects.append(fx.Send(session, roster))
        return effects

    def _led_by(self, player: Player, rid: int | None) -> PartyState:
        if player.party is None:
            msg = f"player {player.id!r} is not in a party"
            raise NotInParty(msg, rid=rid)
        party = self.parties[player.party]
        if party.leader != player.id:
            msg = f"only the leader of party {party.id!r}, {party.leader!r}, may do this"
            raise NotPartyLeader(msg, rid=rid)
        return party

    def _invited_to(self, player: Player, party_id: str, rid: int | None) -> PartyState:
        party = self.parties.get(party_id)
        if party is None or player.id not in party.invited:
            msg = f"party {party_id!r} has no invite for player {player.id!r}"
            raise UnknownParty(msg, rid=rid)
        return party

    def _check_room(self, party: PartyState, rid: int | None) -> None:
        if len(party.members) < self.max_size:
            return
        count = len(party.members)
        members = "1 member" if count == 1 else f"{count} members"
        if self.max_size == 1:
            msg = (
                f"party {party.id!r} has {members} and cannot grow: no queue takes parties of 2 or more "
                "players (each queue's party_sizes setting lists the sizes it takes)"
            )
        else:
            msg = f"party {party.id!r} has {members}, the largest party any queue takes"
        raise PartyFull(msg, rid=rid)

    def _check_member_lockout(self, member: Player, now: float, rid: int | None) -> None:
        try:
            self.lobby._check_lockout(member, now, rid)
        except QueueLocked as exc:
            assert exc.retry_after_ms is not None
            msg = f"party member {member.id!r} may not queue for {exc.retry_after_ms} ms after declining matches"
            raise QueueLocked(msg, retry_after_ms=exc.retry_after_ms, rid=rid) from None

    def _forget_invite(self, party: PartyState, player_id: str) -> None:
        party.invited.discard(player_id)
        self.touched.add(party.id)
        invites = self.invites.get(player_id)
        if invites is not None:
            invites.discard(party.id)
            if not invites:
                del self.invites[player_id]

    def _disband(self, party: PartyState) -> None:
        for invitee in list(party.invited):
            self._forget_invite(party, invitee)
        del self.parties[party.id]
        self.touched.add(party.id)


def require_idle(player: Player, rid: int | None) -> None:
    """Raise unless ``player`` is idle, as joining a queue or a party requires."""
    if player.place is Place.QUEUED:
        msg = f"player {player.id!r} is already in queue {player.queue!r}; leave it first"
        raise AlreadyQueued(msg, rid=rid)
    if player.place is Place.READY_CHECK:
        msg = f"player {player.id!r} is in the ready check of match {player.match!r}; accept or decline it first"
        raise InReadyCheck(msg, rid=rid)
    if player.place is Place.IN_MATCH:
        msg = f"player {player.id!r} is in match {player.match!r} until it ends or its game server releases them"
        raise InMatch(msg, rid=rid)


def _require_other_member(party: PartyState, leader: str, target: str, rid: int | None) -> None:
    if target == leader or target not in party.members:
        msg = f"player {target!r} is not another member of party {party.id!r}"
        raise NotInParty(msg, rid=rid)


def _require_member_free(member: Player, rid: int | None) -> None:
    if member.place is Place.IN_MATCH:
        msg = f"party member {member.id!r} is in match {member.match!r} until it ends"
        raise InMatch(msg, rid=rid)


def _party_ticket(members: list[Player], queue: str, now: float, seq: int) -> Ticket:
    """Return one ticket for ``members``, leader first, rated at the members' mean."""
    skills = tuple(member.current_skill for member in members)
    return Ticket(
        player=members[0].id,
        queue=queue,
        rating=round(statistics.fmean(member.rating for member in members)),
        waiting_since=now,
        seq=seq,
        skill=mean_skill(skills),
        members=tuple(member.id for member in members),
        member_ratings=tuple(member.rating for member in members),
        member_skills=skills,
    )


def mean_skill(skills: Sequence[Skill]) -> Skill:
    """Return the skill a party ticket is matched at: the mean mu and the mean sigma of its members."""
    return Skill(statistics.fmean(s.mu for s in skills), statistics.fmean(s.sigma for s in skills))


def _event(name: str, party: PartyState, player: str, **extra: object) -> fx.Event:
    return fx.Event(name, {"party": party.id, "player": player, "members": list(party.members), **extra})
