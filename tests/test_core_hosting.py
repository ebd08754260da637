"""Unit tests of hosted matches in the core: allocation, results, ratings, release and loss.

Every test drives a ``Lobby`` with hosting on, literal times and match ids m1, m2, ...
Game servers are sessions named ``g-<id>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.expansion import Expansion
from lobbyd.core.game_servers import StaticServer
from lobbyd.core.hosting import Hosting, HostingSettings
from lobbyd.core.join_ticket import verify
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, MatchState, Place, PlayerRecord, QueueRules
from lobbyd.core.ratings import NEW_SKILL, display_rating, rate
from lobbyd.errors import (
    AlreadyReported,
    InMatch,
    InvalidResult,
    MatchOver,
    UnknownMatch,
    UnknownPlayer,
    UnknownQueue,
)
from lobbyd.protocol import messages as m

KEY = b"t" * 32
QUEUES = {
    "duel": QueueRules("duel", team_count=2, team_size=1),
    "eu_duel": QueueRules("eu_duel", team_count=2, team_size=1, region="eu"),
    "trio": QueueRules("trio", team_count=3, team_size=1, window_start=500.0),
    "near": QueueRules(
        "near", team_count=2, team_size=1, latency_steps=Expansion.of((0.0, 100.0)), regions=("eu", "us")
    ),
}
SETTINGS = LobbySettings(ready_timeout=10.0, heartbeat_ms=10_000, finished_ttl=300.0)
HOSTING = HostingSettings(ticket_key=KEY, allocate_timeout=5.0, ticket_ttl=60.0, match_timeout=600.0)


def new_lobby(hosting: HostingSettings = HOSTING) -> Lobby:
    counter = itertools.count(1)
    return Lobby(QUEUES, SETTINGS, lambda: f"m{next(counter)}", hosting)


def sends(effects: Iterable[fx.Effect]) -> list[fx.Send]:
    found: list[fx.Send] = []
    for effect in effects:
        if isinstance(effect, fx.Send):
            found.append(effect)
        elif isinstance(effect, fx.OfferMatch | fx.StartMatch | fx.FinishMatch):
            found.extend(effect.sends)
    return found


def inbox(effects: Iterable[fx.Effect], session: str) -> list[m.ServerMessage]:
    return [send.message for send in sends(effects) if send.session == session]


def _hosting(lobby: Lobby) -> Hosting:
    assert lobby.hosting is not None
    return lobby.hosting


def register(
    lobby: Lobby, server: str, capacity: int = 2, queues: tuple[str, ...] = ("duel", "trio"), region: str = "default"
) -> list[fx.Effect]:
    address = f"{server}.example:7777"
    message = m.Register(
        v=1, server=server, secret="x", address=address, capacity=capacity, queues=list(queues), region=region
    )
    return _hosting(lobby).register(f"g-{server}", message, 0.0)


def offer(lobby: Lobby, players: Iterable[str], queue: str = "duel", now: float = 1.0) -> list[fx.OfferMatch]:
    """Log in ``players``, queue them and return the offers of one tick."""
    for player in players:
        lobby.connect(f"s-{player}", PlayerRecord(player, player.upper(), 1500, 0.0, 0.0), player, None, now)
        lobby.join_queue(f"s-{player}", queue, now)
    return [e for e in lobby.tick(now) if isinstance(e, fx.OfferMatch)]


def events(effects: Iterable[fx.Effect], name: str) -> list[fx.Event]:
    return [e for e in effects if isinstance(e, fx.Event) and e.name == name]


def play_to_all_accepted(
    lobby: Lobby, players: Iterable[str], queue: str = "duel", now: float = 1.0
) -> list[fx.Effect]:
    """Log in ``players``, queue them, form one match and accept it from everyone."""
    players = list(players)
    for player in players:
        lobby.connect(f"s-{player}", PlayerRecord(player, player.upper(), 1500, 0.0, 0.0), player, None, now)
        lobby.join_queue(f"s-{player}", queue, now)
    offer = [e for e in lobby.tick(now) if isinstance(e, fx.OfferMatch)]
    assert len(offer) == 1
    effects: list[fx.Effect] = []
    for player in players:
        effects = lobby.accept(f"s-{player}", offer[0].match, now)
    return effects


# Allocation.


def test_allocate_sent_before_match_start() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")

    effects = play_to_all_accepted(lobby, ["a", "b"])

    (allocate,) = inbox(effects, "g-gs1")
    assert isinstance(allocate, m.Allocate)
    assert allocate.match == "m1"
    assert allocate.allocate_ms == 5000
    assert [(p.player, p.name, p.team) for p in allocate.players] == [("a", "A", 0), ("b", "B", 1)]
    for entry in allocate.players:
        assert verify(KEY, entry.ticket, 1.0).player == entry.player
    assert inbox(effects, "s-b") == [m.Accepted(match="m1")]
    assert [e for e in effects if isinstance(e, fx.StartMatch)] == []
    assert lobby.players["a"].place is Place.IN_MATCH


def test_acknowledge_starts_with_server_and_ticket() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")
    play_to_all_accepted(lobby, ["a", "b"])

    effects = _hosting(lobby).acknowledge("g-gs1", "m1", 2.0)

    (start,) = [e for e in effects if isinstance(e, fx.StartMatch)]
    assert start.record.server == "gs1.example:7777"
    assert start.record.state is MatchState.STARTED
    (message,) = inbox(effects, "s-b")
    assert isinstance(message, m.MatchStart)
    assert message.server == "gs1.example:7777"
    assert message.team == 1
    assert message.ticket is not None
    claims = verify(KEY, message.ticket, 2.0)
    assert (claims.player, claims.match, claims.expires) == ("b", "m1", 62)
    assert _hosting(lobby).counts.allocated == 1
    assert _hosting(lobby).acknowledge("g-gs1", "m1", 2.5) == []


def test_no_server_requeues_with_priority() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")
    (found,) = offer(lobby, ["a", "b"], now=1.0)
    _hosting(lobby).server_lost("g-gs1", 1.0)

    effects: list[fx.Effect] = []
    for player in ("a", "b"):
        effects = lobby.accept(f"s-{player}", found.match, 1.0)

    assert inbox(effects, "s-b")[-1] == m.MatchCancelled(match="m1", reason="no_server", requeued=True)
    for player in ("a", "b"):
        ticket = lobby.queues["duel"][player]
        assert ticket.priority is True
        assert ticket.waiting_since == 1.0
    (saved,) = [e.record for e in effects if isinstance(e, fx.SaveMatch)]
    assert (saved.state, saved.reason) == (MatchState.CANCELLED, "no_server")
    assert _hosting(lobby).counts.no_server == 1


def test_region_and_queue_must_fit() -> None:
    lobby = new_lobby()
    register(lobby, "gs1", queues=("eu_duel",), region="us")

    assert offer(lobby, ["a", "b"], queue="eu_duel") == []
    assert lobby.players["a"].place is Place.QUEUED
    assert "eu_duel" in _hosting(lobby).queues_on_hold


def test_no_match_forms_without_a_free_server() -> None:
    # Without the check, the pair would be offered, accept, get no_server and be
    # offered again on every tick for as long as no server is free.
    lobby = new_lobby()

    assert offer(lobby, ["a", "b"], now=1.0) == []
    assert "duel" in _hosting(lobby).queues_on_hold
    again = lobby.tick(2.0)
    assert [e for e in again if isinstance(e, fx.OfferMatch)] == []
    assert events(again, "queue_held") == []

    register(lobby, "gs1", capacity=1)
    resumed = lobby.tick(3.0)

    assert len([e for e in resumed if isinstance(e, fx.OfferMatch)]) == 1
    assert [e.fields["queue"] for e in events(resumed, "queue_resumed")] == ["duel", "trio"]
    assert lobby.checks["m1"].tickets["a"].waiting_since == 1.0


def test_latency_queue_forms_only_where_a_server_is_free() -> None:
    # Both players are nearer us, but only eu has a server: the match must form in eu,
    # which is within the limit, not in us, where it would end in no_server.
    lobby = new_lobby()
    register(lobby, "gs-eu", queues=("near",), region="eu")
    for player in ("a", "b"):
        lobby.connect(f"s-{player}", PlayerRecord(player, player.upper(), 1500, 0.0, 0.0), player, None, 1.0)
        lobby.join_queue(f"s-{player}", "near", 1.0, latency={"eu": 90.0, "us": 20.0})

    (found,) = [e for e in lobby.tick(1.0) if isinstance(e, fx.OfferMatch)]
    assert lobby.checks[found.match].region == "eu"
    effects: list[fx.Effect] = []
    for player in ("a", "b"):
        effects = lobby.accept(f"s-{player}", found.match, 1.0)

    (allocate,) = inbox(effects, "g-gs-eu")
    assert isinstance(allocate, m.Allocate)
    assert allocate.region == "eu"


def test_running_ready_checks_hold_server_slots() -> None:
    lobby = new_lobby()
    register(lobby, "gs1", capacity=1)

    offers = offer(lobby, ["a", "b", "c", "d"])
    assert len(offers) == 1
    assert [e for e in lobby.tick(2.0) if isinstance(e, fx.OfferMatch)] == []

    # A decline ends the check and frees its slot for the players still waiting.
    declined = lobby.checks[offers[0].match].players[0]
    lobby.decline(f"s-{declined}", offers[0].match, 2.0)
    assert len([e for e in lobby.tick(3.0) if isinstance(e, fx.OfferMatch)]) == 1


def test_least_loaded_server_chosen() -> None:
    lobby = new_lobby()
    register(lobby, "big", capacity=3)
    register(lobby, "small", capacity=1)

    first = play_to_all_accepted(lobby, ["a", "b"])
    second = play_to_all_accepted(lobby, ["c", "d"])
    third = play_to_all_accepted(lobby, ["e", "f"])

    assert inbox(first, "g-big") != []
    assert inbox(second, "g-small") != []
    assert inbox(third, "g-big") != []
    fourth = play_to_all_accepted(lobby, ["g", "h"])
    assert inbox(fourth, "g-big") != []
    assert offer(lobby, ["i", "j"]) == []


def test_refusal_requeues_and_frees_slot() -> None:
    lobby = new_lobby()
    register(lobby, "gs1", capacity=1)
    play_to_all_accepted(lobby, ["a", "b"])

    effects = _hosting(lobby).refuse("g-gs1", "m1", "full", 2.0)

    assert inbox(effects, "s-a") == [m.MatchCancelled(match="m1", reason="allocation_failed", requeued=True)]
    assert lobby.queues["duel"]["a"].priority is True
    assert _hosting(lobby).pool.servers["gs1"].matches == {}
    with pytest.raises(MatchOver):
        _hosting(lobby).acknowledge("g-gs1", "m1", 2.5)


def test_server_rests_after_a_refusal() -> None:
    # Without the rest the requeued pair would be offered at once and sent to the same
    # server, which refuses again, in a loop.
    lobby = new_lobby()
    register(lobby, "gs1", capacity=1)
    play_to_all_accepted(lobby, ["a", "b"], now=1.0)
    _hosting(lobby).refuse("g-gs1", "m1", "maintenance", 2.0)

    assert [e for e in lobby.tick(2.0) if isinstance(e, fx.OfferMatch)] == []
    assert [e for e in lobby.tick(6.9) if isinstance(e, fx.OfferMatch)] == []
    rested = lobby.tick(7.0)

    assert len(events(rested, "game_server_rested")) == 1
    assert len([e for e in rested if isinstance(e, fx.OfferMatch)]) == 1


def test_server_rests_after_a_missed_allocation() -> None:
    lobby = new_lobby()
    register(lobby, "gs1", capacity=1)
    play_to_all_accepted(lobby, ["a", "b"], now=1.0)

    timed_out = lobby.tick(6.0)

    assert inbox(timed_out, "g-gs1") == [m.Deallocate(match="m1", reason="timed_out")]
    assert [e for e in timed_out if isinstance(e, fx.OfferMatch)] == []
    assert len([e for e in lobby.tick(11.0) if isinstance(e, fx.OfferMatch)]) == 1


def test_allocation_timeout_deallocates() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")
    play_to_all_accepted(lobby, ["a", "b"], now=1.0)

    assert inbox(lobby.tick(5.9), "s-a") == []
    effects = lobby.tick(6.0)

    assert inbox(effects, "g-gs1") == [m.Deallocate(match="m1", reason="timed_out")]
    assert inbox(effects, "s-a")[0] == m.MatchCancelled(match="m1", reason="allocation_failed", requeued=True)
    assert _hosting(lobby).counts.timed_out == 1


def test_disconnected_player_not_requeued() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")
    play_to_all_accepted(lobby, ["a", "b"])
    lobby.disconnect("s-a", 1.5)

    effects = _hosting(lobby).refuse("g-gs1", "m1", None, 2.0)

    assert lobby.players["a"].place is Place.IDLE
    assert "a" not in lobby.queues["duel"]
    assert inbox(effects, "s-b") == [m.MatchCancelled(match="m1", reason="allocation_failed", requeued=True)]


def test_static_server_starts_at_once() -> None:
    static = StaticServer("10.1.1.1:7777", capacity=1, queues=frozenset({"duel"}))
    lobby = new_lobby(HostingSettings(ticket_key=KEY, static_servers=(static,), static_slot=100.0))

    effects = play_to_all_accepted(lobby, ["a", "b"], now=1.0)

    (start,) = [e for e in effects if isinstance(e, fx.StartMatch)]
    assert start.record.server == "10.1.1.1:7777"
    message = inbox(effects, "s-b")[-1]
    assert isinstance(message, m.MatchStart)
    assert message.server == "10.1.1.1:7777"
    assert lobby.players["a"].place is Place.IDLE
    assert offer(lobby, ["c", "d"], now=2.0) == []
    freed = lobby.tick(101.0)
    assert events(freed, "static_slot_freed") != []
    assert len([e for e in freed if isinstance(e, fx.OfferMatch)]) == 1


# Running matches.


def start_match(lobby: Lobby, players: Iterable[str] = ("a", "b"), queue: str = "duel") -> None:
    register(lobby, "gs1")
    play_to_all_accepted(lobby, players, queue=queue)
    _hosting(lobby).acknowledge("g-gs1", "m1", 2.0)


def test_join_queue_rejected_in_match() -> None:
    lobby = new_lobby()
    start_match(lobby)

    with pytest.raises(InMatch):
        lobby.join_queue("s-a", "duel", 3.0, rid=4)


def test_result_rates_like_openskill() -> None:
    lobby = new_lobby()
    start_match(lobby)

    effects = _hosting(lobby).report("g-gs1", m.MatchResult(match="m1", winner=1, rid=9), 10.0)

    (winner,), (loser,) = rate([[NEW_SKILL], [NEW_SKILL]], [1, 0])
    assert lobby.players["a"].skill == winner
    assert lobby.players["b"].skill == loser
    assert (lobby.players["b"].games, lobby.players["b"].wins) == (1, 1)
    assert (lobby.players["a"].games, lobby.players["a"].wins) == (1, 0)
    assert inbox(effects, "g-gs1") == [m.ResultApplied(match="m1", rid=9)]
    ended, changed = inbox(effects, "s-b")
    assert ended == m.MatchEnded(match="m1", reason="finished")
    assert isinstance(changed, m.RatingChanged)
    assert changed.rating == display_rating(loser)
    assert changed.change == display_rating(loser) - 1500
    (finish,) = [e for e in effects if isinstance(e, fx.FinishMatch)]
    assert finish.record.state is MatchState.FINISHED
    assert finish.record.ranks == (1, 0)
    assert {record.id: record.mu for record in finish.players} == {"a": winner.mu, "b": loser.mu}
    assert lobby.players["a"].place is Place.IDLE


def test_result_applied_once() -> None:
    lobby = new_lobby()
    start_match(lobby)
    _hosting(lobby).report("g-gs1", m.MatchResult(match="m1", winner=0), 10.0)
    skill = lobby.players["a"].skill

    with pytest.raises(AlreadyReported):
        _hosting(lobby).report("g-gs1", m.MatchResult(match="m1", winner=1), 11.0)
    assert lobby.players["a"].skill == skill
    assert _hosting(lobby).counts.finished == 1
    assert _hosting(lobby).counts.results_rejected == 1


def test_result_from_other_server_rejected() -> None:
    lobby = new_lobby()
    start_match(lobby)
    register(lobby, "gs2")

    with pytest.raises(UnknownMatch):
        _hosting(lobby).report("g-gs2", m.MatchResult(match="m1", winner=0), 10.0)
    assert lobby.players["a"].skill is None


@pytest.mark.parametrize(
    "result",
    [
        m.MatchResult(match="m1"),
        m.MatchResult(match="m1", winner=0, ranks=[0, 1]),
        m.MatchResult(match="m1", winner=2),
        m.MatchResult(match="m1", ranks=[0, 1, 2]),
        m.MatchResult(match="m1", winner=0, scores={"zed": 1.0}),
    ],
)
def test_invalid_result_changes_nothing(result: m.MatchResult) -> None:
    lobby = new_lobby()
    start_match(lobby)

    with pytest.raises(InvalidResult):
        _hosting(lobby).report("g-gs1", result, 10.0)
    assert lobby.players["a"].place is Place.IN_MATCH
    assert lobby.players["a"].skill is None


def test_result_before_acknowledge_rejected() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")
    play_to_all_accepted(lobby, ["a", "b"])

    with pytest.raises(MatchOver):
        _hosting(lobby).report("g-gs1", m.MatchResult(match="m1", winner=0), 3.0)


def test_ranks_with_draw_and_scores() -> None:
    lobby = new_lobby()
    start_match(lobby, ["a", "b", "c"], queue="trio")

    result = m.MatchResult(match="m1", ranks=[5, 5, 9], scores={"a": 3.0})
    effects = _hosting(lobby).report("g-gs1", result, 10.0)

    (finish,) = [e for e in effects if isinstance(e, fx.FinishMatch)]
    assert finish.record.ranks == (0, 0, 1)
    assert finish.record.scores is not None
    assert sum(1 for team in finish.record.scores for score in team if score is not None) == 1
    assert all(lobby.players[p].wins == 0 for p in "abc")


def test_release_frees_player() -> None:
    lobby = new_lobby()
    start_match(lobby)

    effects = _hosting(lobby).release("g-gs1", "m1", "a", 5.0, rid=3)

    assert inbox(effects, "s-a") == [m.MatchEnded(match="m1", reason="released")]
    assert inbox(effects, "g-gs1") == [m.PlayerReleased(match="m1", player="a", rid=3)]
    assert lobby.players["a"].place is Place.IDLE
    lobby.join_queue("s-a", "duel", 5.0)
    with pytest.raises(UnknownPlayer):
        _hosting(lobby).release("g-gs1", "m1", "zed", 5.0)

    finished = _hosting(lobby).report("g-gs1", m.MatchResult(match="m1", winner=0), 9.0)
    assert [type(msg) for msg in inbox(finished, "s-a")] == [m.RatingChanged]
    assert lobby.players["a"].place is Place.QUEUED


def test_server_loss_abandons_running_match() -> None:
    lobby = new_lobby()
    start_match(lobby)

    effects = lobby.disconnect("g-gs1", 20.0)

    assert inbox(effects, "s-a") == [m.MatchEnded(match="m1", reason="abandoned")]
    (saved,) = [e.record for e in effects if isinstance(e, fx.SaveMatch)]
    assert (saved.state, saved.reason) == (MatchState.ABANDONED, "server_lost")
    assert lobby.players["a"].skill is None
    assert lobby.players["a"].place is Place.IDLE
    assert "gs1" not in _hosting(lobby).pool.servers
    assert _hosting(lobby).counts.abandoned == 1


def test_server_loss_logs_its_matches() -> None:
    lobby = new_lobby()
    start_match(lobby)

    effects = lobby.disconnect("g-gs1", 20.0)

    (event,) = [e for e in effects if isinstance(e, fx.Event) and e.name == "game_server_lost"]
    assert event.fields == {"server": "gs1", "matches": ["m1"]}


def test_storage_failure_frees_slots() -> None:
    static = StaticServer("10.1.1.1:7777", capacity=1, queues=frozenset({"duel"}))
    lobby = new_lobby(HostingSettings(ticket_key=KEY, static_servers=(static,)))
    play_to_all_accepted(lobby, ["a", "b"])

    assert lobby.abort_start("m1", 2.0) == []

    assert _hosting(lobby).pool.servers["10.1.1.1:7777"].matches == {}
    registered = new_lobby()
    start_match(registered)
    effects = registered.abort_start("m1", 3.0)
    assert inbox(effects, "g-gs1") == [m.Deallocate(match="m1", reason="storage_failed")]
    assert registered.players["a"].place is Place.IDLE
    assert _hosting(registered).pool.servers["gs1"].matches == {}


def test_server_loss_while_allocating_requeues() -> None:
    lobby = new_lobby()
    register(lobby, "gs1")
    play_to_all_accepted(lobby, ["a", "b"], now=1.0)

    effects = lobby.disconnect("g-gs1", 2.0)

    assert inbox(effects, "s-a") == [m.MatchCancelled(match="m1", reason="allocation_failed", requeued=True)]
    assert lobby.queues["duel"]["a"].priority is True
    assert _hosting(lobby).counts.lost_while_allocating == 1


def test_match_timeout_abandons() -> None:
    lobby = new_lobby()
    start_match(lobby)

    effects = lobby.tick(602.0)

    assert inbox(effects, "g-gs1") == [m.Deallocate(match="m1", reason="timed_out")]
    assert inbox(effects, "s-a") == [m.MatchEnded(match="m1", reason="timed_out")]
    with pytest.raises(MatchOver):
        _hosting(lobby).report("g-gs1", m.MatchResult(match="m1", winner=0), 603.0)


def test_reconnect_gets_match_start_again() -> None:
    lobby = new_lobby()
    start_match(lobby)
    lobby.disconnect("s-a", 3.0)
    assert lobby.players["a"].place is Place.IN_MATCH

    effects = lobby.connect("s-a2", None, "a", None, 4.0)

    welcome, start = inbox(effects, "s-a2")
    assert isinstance(welcome, m.Welcome)
    assert isinstance(start, m.MatchStart)
    assert start.server == "gs1.example:7777"
    assert start.ticket is not None
    assert verify(KEY, start.ticket, 4.0).expires == 64


def test_reregister_kicks_old_session() -> None:
    lobby = new_lobby()
    start_match(lobby)

    effects = register(lobby, "gs1")

    assert fx.Close("g-gs1", "logged_in_elsewhere") in effects
    assert inbox(effects, "s-a") == [m.MatchEnded(match="m1", reason="abandoned")]


def test_register_unknown_queue_rejected() -> None:
    lobby = new_lobby()

    with pytest.raises(UnknownQueue):
        register(lobby, "gs1", queues=("duel", "ranked"))
    assert _hosting(lobby).pool.servers == {}


def test_forget_keeps_match_players() -> None:
    lobby = new_lobby()
    start_match(lobby)
    _hosting(lobby).release("g-gs1", "m1", "a", 5.0)
    lobby.disconnect("s-a", 5.0)
    lobby.disconnect("s-b", 5.0)

    lobby.forget(10_000.0, player_ttl=1.0)

    assert {"a", "b"} <= set(lobby.players)
