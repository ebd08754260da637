"""Unit tests of ``Lobby``: sessions, queues, ready checks, ``void_match`` and ``forget``.

Every test drives the lobby with literal times and a match-id factory that yields
m1, m2, ... so expected effects can be written out in full.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import (
    LobbySettings,
    MatchState,
    Place,
    PlayerRecord,
    QueueRules,
)
from lobbyd.core.ready_check import CheckEvent, CheckState, IllegalTransition
from lobbyd.errors import (
    AlreadyQueued,
    InReadyCheck,
    NotQueued,
    UnknownMatch,
    UnknownQueue,
)
from lobbyd.protocol import messages as m

QUEUES = {
    "duel": QueueRules("duel", team_count=2, team_size=1),
    "squad": QueueRules("squad", team_count=2, team_size=2),
}
SETTINGS = LobbySettings(ready_timeout=10.0, heartbeat_ms=10_000, finished_ttl=300.0)

ItemT = TypeVar("ItemT")


def match_ids() -> Callable[[], str]:
    """Return a factory of the match ids m1, m2, ... in order."""
    counter = itertools.count(1)
    return lambda: f"m{next(counter)}"


def new_lobby(queues: Mapping[str, QueueRules] = QUEUES) -> Lobby:
    return Lobby(queues, SETTINGS, match_ids())


def session(player: str) -> str:
    return f"s-{player}"


def login(lobby: Lobby, player: str, now: float = 0.0, rating: int = 1500) -> list[fx.Effect]:
    record = PlayerRecord(player, player.upper(), rating, 0.0, 0.0)
    return lobby.connect(session(player), record, player, None, now)


def queue_up(lobby: Lobby, queue: str, players: Iterable[str], now: float = 0.0) -> None:
    for player in players:
        lobby.join_queue(session(player), queue, now)


def sends(effects: Iterable[fx.Effect]) -> list[fx.Send]:
    """Return every Send, including those inside OfferMatch and StartMatch, in order."""
    found: list[fx.Send] = []
    for effect in effects:
        if isinstance(effect, fx.Send):
            found.append(effect)
        elif isinstance(effect, fx.OfferMatch | fx.StartMatch):
            found.extend(effect.sends)
    return found


def inbox(effects: Iterable[fx.Effect], session_id: str) -> list[m.ServerMessage]:
    return [send.message for send in sends(effects) if send.session == session_id]


def of_type(items: Iterable[object], kind: type[ItemT]) -> list[ItemT]:
    return [item for item in items if isinstance(item, kind)]


def duel_check(ratings: tuple[int, int] = (1500, 1500)) -> Lobby:
    """Return a lobby where a and b queued for duel at 0 and the tick at 0 proposed m1."""
    lobby = new_lobby()
    login(lobby, "a", rating=ratings[0])
    login(lobby, "b", rating=ratings[1])
    queue_up(lobby, "duel", ["a", "b"])
    lobby.tick(0.0)
    return lobby


def squad_check() -> Lobby:
    """Return a lobby where a, b, c, d (1400 to 1600) queued at 0 and the tick at 20 proposed m1."""
    lobby = new_lobby()
    for player, rating in (("a", 1400), ("b", 1450), ("c", 1550), ("d", 1600)):
        login(lobby, player, rating=rating)
    queue_up(lobby, "squad", ["a", "b", "c", "d"])
    lobby.tick(20.0)
    return lobby


# Sessions.


def test_connect_new_player_welcome() -> None:
    lobby = new_lobby()
    effects = lobby.connect("s1", None, "alice", "Alice", 5.0, rid=3)

    welcome = m.Welcome(session="s1", player="alice", heartbeat_ms=10_000, rating=1500, rid=3)
    assert inbox(effects, "s1") == [welcome]
    assert of_type(effects, fx.SavePlayer) == [fx.SavePlayer(PlayerRecord("alice", "Alice", 1500, 5.0, 5.0))]
    assert lobby.sessions == {"s1": "alice"}
    assert lobby.players["alice"].place is Place.IDLE


def test_connect_loads_stored_record() -> None:
    lobby = new_lobby()
    record = PlayerRecord("alice", "Alice", 1830, 100.0, 200.0)
    effects = lobby.connect("s1", record, "alice", None, 300.0)

    assert inbox(effects, "s1")[0] == m.Welcome(session="s1", player="alice", heartbeat_ms=10_000, rating=1830)
    assert lobby.known_record("alice") == PlayerRecord("alice", "Alice", 1830, 100.0, 300.0)


def test_duplicate_login_kicks_old_session() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    effects = lobby.connect("s-a2", None, "a", None, 5.0)

    assert effects[0] == fx.Send("s-a", m.Kicked(reason="logged_in_elsewhere"))
    assert effects[1] == fx.Close("s-a", "logged_in_elsewhere")
    assert inbox(effects, "s-a2") == [m.Welcome(session="s-a2", player="a", heartbeat_ms=10_000, rating=1500)]
    assert lobby.sessions == {"s-a2": "a"}
    assert lobby.players["a"].session == "s-a2"


def test_duplicate_login_removes_ticket() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    queue_up(lobby, "duel", ["a"])
    effects = lobby.connect("s-a2", None, "a", None, 5.0)

    assert lobby.queues["duel"] == {}
    assert lobby.players["a"].place is Place.IDLE
    assert fx.Event("queue_left", {"player": "a", "queue": "duel", "reason": "disconnected"}) in effects


def test_duplicate_login_cancels_ready_check() -> None:
    lobby = duel_check()
    lobby.accept(session("b"), "m1", 1.0)
    effects = lobby.connect("s-a2", None, "a", None, 2.0)

    assert inbox(effects, session("a")) == [m.Kicked(reason="logged_in_elsewhere")]
    assert inbox(effects, session("b")) == [m.MatchCancelled(match="m1", reason="disconnected", requeued=True)]
    assert lobby.checks == {}
    assert lobby.players["a"].place is Place.IDLE
    assert lobby.players["a"].session == "s-a2"
    assert lobby.players["b"].place is Place.QUEUED
    assert lobby.queues["duel"]["b"].priority is True
    assert lobby.queues["duel"]["b"].waiting_since == 0.0


def test_disconnect_removes_ticket() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    queue_up(lobby, "duel", ["a"])
    effects = lobby.disconnect(session("a"), 4.0)

    assert lobby.queues["duel"] == {}
    assert lobby.sessions == {}
    assert lobby.players["a"].session is None
    assert lobby.players["a"].place is Place.IDLE
    assert sends(effects) == []
    assert of_type(effects, fx.SavePlayer) == [fx.SavePlayer(PlayerRecord("a", "A", 1500, 0.0, 4.0))]


def test_disconnect_cancels_ready_check() -> None:
    lobby = squad_check()
    lobby.accept(session("b"), "m1", 21.0)
    effects = lobby.disconnect(session("a"), 22.0)

    assert inbox(effects, session("a")) == []
    assert inbox(effects, session("b")) == [m.MatchCancelled(match="m1", reason="disconnected", requeued=True)]
    for player in ("c", "d"):
        assert inbox(effects, session(player)) == [m.MatchCancelled(match="m1", reason="disconnected", requeued=False)]
    assert lobby.checks == {}
    assert sorted(lobby.queues["squad"]) == ["b"]
    assert lobby.players["c"].place is Place.IDLE
    assert lobby.players["d"].place is Place.IDLE


def test_disconnect_unknown_session_noop() -> None:
    lobby = new_lobby()
    assert lobby.disconnect("s-nobody", 1.0) == []


def test_disconnect_stale_session_noop() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    lobby.connect("s-a2", None, "a", None, 1.0)
    lobby.join_queue("s-a2", "duel", 1.0)

    assert lobby.disconnect(session("a"), 2.0) == []
    assert lobby.players["a"].session == "s-a2"
    assert sorted(lobby.queues["duel"]) == ["a"]


# Joining and leaving queues.


def test_join_queue_sends_queued() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    effects = lobby.join_queue(session("a"), "duel", 3.0, rid=9)

    assert inbox(effects, session("a")) == [m.Queued(queue="duel", rid=9)]
    assert lobby.players["a"].place is Place.QUEUED
    assert lobby.players["a"].queue == "duel"
    assert lobby.queues["duel"]["a"].waiting_since == 3.0
    assert lobby.queues["duel"]["a"].priority is False


def test_join_queue_twice_rejected() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    lobby.join_queue(session("a"), "duel", 0.0)
    with pytest.raises(AlreadyQueued) as caught:
        lobby.join_queue(session("a"), "duel", 1.0, rid=4)

    assert caught.value.code == "already_queued"
    assert caught.value.message == "player 'a' is already in queue 'duel'; leave it first"
    assert caught.value.rid == 4
    assert list(lobby.queues["duel"]) == ["a"]
    assert lobby.queues["duel"]["a"].waiting_since == 0.0


def test_join_other_queue_rejected() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    lobby.join_queue(session("a"), "duel", 0.0)
    with pytest.raises(AlreadyQueued):
        lobby.join_queue(session("a"), "squad", 1.0)

    assert lobby.queues["squad"] == {}


def test_double_join_fills_one_slot() -> None:
    lobby = new_lobby()
    for player in ("a", "b", "c"):
        login(lobby, player)
    queue_up(lobby, "squad", ["a", "b", "c"])
    with pytest.raises(AlreadyQueued):
        lobby.join_queue(session("a"), "squad", 0.0)
    effects = lobby.tick(30.0)

    assert of_type(effects, fx.OfferMatch) == []
    assert sorted(lobby.queues["squad"]) == ["a", "b", "c"]


def test_join_unknown_queue_rejected() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    with pytest.raises(UnknownQueue) as caught:
        lobby.join_queue(session("a"), "ranked", 0.0, rid=12)

    assert caught.value.code == "unknown_queue"
    assert caught.value.message == "queue 'ranked' does not exist: this server has duel, squad"
    assert caught.value.rid == 12
    assert caught.value.fatal is False
    assert lobby.players["a"].place is Place.IDLE


def test_join_during_ready_check_rejected() -> None:
    lobby = duel_check()
    with pytest.raises(InReadyCheck) as caught:
        lobby.join_queue(session("a"), "squad", 1.0, rid=5)

    assert caught.value.code == "in_ready_check"
    assert caught.value.message == ("player 'a' is in the ready check of match 'm1'; accept or decline it first")
    assert caught.value.rid == 5
    assert lobby.players["a"].place is Place.READY_CHECK
    assert lobby.queues["squad"] == {}


def test_leave_queue_before_tick() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    login(lobby, "b")
    queue_up(lobby, "duel", ["a", "b"])
    effects = lobby.leave_queue(session("a"), "duel", 1.0, rid=7)

    assert inbox(effects, session("a")) == [m.LeftQueue(queue="duel", rid=7)]
    assert of_type(effects, fx.SaveMatch) == []
    assert lobby.players["a"].place is Place.IDLE
    assert of_type(lobby.tick(1.0), fx.OfferMatch) == []


def test_leave_queue_without_name() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    queue_up(lobby, "squad", ["a"])
    effects = lobby.leave_queue(session("a"), None, 1.0)

    assert inbox(effects, session("a")) == [m.LeftQueue(queue="squad")]
    assert lobby.queues["squad"] == {}


def test_leave_queue_after_tick_declines() -> None:
    lobby = duel_check()
    effects = lobby.leave_queue(session("a"), "duel", 1.0, rid=7)

    assert inbox(effects, session("a")) == [
        m.MatchCancelled(match="m1", reason="declined", requeued=False),
        m.LeftQueue(queue="duel", rid=7),
    ]
    assert inbox(effects, session("b")) == [m.MatchCancelled(match="m1", reason="declined", requeued=False)]
    assert lobby.checks == {}
    assert lobby.queues["duel"] == {}
    assert lobby.players["a"].place is Place.IDLE
    assert lobby.finished["m1"][:2] == (CheckState.CANCELLED, 1.0)


def test_leave_after_tick_requeues_accepted() -> None:
    lobby = duel_check()
    lobby.accept(session("b"), "m1", 1.0)
    effects = lobby.leave_queue(session("a"), None, 2.0)

    assert inbox(effects, session("b")) == [m.MatchCancelled(match="m1", reason="declined", requeued=True)]
    assert sorted(lobby.queues["duel"]) == ["b"]
    assert lobby.queues["duel"]["b"].priority is True


def test_leave_queue_not_queued() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    with pytest.raises(NotQueued) as caught:
        lobby.leave_queue(session("a"), None, 0.0, rid=2)

    assert caught.value.code == "not_queued"
    assert caught.value.message == "player 'a' is not in any queue"
    assert caught.value.rid == 2


def test_leave_named_queue_not_queued() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    with pytest.raises(NotQueued) as caught:
        lobby.leave_queue(session("a"), "duel", 0.0)

    assert caught.value.message == "player 'a' is not in queue 'duel': they are in no queue"


def test_leave_wrong_queue_rejected() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    queue_up(lobby, "duel", ["a"])
    with pytest.raises(NotQueued) as caught:
        lobby.leave_queue(session("a"), "squad", 1.0, rid=8)

    assert caught.value.message == "player 'a' is not in queue 'squad': they are in queue 'duel'"
    assert caught.value.rid == 8
    assert sorted(lobby.queues["duel"]) == ["a"]


def test_leave_wrong_queue_in_check() -> None:
    lobby = duel_check()
    with pytest.raises(NotQueued) as caught:
        lobby.leave_queue(session("a"), "squad", 1.0)

    assert caught.value.message == "player 'a' is not in queue 'squad': they are in queue 'duel'"
    assert lobby.players["a"].place is Place.READY_CHECK
    assert "m1" in lobby.checks


# Matching and the ready check.


def test_tick_offers_match() -> None:
    lobby = new_lobby()
    login(lobby, "a")
    login(lobby, "b")
    lobby.join_queue(session("a"), "duel", 0.0)
    lobby.join_queue(session("b"), "duel", 1.0)
    effects = lobby.tick(1.0)

    found = m.MatchFound(match="m1", queue="duel", players=2, accept_ms=10_000, region="default")
    assert of_type(effects, fx.OfferMatch) == [
        fx.OfferMatch("m1", (fx.Send(session("a"), found), fx.Send(session("b"), found)))
    ]
    assert lobby.queues["duel"] == {}
    assert lobby.players["a"].place is Place.READY_CHECK
    assert lobby.players["a"].match == "m1"
    assert lobby.checks["m1"].deadline == 11.0


def test_tick_widens_rating_window() -> None:
    # window = 50 + 10 * wait reaches the 200-point gap at wait (200 - 50) / 10 = 15 s.
    lobby = new_lobby()
    login(lobby, "a", rating=1400)
    login(lobby, "b", rating=1600)
    queue_up(lobby, "duel", ["a", "b"])

    assert of_type(lobby.tick(0.0), fx.OfferMatch) == []
    assert of_type(lobby.tick(14.9), fx.OfferMatch) == []
    assert [offer.match for offer in of_type(lobby.tick(15.0), fx.OfferMatch)] == ["m1"]


def test_squad_teams_balanced() -> None:
    lobby = squad_check()

    assert lobby.checks["m1"].teams == (("a", "d"), ("b", "c"))


def test_all_accept_starts_once() -> None:
    lobby = duel_check()
    first = lobby.accept(session("a"), "m1", 1.0, rid=1)
    last = lobby.accept(session("b"), "m1", 2.0, rid=2)

    assert inbox(first, session("a")) == [m.Accepted(match="m1", rid=1)]
    assert of_type(first, fx.StartMatch) == []
    assert len(of_type(last, fx.StartMatch)) == 1
    assert inbox(last, session("a")) == [
        m.MatchStart(match="m1", queue="duel", team=0, teams=[["a"], ["b"]], ratings=[[1500], [1500]], region="default")
    ]
    assert inbox(last, session("b")) == [
        m.Accepted(match="m1", rid=2),
        m.MatchStart(
            match="m1", queue="duel", team=1, teams=[["a"], ["b"]], ratings=[[1500], [1500]], region="default"
        ),
    ]
    assert lobby.checks == {}
    assert lobby.finished["m1"][:2] == (CheckState.STARTED, 2.0)
    assert lobby.players["a"].place is Place.IDLE
    assert lobby.players["b"].place is Place.IDLE


def test_start_record_fields() -> None:
    lobby = new_lobby()
    login(lobby, "a", rating=1490)
    login(lobby, "b", rating=1510)
    lobby.join_queue(session("a"), "duel", 0.0)
    lobby.join_queue(session("b"), "duel", 4.0)
    lobby.tick(4.0)
    lobby.accept(session("a"), "m1", 5.0)
    (start,) = of_type(lobby.accept(session("b"), "m1", 6.0), fx.StartMatch)

    assert start.record.id == "m1"
    assert start.record.queue == "duel"
    assert start.record.teams == (("a",), ("b",))
    assert start.record.ratings == ((1490,), (1510,))
    assert start.record.state is MatchState.STARTED
    assert start.record.created_at == 4.0
    assert start.record.ended_at == 6.0
    assert start.record.waits == (4.0, 0.0)
    assert start.record.reason is None


def test_squad_start_team_indexes() -> None:
    lobby = squad_check()
    effects: list[fx.Effect] = []
    for player in ("a", "b", "c", "d"):
        effects = lobby.accept(session(player), "m1", 21.0)

    teams = [["a", "d"], ["b", "c"]]
    for player, team in (("a", 0), ("d", 0), ("b", 1), ("c", 1)):
        starts = of_type(inbox(effects, session(player)), m.MatchStart)
        assert [start.team for start in starts] == [team]
        assert starts[0].teams == teams


def test_repeated_accept_replies_accepted() -> None:
    lobby = duel_check()
    lobby.accept(session("a"), "m1", 1.0)
    again = lobby.accept(session("a"), "m1", 2.0, rid=6)

    assert inbox(again, session("a")) == [m.Accepted(match="m1", rid=6)]
    assert of_type(again, fx.StartMatch) == []
    assert lobby.checks["m1"].accepted == {"a"}


def test_accept_after_start_repeats() -> None:
    lobby = duel_check()
    lobby.accept(session("a"), "m1", 1.0)
    lobby.accept(session("b"), "m1", 2.0)
    effects = lobby.accept(session("b"), "m1", 3.0, rid=4)

    assert effects == [fx.Send(session("b"), m.Accepted(match="m1", rid=4))]


def test_decline_after_start_rejected() -> None:
    lobby = duel_check()
    lobby.accept(session("a"), "m1", 1.0)
    lobby.accept(session("b"), "m1", 2.0)
    with pytest.raises(UnknownMatch) as caught:
        lobby.decline(session("b"), "m1", 3.0, rid=4)

    assert caught.value.message == "match 'm1' is already started"
    assert caught.value.rid == 4


def test_accept_past_deadline_expires() -> None:
    lobby = duel_check()
    deadline = lobby.checks["m1"].deadline
    lobby.accept(session("a"), "m1", 1.0)
    effects = lobby.accept(session("b"), "m1", deadline, rid=6)

    assert "m1" not in lobby.checks
    assert lobby.finished["m1"][0] is CheckState.CANCELLED
    assert not [e for e in effects if isinstance(e, fx.StartMatch)]
    errors = [e.message for e in effects if isinstance(e, fx.Send) and isinstance(e.message, m.Error)]
    assert [(e.code, e.rid) for e in errors] == [("unknown_match", 6)]
    cancels = [e.message for e in effects if isinstance(e, fx.Send) and isinstance(e.message, m.MatchCancelled)]
    assert sorted((c.reason, c.requeued) for c in cancels) == [("expired", False), ("expired", True)]


def test_repeated_accept_one_event() -> None:
    lobby = duel_check()
    first = lobby.accept(session("a"), "m1", 1.0)
    second = lobby.accept(session("a"), "m1", 1.5)

    assert [e.name for e in first if isinstance(e, fx.Event)] == ["match_accepted"]
    assert [e for e in second if isinstance(e, fx.Event)] == []


def test_accept_unknown_match_rejected() -> None:
    lobby = duel_check()
    with pytest.raises(UnknownMatch) as caught:
        lobby.accept(session("a"), "m9", 1.0, rid=3)

    assert caught.value.code == "unknown_match"
    assert caught.value.message == "match 'm9' has no ready check for player 'a'"
    assert caught.value.rid == 3
    assert lobby.checks["m1"].accepted == set()


def test_accept_cancelled_match_rejected() -> None:
    lobby = duel_check()
    lobby.decline(session("b"), "m1", 1.0)
    with pytest.raises(UnknownMatch) as caught:
        lobby.accept(session("a"), "m1", 2.0)

    assert caught.value.message == "match 'm1' is already cancelled"


def test_accept_other_players_match_rejected() -> None:
    lobby = duel_check()
    login(lobby, "c")
    with pytest.raises(UnknownMatch) as caught:
        lobby.accept(session("c"), "m1", 1.0)

    assert caught.value.message == "match 'm1' has no ready check for player 'c'"
    assert lobby.checks["m1"].accepted == set()


def test_decline_cancels_for_everyone() -> None:
    lobby = squad_check()
    lobby.accept(session("b"), "m1", 21.0)
    lobby.accept(session("c"), "m1", 21.0)
    effects = lobby.decline(session("a"), "m1", 22.0, rid=3)

    assert inbox(effects, session("a")) == [m.MatchCancelled(match="m1", reason="declined", requeued=False, rid=3)]
    for player, requeued in (("b", True), ("c", True), ("d", False)):
        assert inbox(effects, session(player)) == [m.MatchCancelled(match="m1", reason="declined", requeued=requeued)]
    (saved,) = of_type(effects, fx.SaveMatch)
    assert saved.record.state is MatchState.CANCELLED
    assert saved.record.reason == "declined"


def test_decline_requeues_accepted_with_priority() -> None:
    lobby = squad_check()
    lobby.accept(session("b"), "m1", 21.0)
    lobby.accept(session("c"), "m1", 21.0)
    lobby.decline(session("a"), "m1", 22.0)

    assert sorted(lobby.queues["squad"]) == ["b", "c"]
    for player in ("b", "c"):
        assert lobby.queues["squad"][player].priority is True
        assert lobby.queues["squad"][player].waiting_since == 0.0
    assert lobby.players["a"].place is Place.IDLE
    assert lobby.players["d"].place is Place.IDLE


def test_decline_after_own_accept() -> None:
    lobby = duel_check()
    lobby.accept(session("a"), "m1", 1.0)
    effects = lobby.decline(session("a"), "m1", 2.0)

    assert inbox(effects, session("a")) == [m.MatchCancelled(match="m1", reason="declined", requeued=False)]
    assert lobby.queues["duel"] == {}


def test_decline_stale_match_rejected() -> None:
    lobby = duel_check()
    lobby.decline(session("a"), "m1", 1.0)
    with pytest.raises(UnknownMatch) as caught:
        lobby.decline(session("b"), "m1", 2.0, rid=11)

    assert caught.value.message == "match 'm1' is already cancelled"
    assert caught.value.rid == 11


def test_tick_keeps_check_before_deadline() -> None:
    lobby = squad_check()
    effects = lobby.tick(29.99)

    assert sends(effects) == []
    assert "m1" in lobby.checks


def test_tick_expires_check_at_deadline() -> None:
    lobby = squad_check()
    lobby.accept(session("b"), "m1", 21.0)
    effects = lobby.tick(30.0)

    for player, requeued in (("a", False), ("b", True), ("c", False), ("d", False)):
        assert inbox(effects, session(player)) == [m.MatchCancelled(match="m1", reason="expired", requeued=requeued)]
    assert lobby.checks == {}
    assert sorted(lobby.queues["squad"]) == ["b"]
    assert lobby.queues["squad"]["b"].priority is True
    assert lobby.queues["squad"]["b"].waiting_since == 0.0


def test_finished_check_rejects_events() -> None:
    lobby = duel_check()
    check = lobby.checks["m1"]
    lobby.decline(session("a"), "m1", 1.0)
    with pytest.raises(IllegalTransition) as caught:
        check.apply(CheckEvent.ACCEPT)

    assert str(caught.value) == "ready check m1: event 'accept' is illegal in state 'cancelled'"


# Undeliverable offers.


def test_void_match_sends_nothing() -> None:
    lobby = duel_check()
    effects = lobby.void_match("m1", ["b"], 0.5)

    assert sends(effects) == []
    assert of_type(effects, fx.Close) == []
    (saved,) = of_type(effects, fx.SaveMatch)
    assert saved.record.reason == "undeliverable"


def test_void_match_requeues_reachable() -> None:
    lobby = duel_check()
    lobby.void_match("m1", ["b"], 0.5)

    assert lobby.checks == {}
    assert sorted(lobby.queues["duel"]) == ["a"]
    assert lobby.queues["duel"]["a"].priority is True
    assert lobby.queues["duel"]["a"].waiting_since == 0.0
    assert lobby.players["b"].place is Place.IDLE


def test_void_then_disconnect_quiet() -> None:
    lobby = duel_check()
    lobby.void_match("m1", ["b"], 0.5)
    effects = lobby.disconnect(session("b"), 0.6)

    assert sends(effects) == []
    assert of_type(effects, fx.SaveMatch) == []
    assert sorted(lobby.queues["duel"]) == ["a"]


def test_void_after_disconnect_noop() -> None:
    lobby = duel_check()
    lobby.disconnect(session("b"), 0.5)

    assert lobby.void_match("m1", ["b"], 0.5) == []
    assert lobby.checks == {}


# Forgetting old state.


def test_forget_drops_old_finished_checks() -> None:
    lobby = duel_check()
    lobby.decline(session("a"), "m1", 1.0)

    assert lobby.forget(301.0, player_ttl=1_000.0) == 0
    assert "m1" in lobby.finished
    assert lobby.forget(301.5, player_ttl=1_000.0) == 1
    assert "m1" not in lobby.finished


def test_forget_changes_late_answer_error() -> None:
    lobby = duel_check()
    lobby.decline(session("a"), "m1", 1.0)
    lobby.forget(400.0, player_ttl=1_000.0)
    with pytest.raises(UnknownMatch) as caught:
        lobby.accept(session("b"), "m1", 400.0)

    assert caught.value.message == "match 'm1' has no ready check for player 'b'"


def test_forget_drops_idle_offline_players() -> None:
    lobby = new_lobby()
    for player in ("gone", "recent", "online"):
        login(lobby, player)
    lobby.disconnect(session("gone"), 10.0)
    lobby.disconnect(session("recent"), 50.0)

    assert lobby.forget(100.0, player_ttl=60.0) == 1
    assert sorted(lobby.players) == ["online", "recent"]
    assert lobby.known_record("gone") is None


def test_forget_keeps_online_players() -> None:
    lobby = new_lobby()
    login(lobby, "a", now=0.0)
    queue_up(lobby, "duel", ["a"])

    assert lobby.forget(10_000.0, player_ttl=1.0) == 0
    assert sorted(lobby.players) == ["a"]
    assert sorted(lobby.queues["duel"]) == ["a"]


def test_forgotten_player_reloads_record() -> None:
    lobby = new_lobby()
    login(lobby, "a", rating=1700)
    lobby.disconnect(session("a"), 1.0)
    lobby.forget(100.0, player_ttl=10.0)
    record = PlayerRecord("a", "A", 1710, 0.0, 1.0)
    effects = lobby.connect("s-a2", record, "a", None, 200.0)

    assert inbox(effects, "s-a2")[0] == m.Welcome(session="s-a2", player="a", heartbeat_ms=10_000, rating=1710)


def test_tick_stops_at_match_budget() -> None:
    lobby = Lobby({"duel": QueueRules("duel", 2, 1)}, LobbySettings(max_matches_per_tick=2), match_ids())
    names = [f"p{i}" for i in range(10)]
    for name in names:
        login(lobby, name)
    queue_up(lobby, "duel", names)

    first = lobby.tick(0.0)
    assert len([e for e in first if isinstance(e, fx.OfferMatch)]) == 2
    assert lobby.more_to_match is True
    assert len(lobby.queues["duel"]) == 6

    lobby.tick(0.0)
    lobby.tick(0.0)
    assert len(lobby.queues["duel"]) == 0
    last = lobby.tick(0.0)
    assert [e for e in last if isinstance(e, fx.OfferMatch)] == []
    assert lobby.more_to_match is False
