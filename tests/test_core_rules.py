"""Unit tests of ``Lobby.replace_rules`` and of ticks that form no matches."""

from __future__ import annotations

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import Place, QueueRules
from lobbyd.protocol import messages as m
from tests.test_core_lobby import QUEUES, inbox, login, new_lobby, queue_up, session

DUEL_AND_TRIO = {
    "duel": QueueRules("duel", team_count=2, team_size=1),
    "trio": QueueRules("trio", team_count=2, team_size=3),
}


def propose_duel(lobby_players: tuple[str, str]) -> tuple[Lobby, str]:
    lobby = new_lobby()
    for player in lobby_players:
        login(lobby, player)
    queue_up(lobby, "duel", lobby_players)
    effects = lobby.tick(1.0)
    offer = next(effect for effect in effects if isinstance(effect, fx.OfferMatch))
    return lobby, offer.match


def test_replace_keeps_tickets_of_kept_queue() -> None:
    lobby = new_lobby()
    login(lobby, "ann")
    queue_up(lobby, "squad", ["ann"], now=5.0)

    effects = lobby.replace_rules({**QUEUES, "squad": QueueRules("squad", team_count=2, team_size=3)}, 6.0)

    assert effects == []
    assert lobby.queues["squad"]["ann"].waiting_since == 5.0
    assert lobby.players["ann"].place is Place.QUEUED
    assert lobby.rules["squad"].team_size == 3


def test_replace_applies_new_size_on_next_tick() -> None:
    lobby = new_lobby()
    for player in ("ann", "ben"):
        login(lobby, player)
    queue_up(lobby, "squad", ["ann", "ben"])
    assert lobby.tick(1.0) == []

    lobby.replace_rules({**QUEUES, "squad": QueueRules("squad", team_count=2, team_size=1)}, 2.0)
    effects = lobby.tick(3.0)

    offers = [effect for effect in effects if isinstance(effect, fx.OfferMatch)]
    assert len(offers) == 1
    assert lobby.players["ann"].place is Place.READY_CHECK


def test_replace_removes_queue_and_tells_players() -> None:
    lobby = new_lobby()
    login(lobby, "ann")
    queue_up(lobby, "squad", ["ann"])

    effects = lobby.replace_rules(DUEL_AND_TRIO, 2.0)

    assert inbox(effects, session("ann")) == [m.LeftQueue(queue="squad", reason="queue_removed")]
    events = [effect for effect in effects if isinstance(effect, fx.Event)]
    assert events == [fx.Event("queue_left", {"player": "ann", "queue": "squad", "reason": "queue_removed"})]
    assert lobby.players["ann"].place is Place.IDLE
    assert lobby.players["ann"].queue is None
    assert "squad" not in lobby.queues
    assert "squad" not in lobby.rules


def test_replace_adds_joinable_queue() -> None:
    lobby = new_lobby()
    login(lobby, "ann")

    lobby.replace_rules(DUEL_AND_TRIO, 1.0)
    effects = lobby.join_queue(session("ann"), "trio", 2.0)

    assert inbox(effects, session("ann")) == [m.Queued(queue="trio")]
    assert lobby.queues["trio"]["ann"].queue == "trio"


def test_removed_queue_check_finishes_without_requeue() -> None:
    lobby, match = propose_duel(("ann", "ben"))
    lobby.accept(session("ann"), match, 2.0)

    lobby.replace_rules({"squad": QUEUES["squad"]}, 3.0)
    effects = lobby.decline(session("ben"), match, 4.0)

    cancelled = inbox(effects, session("ann"))
    assert cancelled == [m.MatchCancelled(match=match, reason="declined", requeued=False)]
    assert lobby.players["ann"].place is Place.IDLE
    assert "duel" not in lobby.queues


def test_removed_queue_check_still_starts() -> None:
    lobby, match = propose_duel(("ann", "ben"))

    lobby.replace_rules({"squad": QUEUES["squad"]}, 2.0)
    lobby.accept(session("ann"), match, 3.0)
    effects = lobby.accept(session("ben"), match, 4.0)

    starts = [effect for effect in effects if isinstance(effect, fx.StartMatch)]
    assert len(starts) == 1
    assert starts[0].record.queue == "duel"


def test_removed_queue_void_tells_reachable_player() -> None:
    lobby, match = propose_duel(("ann", "ben"))

    lobby.replace_rules({"squad": QUEUES["squad"]}, 2.0)
    effects = lobby.void_match(match, ["ben"], 3.0)

    assert inbox(effects, session("ann")) == [m.LeftQueue(queue="duel", reason="queue_removed")]
    assert inbox(effects, session("ben")) == []
    assert lobby.players["ann"].place is Place.IDLE


def test_tick_without_forming_expires_only() -> None:
    lobby, match = propose_duel(("ann", "ben"))
    for player in ("cat", "dan"):
        login(lobby, player)
    queue_up(lobby, "duel", ["cat", "dan"])

    effects = lobby.tick(60.0, form_matches=False)

    assert inbox(effects, session("ann")) == [m.MatchCancelled(match=match, reason="expired", requeued=False)]
    assert not [effect for effect in effects if isinstance(effect, fx.OfferMatch)]
    assert set(lobby.queues["duel"]) == {"cat", "dan"}
