"""Unit tests of parties: membership requests, party tickets, cohesion and premade balance."""

from __future__ import annotations

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.matchmaker import find_groups
from lobbyd.core.model import Place, QueueRules, Ticket
from lobbyd.core.ratings import skill_from_rating
from lobbyd.core.teams import split_parties
from lobbyd.errors import (
    AlreadyInParty,
    AlreadyQueued,
    InvalidPartySize,
    NotInParty,
    NotPartyLeader,
    PartyFull,
    UnknownParty,
    UnknownPlayer,
)
from lobbyd.protocol import messages as m
from tests.test_core_lobby import SETTINGS, inbox, login, match_ids, of_type, session

SQUAD = QueueRules("squad", team_count=2, team_size=2, window_start=1000.0, party_sizes=(1, 2))
TRIO = QueueRules("trio", team_count=2, team_size=3, window_start=1000.0, party_sizes=(1, 2, 3))
QUEUES = {"squad": SQUAD, "trio": TRIO}


def new_lobby() -> Lobby:
    return Lobby(QUEUES, SETTINGS, match_ids())


def party_of(lobby: Lobby, leader: str, *members: str, now: float = 0.0) -> str:
    """Log everyone in, have ``leader`` create a party and every member join it; return its id."""
    for player in (leader, *members):
        if player not in lobby.players:
            login(lobby, player)
    lobby.parties.create(session(leader), now)
    party = lobby.players[leader].party
    assert party is not None
    for member in members:
        lobby.parties.invite(session(leader), member, now)
        lobby.parties.join(session(member), party, now)
    return party


def party_check() -> tuple[Lobby, str, str]:
    """Return a lobby where party ann+ben and solo cat, dan were matched in squad, and all but dan accepted."""
    lobby = new_lobby()
    party = party_of(lobby, "ann", "ben")
    for player in ("cat", "dan"):
        login(lobby, player)
    for player in ("ann", "cat", "dan"):
        lobby.join_queue(session(player), "squad", 0.0)
    match = of_type(lobby.tick(1.0), fx.OfferMatch)[0].match
    for player in ("ann", "ben", "cat"):
        lobby.accept(session(player), match, 2.0)
    return lobby, party, match


def roster(effects: list[fx.Effect], player: str) -> list[m.Party]:
    return [message for message in inbox(effects, session(player)) if isinstance(message, m.Party)]


# Membership.


def test_create_sends_roster() -> None:
    lobby = new_lobby()
    login(lobby, "ann")

    effects = lobby.parties.create(session("ann"), 0.0, rid=1)

    assert inbox(effects, session("ann")) == [
        m.Party(party="party1", leader="ann", members=["ann"], invited=[], reason="created", rid=1)
    ]
    assert lobby.players["ann"].party == "party1"


def test_invite_reaches_invitee() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann")
    login(lobby, "ben")

    effects = lobby.parties.invite(session("ann"), "ben", 1.0, rid=2)

    assert inbox(effects, session("ben")) == [m.PartyInvite(party=party, leader="ann", members=["ann"])]
    assert roster(effects, "ann") == [
        m.Party(party=party, leader="ann", members=["ann"], invited=["ben"], reason="invited", rid=2)
    ]


def test_join_tells_every_member() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann")
    login(lobby, "ben")
    lobby.parties.invite(session("ann"), "ben", 1.0)

    effects = lobby.parties.join(session("ben"), party, 2.0, rid=3)

    expected = m.Party(party=party, leader="ann", members=["ann", "ben"], invited=[], reason="joined")
    assert roster(effects, "ann") == [expected]
    assert roster(effects, "ben") == [m.Party(**{**_fields(expected), "rid": 3})]
    assert lobby.parties.invites == {}


def test_join_without_invite_rejected() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann")
    login(lobby, "ben")

    with pytest.raises(UnknownParty):
        lobby.parties.join(session("ben"), party, 1.0)


def test_decline_invite_tells_party() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann")
    login(lobby, "ben")
    lobby.parties.invite(session("ann"), "ben", 1.0)

    effects = lobby.parties.decline(session("ben"), party, rid=4)

    assert inbox(effects, session("ben")) == [m.PartyLeft(party=party, reason="invite_declined", rid=4)]
    assert roster(effects, "ann") == [
        m.Party(party=party, leader="ann", members=["ann"], invited=[], reason="invite_declined")
    ]


def test_only_leader_invites_kicks_promotes() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben")
    login(lobby, "cat")

    with pytest.raises(NotPartyLeader):
        lobby.parties.invite(session("ben"), "cat", 1.0)
    with pytest.raises(NotPartyLeader):
        lobby.parties.kick(session("ben"), "ann", 1.0)
    with pytest.raises(NotPartyLeader):
        lobby.parties.promote(session("ben"), "ben", 1.0)


def test_invite_checks() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben")

    with pytest.raises(AlreadyInParty):
        lobby.parties.invite(session("ann"), "ben", 1.0)
    with pytest.raises(UnknownPlayer):
        lobby.parties.invite(session("ann"), "nobody", 1.0)
    with pytest.raises(NotInParty):
        login(lobby, "cat")
        lobby.parties.invite(session("cat"), "ann", 1.0)


def test_party_full_at_largest_queue_size() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben", "cat")
    login(lobby, "dan")

    with pytest.raises(PartyFull):
        lobby.parties.invite(session("ann"), "dan", 1.0)


def test_party_full_message_names_largest_size() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben", "cat")
    login(lobby, "dan")

    with pytest.raises(PartyFull) as caught:
        lobby.parties.invite(session("ann"), "dan", 1.0)

    assert caught.value.message == "party 'party1' has 3 members, the largest party any queue takes"


def test_party_full_without_party_queues() -> None:
    solo = QueueRules("solo", team_count=2, team_size=1, window_start=1000.0)
    lobby = Lobby({"solo": solo}, SETTINGS, match_ids())
    party_of(lobby, "ann")
    login(lobby, "ben")

    with pytest.raises(PartyFull) as caught:
        lobby.parties.invite(session("ann"), "ben", 1.0)

    assert caught.value.message.startswith("party 'party1' has 1 member and cannot grow: no queue takes parties of 2")
    assert "party_sizes" in caught.value.message


def test_solo_queue_rejects_party_plainly() -> None:
    solo = QueueRules("solo", team_count=2, team_size=2, window_start=1000.0)
    lobby = Lobby({"solo": solo, "squad": SQUAD}, SETTINGS, match_ids())
    party_of(lobby, "ann", "ben")

    with pytest.raises(InvalidPartySize) as caught:
        lobby.join_queue(session("ann"), "solo", 1.0)

    assert caught.value.message == "queue 'solo' takes solo players only, not parties of 2 players"


def test_leader_leaving_hands_over() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann", "ben", "cat")

    effects = lobby.parties.leave(session("ann"), 1.0, rid=5)

    assert inbox(effects, session("ann")) == [m.PartyLeft(party=party, reason="left", rid=5)]
    assert roster(effects, "ben") == [
        m.Party(party=party, leader="ben", members=["ben", "cat"], invited=[], reason="left")
    ]
    assert lobby.players["ann"].party is None


def test_last_member_leaving_disbands() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann")
    login(lobby, "ben")
    lobby.parties.invite(session("ann"), "ben", 1.0)

    lobby.parties.leave(session("ann"), 2.0)

    assert party not in lobby.parties.parties
    assert lobby.parties.invites == {}


def test_kick_and_promote() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann", "ben", "cat")

    kicked = lobby.parties.kick(session("ann"), "cat", 1.0, rid=6)
    promoted = lobby.parties.promote(session("ann"), "ben", 2.0, rid=7)

    assert inbox(kicked, session("cat")) == [m.PartyLeft(party=party, reason="kicked")]
    assert roster(kicked, "ann") == [
        m.Party(party=party, leader="ann", members=["ann", "ben"], invited=[], reason="kicked", rid=6)
    ]
    assert roster(promoted, "ann") == [
        m.Party(party=party, leader="ben", members=["ben", "ann"], invited=[], reason="promoted", rid=7)
    ]


def test_queued_player_cannot_join_party() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann")
    login(lobby, "ben")
    lobby.parties.invite(session("ann"), "ben", 1.0)
    lobby.join_queue(session("ben"), "squad", 1.0)

    with pytest.raises(AlreadyQueued):
        lobby.parties.join(session("ben"), party, 2.0)


# Queueing as a party.


def test_leader_queues_whole_party() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben")
    lobby.players["ben"].rating = 1600

    effects = lobby.join_queue(session("ann"), "squad", 5.0, rid=8)

    assert inbox(effects, session("ann")) == [m.Queued(queue="squad", rid=8)]
    assert inbox(effects, session("ben")) == [m.Queued(queue="squad")]
    ticket = lobby.queues["squad"]["ann"]
    assert (ticket.members, ticket.rating, ticket.size) == (("ann", "ben"), 1550, 2)
    assert lobby.players["ben"].place is Place.QUEUED
    assert list(lobby.queues["squad"]) == ["ann"]


def test_member_cannot_queue_party() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben")

    with pytest.raises(NotPartyLeader):
        lobby.join_queue(session("ben"), "squad", 1.0)


def test_party_size_must_be_allowed() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben", "cat")

    with pytest.raises(InvalidPartySize, match=r"takes parties of 1 or 2 players, not 3"):
        lobby.join_queue(session("ann"), "squad", 1.0)


def test_leave_while_queued_removes_ticket() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann", "ben", "cat")
    lobby.join_queue(session("ann"), "trio", 1.0)

    effects = lobby.parties.leave(session("cat"), 2.0)

    for player in ("ann", "ben", "cat"):
        assert m.LeftQueue(queue="trio", reason="party_changed") in inbox(effects, session(player)), player
        assert lobby.players[player].place is Place.IDLE
    assert len(lobby.queues["trio"]) == 0
    assert lobby.parties.parties[party].members == ["ann", "ben"]


def test_member_leave_queue_removes_party() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben")
    lobby.join_queue(session("ann"), "squad", 1.0)

    effects = lobby.leave_queue(session("ben"), None, 2.0, rid=9)

    assert inbox(effects, session("ben")) == [m.LeftQueue(queue="squad", rid=9)]
    assert inbox(effects, session("ann")) == [m.LeftQueue(queue="squad", reason="member_left_queue")]
    assert len(lobby.queues["squad"]) == 0


def test_party_match_keeps_party_together() -> None:
    lobby = new_lobby()
    party_of(lobby, "ann", "ben")
    for player, rating in (("cat", 1400), ("dan", 1600)):
        login(lobby, player, rating=rating)
    lobby.join_queue(session("ann"), "squad", 0.0)
    lobby.join_queue(session("cat"), "squad", 0.0)
    lobby.join_queue(session("dan"), "squad", 0.0)

    effects = lobby.tick(1.0)

    offers = of_type(effects, fx.OfferMatch)
    assert len(offers) == 1
    check = lobby.checks[offers[0].match]
    assert check.teams == (("ann", "ben"), ("cat", "dan"))
    assert [s.message.players for s in offers[0].sends] == [4, 4, 4, 4]  # type: ignore[union-attr]


def test_member_leaving_ready_check_cancels_it() -> None:
    lobby, party, match = party_check()

    effects = lobby.parties.leave(session("ben"), 3.0)

    for player in ("ann", "ben"):
        cancelled = [x for x in inbox(effects, session(player)) if isinstance(x, m.MatchCancelled)]
        assert cancelled == [m.MatchCancelled(match=match, reason="party_changed", requeued=False)], player
    assert m.MatchCancelled(match=match, reason="party_changed", requeued=True) in inbox(effects, session("cat"))
    assert m.MatchCancelled(match=match, reason="party_changed", requeued=False) in inbox(effects, session("dan"))
    assert list(lobby.queues["squad"]) == ["cat"]
    assert lobby.players["ben"].penalty_level == 0
    assert lobby.parties.parties[party].members == ["ann"]
    # The party that changed never plays this match's ticket again.
    assert lobby.tick(4.0) == []


def test_member_disconnect_removes_ticket() -> None:
    lobby = new_lobby()
    party = party_of(lobby, "ann", "ben")
    lobby.join_queue(session("ann"), "squad", 1.0)

    effects = lobby.disconnect(session("ben"), 2.0)

    assert inbox(effects, session("ann"))[0] == m.LeftQueue(queue="squad", reason="party_changed")
    assert roster(effects, "ann") == [
        m.Party(party=party, leader="ann", members=["ann"], invited=[], reason="disconnected")
    ]
    assert len(lobby.queues["squad"]) == 0


def test_accepted_party_requeued_whole() -> None:
    lobby, _, match = party_check()

    lobby.decline(session("dan"), match, 3.0)

    assert sorted(lobby.queues["squad"]) == ["ann", "cat"]
    assert lobby.queues["squad"]["ann"].members == ("ann", "ben")
    assert lobby.queues["squad"]["ann"].priority is True
    assert lobby.players["ben"].place is Place.QUEUED


# Matchmaking and splits.


def party_ticket(leader: str, ratings: tuple[int, ...], seq: int, queue: str = "trio") -> Ticket:
    members = tuple(f"{leader}{i}" if i else leader for i in range(len(ratings)))
    skills = tuple(skill_from_rating(r) for r in ratings)
    mean = round(sum(ratings) / len(ratings))
    return Ticket(
        leader, queue, mean, 0.0, seq, members=members, member_ratings=ratings, member_skills=skills
    )


def test_fill_counts_players() -> None:
    tickets = [
        party_ticket("a", (1500, 1500), 0),
        party_ticket("b", (1500,), 1),
        party_ticket("c", (1500, 1500, 1500), 2),
        party_ticket("d", (1500,), 3),
    ]

    groups = find_groups(tickets, TRIO, now=0.0)

    assert [[t.player for t in group] for group in groups] == [["a", "b", "c"]]


def test_split_never_divides_party() -> None:
    tickets = [
        party_ticket("a", (1700, 1300), 0),
        party_ticket("b", (1500,), 1),
        party_ticket("c", (1500, 1500), 2),
        party_ticket("d", (1500,), 3),
    ]

    teams = split_parties(tickets, 2, 3)

    assert teams is not None
    assert [[t.player for t in team] for team in teams] == [["a", "b"], ["c", "d"]]


def test_split_impossible_sizes() -> None:
    tickets = [party_ticket(name, (1500, 1500), i) for i, name in enumerate("abc")]

    assert split_parties(tickets, 2, 3) is None


@pytest.mark.parametrize(("gap", "expected"), [(None, [["a", "b"]]), (2, [["a", "b"]]), (1, []), (0, [])])
def test_premade_gap_caps_mismatch(gap: int | None, expected: list[list[str]]) -> None:
    # A trio premade against three solo players: the biggest parties differ by 2.
    rules = QueueRules("trio", team_count=2, team_size=3, window_start=1000.0, max_premade_gap=gap)
    tickets = [party_ticket("a", (1500, 1500, 1500), 0), party_ticket("b", (1500,), 1)]
    tickets += [party_ticket(name, (1500,), 2 + i) for i, name in enumerate("cd")]

    groups = find_groups(tickets, rules, now=0.0)

    names = [[t.player for t in group][:2] for group in groups]
    assert names == expected


def test_premade_meets_premade() -> None:
    rules = QueueRules("trio", team_count=2, team_size=3, window_start=1000.0, max_premade_gap=0)
    tickets = [
        party_ticket("a", (1500, 1500, 1500), 0),
        party_ticket("b", (1500,), 1),
        party_ticket("c", (1520, 1500, 1480), 2),
    ]

    groups = find_groups(tickets, rules, now=0.0)

    assert [[t.player for t in group] for group in groups] == [["a", "c"]]


def _fields(message: m.Party) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__struct_fields__}


def test_requeue_rejects_stale_party_ticket() -> None:
    lobby, party, match = party_check()
    ticket = lobby.checks[match].tickets["ann"]
    lobby.decline(session("dan"), match, 3.0)
    lobby.leave_queue(session("ann"), None, 4.0)

    lobby.parties.leave(session("ben"), 5.0)

    assert lobby.requeue(lobby.players["ann"], ticket) is False
    assert lobby.players["ann"].place is Place.IDLE
    assert lobby.parties.parties[party].members == ["ann"]
