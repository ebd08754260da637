"""Mirror a ``Lobby``'s tickets and ready checks into records, and rebuild a lobby from them.

A cluster leader keeps the lobby in memory like a single daemon, and after every
batch of changes writes the tickets and ready checks that changed to shared
storage. ``track`` finds what changed without a scan: it puts pools and a checks
dict into the lobby that note every ticket added or removed and every ready check
created or finished. Accepts change a check in place, so the caller marks those.

``restore`` is the other direction: a new leader builds its lobby from the
players' presence, the stored tickets and the stored ready checks.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lobbyd.core.lobby import Lobby
from lobbyd.core.model import DEFAULT_RATING, Place, Player, PlayerRecord, Ticket
from lobbyd.core.parties import mean_skill
from lobbyd.core.penalties import Penalty
from lobbyd.core.pool import TicketPool
from lobbyd.core.ratings import Skill
from lobbyd.core.ready_check import ReadyCheck
from lobbyd.core.roles import RoleAssignment
from lobbyd.protocol.cluster import (
    CheckSnapshot,
    PartyRecord,
    PlayerInfo,
    Presence,
    RoleState,
    TicketState,
    session_key,
)


@dataclass(slots=True)
class Changes:
    """Players whose ticket and matches whose ready check changed since the last ``take``."""

    players: set[str] = field(default_factory=set)
    matches: set[str] = field(default_factory=set)

    def take(self) -> tuple[set[str], set[str]]:
        players, matches = self.players, self.matches
        self.players, self.matches = set(), set()
        return players, matches


class TrackedPool(TicketPool):
    """A ticket pool that notes the player of every ticket added or removed."""

    __slots__ = ("changes",)

    def __init__(self, changes: Changes) -> None:
        super().__init__()
        self.changes = changes

    def add(self, ticket: Ticket) -> None:
        super().add(ticket)
        self.changes.players.add(ticket.player)

    def remove(self, player: str) -> Ticket:
        self.changes.players.add(player)
        return super().remove(player)


class TrackedChecks(dict[str, ReadyCheck]):
    """The lobby's ready checks by match id, noting every check created or finished."""

    def __init__(self, changes: Changes) -> None:
        super().__init__()
        self.changes = changes

    def __setitem__(self, match: str, check: ReadyCheck) -> None:
        super().__setitem__(match, check)
        self.changes.matches.add(match)

    def __delitem__(self, match: str) -> None:
        super().__delitem__(match)
        self.changes.matches.add(match)


def track(lobby: Lobby) -> Changes:
    """Give the empty ``lobby`` tracked pools and checks; return where changes are noted."""
    if any(lobby.queues.values()) or lobby.checks:
        msg = "track() needs an empty lobby: tickets or ready checks already exist"
        raise ValueError(msg)
    changes = Changes()
    lobby.queues = {name: TrackedPool(changes) for name in lobby.queues}
    lobby.checks = TrackedChecks(changes)
    return changes


def player_info(player: Player) -> PlayerInfo:
    mu = player.skill.mu if player.skill is not None else None
    sigma = player.skill.sigma if player.skill is not None else None
    return PlayerInfo(
        player.id,
        player.name,
        player.rating,
        player.first_seen,
        player.last_seen,
        mu,
        sigma,
        player.games,
        player.wins,
        player.penalty_level,
        player.penalty_since,
        player.locked_until,
    )


def player_record(info: PlayerInfo) -> PlayerRecord:
    """Return the store's record of the player ``info`` describes."""
    return PlayerRecord(
        info.id,
        info.name,
        info.rating,
        info.first_seen,
        info.last_seen,
        info.mu,
        info.sigma,
        info.games,
        info.wins,
        info.penalty_level,
        info.penalty_since,
        info.locked_until,
    )


def refresh_penalties(lobby: Lobby, records: Iterable[PlayerRecord | PlayerInfo]) -> int:
    """Take the dodge penalty of each record whose last dodge is later than the lobby player's.

    A penalty only grows by a new dodge, which moves ``penalty_since`` forward, so
    the later one is the current standing. Returns how many players changed.
    """
    changed = 0
    for record in records:
        player = lobby.players.get(record.id)
        if player is None or record.penalty_since <= player.penalty_since:
            continue
        player.penalty = Penalty(record.penalty_level, record.penalty_since, record.locked_until)
        changed += 1
    return changed


def ticket_state(lobby: Lobby, player_id: str) -> TicketState | None:
    """Return the stored form of ``player_id``'s ticket, or ``None`` when they hold none."""
    player = lobby.players.get(player_id)
    if player is None or player.place is not Place.QUEUED or player.queue is None or player.session is None:
        return None
    # A party member other than the leader has no ticket of their own: the
    # party's ticket is stored under the leader's id.
    ticket = lobby.queues[player.queue].get(player_id)
    if ticket is None:
        return None
    return stored_ticket(player, ticket, player.session)


def check_snapshot(lobby: Lobby, match: str) -> CheckSnapshot | None:
    """Return the stored form of the pending ready check ``match``, or ``None`` when it ended."""
    check = lobby.checks.get(match)
    if check is None:
        return None
    tickets = stored_tickets(lobby, check.tickets)
    return CheckSnapshot(
        match=check.match,
        queue=check.queue,
        teams=[list(team) for team in check.teams],
        tickets=tickets,
        created_at=check.created_at,
        deadline=check.deadline,
        accepted=sorted(check.accepted),
        region=check.region,
        roles={player: RoleState(given.role, given.autofilled) for player, given in check.roles.items()},
        explanation=dict(check.explanation),
    )


def stored_tickets(lobby: Lobby, tickets: Mapping[str, Ticket]) -> list[TicketState]:
    """Return the stored form of the tickets a ready check or hosted match holds, by player."""
    stored = []
    for player_id, ticket in tickets.items():
        player = lobby.players[player_id]
        stored.append(stored_ticket(player, ticket, player.session or ""))
    return stored


def stored_ticket(player: Player, ticket: Ticket, session: str) -> TicketState:
    return TicketState(
        player=player_info(player),
        session=session,
        queue=ticket.queue,
        waiting_since=ticket.waiting_since,
        seq=ticket.seq,
        priority=ticket.priority,
        role_prefs=[list(prefs) for prefs in ticket.role_prefs],
        latency=dict(ticket.latency) if ticket.latency is not None else None,
        members=list(ticket.members),
        member_ratings=list(ticket.member_ratings),
        member_skills=[(skill.mu, skill.sigma) for skill in ticket.member_skills],
    )


@dataclass(slots=True)
class Restored:
    """What ``restore`` could not simply put back.

    ``orphans`` are session keys of players in a ready check whose session is gone:
    the caller disconnects each, which cancels the check for the others, then binds
    the player's current session from ``rebind`` if there is one. ``stale_tickets``
    are players whose stored ticket belongs to a session that is gone; the caller
    deletes those tickets from storage. ``absent`` lists the party members whose
    session is gone.
    """

    orphans: list[str] = field(default_factory=list)
    rebind: dict[str, str] = field(default_factory=dict)
    stale_tickets: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    """Party members with no presence and no ready check: each is an offline stand-in
    that the caller removes from their party as a disconnect would, then deletes."""


def restore(
    lobby: Lobby,
    presence: Mapping[str, Presence],
    tickets: Iterable[TicketState],
    checks: Iterable[CheckSnapshot],
    parties: Iterable[PartyRecord] = (),
) -> Restored:
    """Fill the empty ``lobby`` with connected players, their parties, tickets and ready checks.

    Tickets keep their wait, priority and arrival order. A ticket or ready check is
    only bound to the session recorded with it; see ``Restored`` for the others.
    """
    restored = Restored()
    seqs = [0]
    for player_id, where in presence.items():
        player = new_player(where.player)
        player.session = session_key(where.node, where.session)
        lobby.players[player_id] = player
        lobby.sessions[player.session] = player_id

    for snapshot in checks:
        check = ReadyCheck(
            match=snapshot.match,
            queue=snapshot.queue,
            teams=tuple(tuple(team) for team in snapshot.teams),
            tickets={},
            created_at=snapshot.created_at,
            deadline=snapshot.deadline,
            accepted=set(snapshot.accepted),
            explanation=dict(snapshot.explanation),
            region=snapshot.region,
            roles={player: RoleAssignment(given.role, given.autofilled) for player, given in snapshot.roles.items()},
        )
        # The members of a party share one ticket object, as in a live ready check,
        # so that a cancel requeues the party once.
        shared: dict[tuple[str, ...], Ticket] = {}
        for state in snapshot.tickets:
            ticket = restored_ticket(state)
            if state.members:
                ticket = shared.setdefault(tuple(state.members), ticket)
            check.tickets[state.player.id] = ticket
            seqs.append(state.seq)
            player = _bind(lobby, state, restored)
            player.place, player.queue, player.match = Place.READY_CHECK, None, snapshot.match
        lobby.checks[snapshot.match] = check

    for record in parties:
        _restore_party(lobby, record, restored)

    # A pool expects tickets to join oldest first, as they do in a live queue.
    for state in sorted(tickets, key=lambda t: (t.waiting_since, t.seq)):
        holder = lobby.players.get(state.player.id)
        # A party ticket whose leader is gone is put back too, so that removing the
        # leader from the party ends it and tells the other members.
        gone_leader = holder is not None and holder.id in restored.absent and bool(state.members)
        if holder is None or (holder.session != state.session and not gone_leader) or holder.place is not Place.IDLE:
            restored.stale_tickets.append(state.player.id)
            continue
        if state.queue not in lobby.queues:
            # The queue was removed from the configuration since the ticket was taken.
            restored.stale_tickets.append(state.player.id)
            continue
        ticket = restored_ticket(state)
        if ticket.members and not _party_intact(lobby, ticket):
            restored.stale_tickets.append(state.player.id)
            continue
        seqs.append(state.seq)
        lobby._add_ticket(holder, ticket)
    lobby._seq = itertools.count(max(seqs) + 1)
    return restored


def _bind(lobby: Lobby, state: TicketState, restored: Restored) -> Player:
    """Return the lobby's player of ``state``, bound to the session recorded with it."""
    found = lobby.players.get(state.player.id)
    player = found if found is not None else new_player(state.player)
    lobby.players[player.id] = player
    if player.session != state.session:
        # The check's session is gone: bind it back so that disconnecting it cancels
        # the check; the player's current session, if any, is bound after that.
        if player.session is not None:
            restored.rebind[state.session] = player.session
            del lobby.sessions[player.session]
        player.session = state.session
        lobby.sessions[state.session] = player.id
        restored.orphans.append(state.session)
    return player


def new_player(info: PlayerInfo) -> Player:
    """Return an offline, idle player with the record ``info`` carries."""
    player = Player(info.id, info.name, info.rating, info.first_seen, info.last_seen, games=info.games, wins=info.wins)
    player.penalty = Penalty(info.penalty_level, info.penalty_since, info.locked_until)
    if info.mu is not None and info.sigma is not None:
        player.skill = Skill(info.mu, info.sigma)
    return player


def _restore_party(lobby: Lobby, record: PartyRecord, restored: Restored) -> None:
    """Put back one stored party; a member with no player in the lobby gets an offline stand-in."""
    for member in record.members:
        if member not in lobby.players:
            lobby.players[member] = Player(member, member, DEFAULT_RATING, 0.0, 0.0)
            restored.absent.append(member)
    online = [invitee for invitee in record.invited if (found := lobby.players.get(invitee)) and found.session]
    lobby.parties.restore(record.id, record.members, online)


def party_record(lobby: Lobby, party_id: str) -> PartyRecord | None:
    """Return the stored form of party ``party_id``, or ``None`` when it was disbanded."""
    party = lobby.parties.parties.get(party_id)
    if party is None:
        return None
    return PartyRecord(party.id, list(party.members), sorted(party.invited))


def _party_intact(lobby: Lobby, ticket: Ticket) -> bool:
    """Return True when every member of a restored party ticket is idle and still in one party.

    A member whose session is gone still counts: the caller removes them from the
    party afterwards, which ends the ticket and tells the other members, as a
    disconnect does.
    """
    members = [lobby.players.get(member) for member in ticket.members]
    if any(member is None or member.place is not Place.IDLE for member in members):
        return False
    party_id = lobby.players[ticket.player].party
    party = lobby.parties.parties.get(party_id) if party_id is not None else None
    return party is not None and party.members == list(ticket.members)


def restored_ticket(state: TicketState) -> Ticket:
    """Return the ``Ticket`` that ``state`` stores; a party ticket is keyed by its leader and rated at the mean."""
    info = state.player
    prefs = tuple(tuple(roles) for roles in state.role_prefs)
    if state.members:
        skills = tuple(Skill(mu, sigma) for mu, sigma in state.member_skills)
        return Ticket(
            state.members[0],
            state.queue,
            round(statistics.fmean(state.member_ratings)),
            state.waiting_since,
            state.seq,
            state.priority,
            mean_skill(skills),
            members=tuple(state.members),
            member_ratings=tuple(state.member_ratings),
            member_skills=skills,
            role_prefs=prefs,
            latency=state.latency,
        )
    skill = Skill(info.mu, info.sigma) if info.mu is not None and info.sigma is not None else None
    return Ticket(
        info.id,
        state.queue,
        info.rating,
        state.waiting_since,
        state.seq,
        state.priority,
        skill,
        role_prefs=prefs,
        latency=state.latency,
    )
