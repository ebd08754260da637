"""Unit tests of the dodge penalty ladder and how the lobby applies it."""

from __future__ import annotations

import dataclasses

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import Place, PlayerRecord
from lobbyd.core.penalties import Penalty, PenaltyLadder
from lobbyd.errors import QueueLocked
from lobbyd.protocol import messages as m
from tests.test_core_lobby import QUEUES, SETTINGS, inbox, login, match_ids, of_type, queue_up, session

# A warning, then 5 minutes, then 30 minutes, and one rung off per clean day.
LADDER = PenaltyLadder(lockouts=(0.0, 300.0, 1800.0), decay_after=86_400.0)
DAY = 86_400.0


def penalised_lobby() -> Lobby:
    return Lobby(QUEUES, dataclasses.replace(SETTINGS, penalties=LADDER), match_ids())


def propose_duel(lobby: Lobby, now: float) -> str:
    """Queue a and b for duel at ``now``, tick, and return the proposed match id."""
    for player in ("a", "b"):
        if lobby.players.get(player) is None:
            login(lobby, player, now=now)
    queue_up(lobby, "duel", ["a", "b"], now=now)
    offer = of_type(lobby.tick(now), fx.OfferMatch)
    assert len(offer) == 1
    return offer[0].match


# The ladder alone.


@pytest.mark.parametrize(
    ("dodges", "level", "locked_until"),
    [(1, 1, 100.0), (2, 2, 400.0), (3, 3, 1900.0), (4, 4, 1900.0)],
)
def test_ladder_climbs_rung_per_dodge(dodges: int, level: int, locked_until: float) -> None:
    penalty = Penalty()
    for _ in range(dodges):
        penalty = penalty.after_dodge(LADDER, 100.0)

    assert penalty.level == level
    assert penalty.locked_until == locked_until


def test_ladder_decays_per_clean_period() -> None:
    penalty = Penalty(level=3, since=0.0, locked_until=1800.0)

    assert penalty.level_at(LADDER, DAY - 1) == 3
    assert penalty.level_at(LADDER, DAY) == 2
    assert penalty.level_at(LADDER, 2 * DAY + 5) == 1
    assert penalty.level_at(LADDER, 10 * DAY) == 0


def test_dodge_after_decay_restarts_lower() -> None:
    penalty = Penalty(level=2, since=0.0, locked_until=300.0)

    after = penalty.after_dodge(LADDER, DAY + 10.0)

    assert after == Penalty(level=2, since=DAY + 10.0, locked_until=DAY + 310.0)


def test_remaining_never_negative() -> None:
    assert Penalty(1, 0.0, 300.0).remaining(100.0) == 200.0
    assert Penalty(1, 0.0, 300.0).remaining(500.0) == 0.0


def test_ladder_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least one rung"):
        PenaltyLadder(lockouts=())
    with pytest.raises(ValueError, match="decay_after must be positive, got 0"):
        PenaltyLadder(decay_after=0.0)


# The lobby.


def test_decline_warns_first() -> None:
    lobby = penalised_lobby()
    match = propose_duel(lobby, 0.0)

    effects = lobby.decline(session("a"), match, 1.0, rid=4)

    cancelled = m.MatchCancelled(match=match, reason="declined", requeued=False, penalty_level=1, lockout_ms=0, rid=4)
    assert inbox(effects, session("a")) == [cancelled]
    assert inbox(effects, session("b")) == [m.MatchCancelled(match=match, reason="declined", requeued=False)]
    assert lobby.players["a"].penalty == Penalty(1, 1.0, 1.0)
    assert lobby.players["b"].penalty == Penalty()


def test_decline_stores_penalty() -> None:
    lobby = penalised_lobby()
    match = propose_duel(lobby, 0.0)

    effects = lobby.decline(session("a"), match, 1.0)

    saved = [effect.record for effect in of_type(effects, fx.SavePlayer) if effect.record.id == "a"]
    assert len(saved) == 1
    assert (saved[0].penalty_level, saved[0].penalty_since, saved[0].locked_until) == (1, 1.0, 1.0)
    events = [effect for effect in of_type(effects, fx.Event) if effect.name == "dodge_penalised"]
    assert [event.fields for event in events] == [{"player": "a", "match": match, "level": 1, "lockout_ms": 0}]


def test_second_decline_locks_out() -> None:
    lobby = penalised_lobby()
    lobby.decline(session("a"), propose_duel(lobby, 0.0), 1.0)
    match = propose_duel(lobby, 10.0)

    effects = lobby.decline(session("a"), match, 11.0)

    mine = inbox(effects, session("a"))
    assert mine == [
        m.MatchCancelled(match=match, reason="declined", requeued=False, penalty_level=2, lockout_ms=300_000)
    ]
    with pytest.raises(QueueLocked) as caught:
        lobby.join_queue(session("a"), "duel", 111.5, rid=9)
    assert caught.value.retry_after_ms == 199_500
    assert caught.value.rid == 9
    assert caught.value.code == "queue_locked"
    assert lobby.players["a"].place is Place.IDLE


def test_lockout_after_expiries_message() -> None:
    # Missed ready checks lock a player out as declines do, and the message must fit both.
    lobby = penalised_lobby()
    propose_duel(lobby, 0.0)
    lobby.tick(10.0)
    propose_duel(lobby, 20.0)
    lobby.tick(30.0)

    with pytest.raises(QueueLocked) as caught:
        lobby.join_queue(session("a"), "duel", 31.0)

    assert caught.value.message.startswith("player 'a' declined or missed too many matches and may not queue for ")


def test_lockout_ends_on_time() -> None:
    lobby = penalised_lobby()
    login(lobby, "a")
    lobby.players["a"].penalty = Penalty(2, 0.0, 300.0)

    with pytest.raises(QueueLocked):
        lobby.join_queue(session("a"), "duel", 299.999)
    lobby.join_queue(session("a"), "duel", 300.0)

    assert lobby.players["a"].place is Place.QUEUED


def test_expiry_penalises_only_silent_players() -> None:
    lobby = penalised_lobby()
    match = propose_duel(lobby, 0.0)
    lobby.accept(session("b"), match, 1.0)

    effects = lobby.tick(10.0)

    assert inbox(effects, session("a")) == [
        m.MatchCancelled(match=match, reason="expired", requeued=False, penalty_level=1, lockout_ms=0)
    ]
    assert inbox(effects, session("b")) == [m.MatchCancelled(match=match, reason="expired", requeued=True)]
    assert lobby.players["a"].penalty_level == 1
    assert lobby.players["b"].penalty_level == 0
    # The accepting player keeps their place and wait.
    assert lobby.queues["duel"]["b"].waiting_since == 0.0
    assert lobby.queues["duel"]["b"].priority is True


def test_disconnect_is_not_penalised() -> None:
    lobby = penalised_lobby()
    propose_duel(lobby, 0.0)

    lobby.disconnect(session("a"), 1.0)

    assert lobby.players["a"].penalty == Penalty()


def test_voided_match_is_not_penalised() -> None:
    lobby = penalised_lobby()
    match = propose_duel(lobby, 0.0)

    lobby.void_match(match, ["a"], 0.0)

    assert lobby.players["a"].penalty == Penalty()
    assert lobby.players["b"].penalty == Penalty()


def test_no_ladder_no_penalty() -> None:
    lobby = Lobby(QUEUES, SETTINGS, match_ids())
    match = propose_duel(lobby, 0.0)

    effects = lobby.decline(session("a"), match, 1.0)

    assert inbox(effects, session("a")) == [m.MatchCancelled(match=match, reason="declined", requeued=False)]
    assert lobby.players["a"].penalty == Penalty()


def test_lockout_survives_reload_of_record() -> None:
    lobby = penalised_lobby()
    record = PlayerRecord("a", "A", 1500, 0.0, 0.0, penalty_level=3, penalty_since=50.0, locked_until=1850.0)
    lobby.connect(session("a"), record, "a", None, 60.0)

    with pytest.raises(QueueLocked) as caught:
        lobby.join_queue(session("a"), "duel", 60.0)

    assert caught.value.retry_after_ms == 1_790_000
    assert lobby.players["a"].record() == PlayerRecord(
        "a", "A", 1500, 0.0, 60.0, penalty_level=3, penalty_since=50.0, locked_until=1850.0
    )
