"""Unit tests of ``lobbyd.core.snapshot``: change tracking, and a lobby rebuilt from its records."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from lobbyd.core import effects as fx
from lobbyd.core.expansion import Expansion
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, Place, PlayerRecord, QueueRules
from lobbyd.core.snapshot import Changes, check_snapshot, party_record, restore, ticket_state, track
from lobbyd.protocol import cluster as c
from lobbyd.protocol import messages as m

QUEUES = {
    "duel": QueueRules("duel", team_count=2, team_size=1),
    "squad": QueueRules("squad", team_count=2, team_size=2),
    "pairs": QueueRules("pairs", team_size=2, party_sizes=(1, 2)),
    "duo": QueueRules(
        "duo", team_size=2, window_start=1000.0, roles=("tank", "healer"), latency_steps=Expansion.of((0, 60))
    ),
}
SETTINGS = LobbySettings(ready_timeout=10.0)


def new_lobby() -> tuple[Lobby, Changes]:
    counter = itertools.count(1)
    lobby = Lobby(QUEUES, SETTINGS, lambda: f"m{next(counter)}")
    return lobby, track(lobby)


def key(player: str, node: str = "n1") -> str:
    return f"{node}/s-{player}"


def login(lobby: Lobby, player: str, node: str = "n1", rating: int = 1500) -> None:
    record = PlayerRecord(player, player.upper(), rating, 0.0, 0.0)
    lobby.connect(key(player, node), record, player, None, 0.0)


def presence_of(lobby: Lobby) -> dict[str, c.Presence]:
    found = {}
    for player in lobby.players.values():
        assert player.session is not None
        node, session = c.split_session_key(player.session)
        info = c.PlayerInfo(player.id, player.name, player.rating, player.first_seen, player.last_seen)
        found[player.id] = c.Presence(node, session, 1.0, info)
    return found


def records_of(lobby: Lobby) -> tuple[list[c.TicketState], list[c.CheckSnapshot]]:
    tickets = [state for p in lobby.players if (state := ticket_state(lobby, p)) is not None]
    checks = [snap for match in lobby.checks if (snap := check_snapshot(lobby, match)) is not None]
    return tickets, checks


def test_track_notes_tickets_and_checks() -> None:
    lobby, changes = new_lobby()
    for player in ("ann", "bob"):
        login(lobby, player)
    changes.take()

    lobby.join_queue(key("ann"), "duel", 1.0)
    assert changes.take() == ({"ann"}, set())

    lobby.join_queue(key("bob"), "duel", 2.0)
    lobby.tick(3.0)
    players, matches = changes.take()
    assert players == {"ann", "bob"}
    assert matches == {"m1"}
    assert ticket_state(lobby, "ann") is None


def test_track_rejects_busy_lobby() -> None:
    lobby = Lobby(QUEUES, SETTINGS, lambda: "m")
    lobby.connect("n1/s", PlayerRecord("ann", "ANN", 1500, 0.0, 0.0), "ann", None, 0.0)
    lobby.join_queue("n1/s", "duel", 1.0)

    with pytest.raises(ValueError, match="empty lobby"):
        track(lobby)


def test_restore_keeps_wait_priority_and_checks() -> None:
    old, _ = new_lobby()
    for player in ("ann", "bob", "cat", "dan", "eve"):
        login(old, player)
    old.join_queue(key("ann"), "duel", 1.0)
    old.join_queue(key("bob"), "duel", 2.0)
    old.tick(3.0)
    old.accept(key("ann"), "m1", 4.0)
    old.join_queue(key("cat"), "squad", 5.0)
    old.join_queue(key("dan"), "squad", 6.0)
    tickets, checks = records_of(old)

    new, _ = new_lobby()
    restored = restore(new, presence_of(old), tickets, checks)

    assert restored.orphans == []
    assert restored.stale_tickets == []
    assert new.players["cat"].place is Place.QUEUED
    assert new.queues["squad"]["cat"].waiting_since == 5.0
    assert new.queues["squad"]["dan"].waiting_since == 6.0
    assert new.players["ann"].place is Place.READY_CHECK
    assert new.checks["m1"].accepted == {"ann"}
    assert new.players["eve"].place is Place.IDLE
    # The restored lobby goes on like the old one: bob's accept starts the match.
    effects = new.accept(key("bob"), "m1", 5.0)
    starts = [effect for effect in effects if isinstance(effect, fx.StartMatch)]
    assert len(starts) == 1
    # New tickets come after the restored ones.
    new.join_queue(key("eve"), "squad", 7.0)
    assert new.queues["squad"]["eve"].seq > new.queues["squad"]["dan"].seq


def test_restore_cancels_check_of_gone_session() -> None:
    old, _ = new_lobby()
    for player in ("ann", "bob"):
        login(old, player)
    old.join_queue(key("ann"), "duel", 1.0)
    old.join_queue(key("bob"), "duel", 2.0)
    old.tick(3.0)
    old.accept(key("bob"), "m1", 4.0)
    tickets, checks = records_of(old)
    presence = presence_of(old)
    # ann logged in again on another node since.
    ann = presence["ann"]
    presence["ann"] = c.Presence("n2", "s-new", 2.0, ann.player)

    new, _ = new_lobby()
    restored = restore(new, presence, tickets, checks)
    assert restored.orphans == [key("ann")]
    assert restored.rebind == {key("ann"): "n2/s-new"}

    effects = new.disconnect(key("ann"), 5.0)
    cancelled = [e.message for e in effects if isinstance(e, fx.Send) and isinstance(e.message, m.MatchCancelled)]
    assert cancelled == [m.MatchCancelled(match="m1", reason="disconnected", requeued=True)]
    assert new.players["bob"].place is Place.QUEUED
    assert new.queues["duel"]["bob"].priority is True


def test_restore_drops_ticket_of_gone_session() -> None:
    old, _ = new_lobby()
    login(old, "ann")
    old.join_queue(key("ann"), "duel", 1.0)
    tickets, _ = records_of(old)

    new, _ = new_lobby()
    restored = restore(new, {}, tickets, [])

    assert restored.stale_tickets == ["ann"]
    assert len(new.queues["duel"]) == 0


def test_restore_keeps_roles_latency_region() -> None:
    old, _ = new_lobby()
    prefs = {"ann": ["tank"], "bob": ["healer"], "cat": ["tank"], "dan": ["healer"], "eve": ["healer", "tank"]}
    for player in prefs:
        login(old, player)
    for at, (player, roles) in enumerate(prefs.items()):
        latency = {"eu": 30.0, "us": 50.0} if player != "eve" else {"us": 20.0}
        if player == "eve":
            old.tick(5.0)
        old.join_queue(key(player), "duo", float(at), roles=roles, latency=latency)
    old.accept(key("ann"), "m1", 6.0)
    tickets, checks = records_of(old)
    found = old.checks["m1"]

    new, _ = new_lobby()
    restore(new, presence_of(old), tickets, checks)

    check = new.checks["m1"]
    assert check.region == "eu"
    assert check.roles == found.roles
    assert {given.role for given in check.roles.values()} == {"tank", "healer"}
    assert check.explanation == found.explanation
    assert check.tickets["bob"].role_prefs == (("healer",),)
    assert check.tickets["bob"].latency == {"eu": 30.0, "us": 50.0}
    eve = new.queues["duo"]["eve"]
    assert eve.role_prefs == (("healer", "tank"),)
    assert eve.latency == {"us": 20.0}
    effects: list[fx.Effect] = []
    for player in ("bob", "cat", "dan"):
        effects.extend(new.accept(key(player), "m1", 7.0))
    (start,) = [effect for effect in effects if isinstance(effect, fx.StartMatch)]
    assert start.record.region == "eu"
    assert start.record.roles == found.roles


def test_older_records_still_decode() -> None:
    info = c.PlayerInfo("ann", "ANN", 1500, 0.0, 0.0)
    # The fields an older node wrote: no role preferences, latency, members or region.
    ticket = msgspec.msgpack.encode([info, "n1/s-ann", "duel", 1.0, 3, False])
    check = msgspec.msgpack.encode(["m1", "duel", [["ann"], ["bob"]], [], 1.0, 11.0, []])

    state = c.TICKET_DECODER.decode(ticket)
    snapshot = c.CHECK_DECODER.decode(check)

    assert state.role_prefs == []
    assert state.latency is None
    assert state.members == []
    assert snapshot.region is None
    assert snapshot.roles == {}


def queued_party(lobby: Lobby) -> None:
    """Make ann lead a party with bob and queue it in ``pairs``."""
    for player in ("ann", "bob"):
        login(lobby, player, rating=1400 if player == "ann" else 1600)
    lobby.parties.create(key("ann"), 1.0)
    lobby.parties.invite(key("ann"), "bob", 1.0)
    lobby.parties.join(key("bob"), "party1", 1.0)
    lobby.join_queue(key("ann"), "pairs", 2.0)


def test_restore_keeps_party_ticket() -> None:
    old, _ = new_lobby()
    queued_party(old)
    tickets, _ = records_of(old)
    parties = [record for party in old.parties.parties if (record := party_record(old, party)) is not None]

    new, _ = new_lobby()
    restored = restore(new, presence_of(old), tickets, [], parties)

    assert restored.absent == []
    assert restored.stale_tickets == []
    assert new.parties.parties["party1"].members == ["ann", "bob"]
    assert new.players["bob"].party == "party1"
    ticket = new.queues["pairs"]["ann"]
    assert ticket.members == ("ann", "bob")
    assert ticket.rating == 1500
    assert new.players["bob"].place is Place.QUEUED
    # A new party gets a fresh id.
    login(new, "cat")
    new.parties.create(key("cat"), 3.0)
    assert new.players["cat"].party == "party2"


def test_restore_removes_absent_party_member() -> None:
    old, _ = new_lobby()
    queued_party(old)
    tickets, _ = records_of(old)
    parties = [record for party in old.parties.parties if (record := party_record(old, party)) is not None]
    presence = presence_of(old)
    del presence["bob"]

    new, _ = new_lobby()
    restored = restore(new, presence, tickets, [], parties)
    effects = new.parties.remove_member(new.players["bob"], "disconnected", 3.0)

    assert restored.absent == ["bob"]
    sent = [effect.message for effect in effects if isinstance(effect, fx.Send)]
    assert m.LeftQueue(queue="pairs", reason="party_changed") in sent
    roster = [message for message in sent if isinstance(message, m.Party)]
    assert [message.members for message in roster] == [["ann"]]
    assert new.players["ann"].place is Place.IDLE
    assert len(new.queues["pairs"]) == 0
