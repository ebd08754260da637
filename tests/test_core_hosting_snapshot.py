"""Unit tests of mirroring game servers and hosted matches, as a cluster leader does.

A lobby with hosting runs a duel up to a running match, and its tracked changes
become stored records. A second lobby rebuilt from those records must accept the
same result with the same ratings, and reject a repeat.
"""

from __future__ import annotations

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.allocation import MatchPhase
from lobbyd.core.hosting import Hosting
from lobbyd.core.hosting_snapshot import (
    ended_state,
    hosted_state,
    refresh_ratings,
    restore_hosting,
    server_state,
    track_hosting,
)
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import Place, PlayerRecord
from lobbyd.core.ratings import Skill
from lobbyd.core.snapshot import player_info, restore, track
from lobbyd.errors import AlreadyReported
from lobbyd.protocol import cluster as c
from lobbyd.protocol import messages as m
from tests.test_core_hosting import new_lobby, play_to_all_accepted, register


def hosting_of(lobby: Lobby) -> Hosting:
    assert lobby.hosting is not None
    return lobby.hosting


def running_duel(lobby: Lobby) -> str:
    """Play alice against bob on the registered server gs1 and acknowledge; return the match id."""
    effects = play_to_all_accepted(lobby, ["alice", "bob"])
    allocate = next(e.message for e in effects if isinstance(e, fx.Send) and isinstance(e.message, m.Allocate))
    hosting_of(lobby).acknowledge("g-gs1", allocate.match, 2.0)
    return allocate.match


def mirrored(lobby: Lobby) -> tuple[list[c.ServerState], list[c.HostedState], list[c.EndedState]]:
    """Return the stored records of every server, hosted match and ended match of ``lobby``."""
    hosting = hosting_of(lobby)
    servers = [state for sid in hosting.pool.servers if (state := server_state(hosting, sid)) is not None]
    hosted = [state for match in hosting.matches if (state := hosted_state(lobby, match)) is not None]
    ended = [state for match in hosting.ended if (state := ended_state(hosting, match)) is not None]
    return servers, hosted, ended


def rebuilt(lobby: Lobby) -> Lobby:
    """Return a fresh lobby built from ``lobby``'s records, with alice connected and bob offline."""
    alice = lobby.players["alice"]
    presence = {"alice": c.Presence("n0", "s-alice", 1.0, player_info(alice))}
    copy = new_lobby()
    track(copy)
    track_hosting(hosting_of(copy))
    restore(copy, presence, [], [])
    restore_hosting(copy, *mirrored(lobby))
    return copy


def test_tracking_notes_every_take() -> None:
    lobby = new_lobby()
    changes = track_hosting(hosting_of(lobby))

    register(lobby, "gs1")
    assert changes.take() == ({"gs1"}, set(), set())
    register(lobby, "gs2")
    assert changes.take() == ({"gs2"}, set(), set())

    match = running_duel(lobby)
    servers, hosted, _ = changes.take()
    assert match in hosted
    lobby.disconnect("g-gs1", 3.0)
    servers, hosted, ended = changes.take()
    assert "gs1" in servers
    assert hosted == {match}
    assert ended == {match}
    assert server_state(hosting_of(lobby), "gs1") is None
    assert hosted_state(lobby, match) is None


def test_rebuilt_lobby_rates_like_original() -> None:
    original = new_lobby()
    register(original, "gs1")
    match = running_duel(original)
    copy = rebuilt(original)

    restored = hosting_of(copy).matches[match]
    assert restored.phase is MatchPhase.RUNNING
    assert restored.bound == {"alice", "bob"}
    assert hosting_of(copy).pool.servers["gs1"].matches.keys() == {match}
    assert copy.players["bob"].session is None
    assert copy.players["bob"].place is Place.IN_MATCH

    result = m.MatchResult(match=match, winner=0)
    first = hosting_of(original).report("g-gs1", result, 5.0)
    second = hosting_of(copy).report("g-gs1", result, 5.0)
    (finished_first,) = [e for e in first if isinstance(e, fx.FinishMatch)]
    (finished_second,) = [e for e in second if isinstance(e, fx.FinishMatch)]
    assert finished_second.record == finished_first.record
    assert sorted(finished_second.players, key=lambda p: p.id) == sorted(finished_first.players, key=lambda p: p.id)
    assert copy.players["alice"].place is Place.IDLE
    assert copy.players["bob"].place is Place.IDLE


def test_rebuilt_lobby_rejects_repeat() -> None:
    original = new_lobby()
    register(original, "gs1")
    match = running_duel(original)
    hosting_of(original).report("g-gs1", m.MatchResult(match=match, winner=1), 5.0)

    copy = rebuilt(original)

    assert match not in hosting_of(copy).matches
    with pytest.raises(AlreadyReported):
        hosting_of(copy).report("g-gs1", m.MatchResult(match=match, winner=1), 6.0)


def test_refresh_ratings_takes_newer_only() -> None:
    lobby = new_lobby()
    lobby.connect("s-a", PlayerRecord("a", "A", 1500, 0.0, 0.0, 30.0, 7.0, 3, 2), "a", None, 1.0)

    older = PlayerRecord("a", "A", 1400, 0.0, 0.0, 20.0, 8.0, 2, 1)
    newer = PlayerRecord("a", "A", 1600, 0.0, 0.0, 31.0, 6.0, 4, 3)

    assert refresh_ratings(lobby, [older]) == 0
    assert lobby.players["a"].games == 3
    assert refresh_ratings(lobby, [newer, PlayerRecord("stranger", "S", 1, 0.0, 0.0)]) == 1
    player = lobby.players["a"]
    assert (player.skill, player.rating, player.games, player.wins) == (Skill(31.0, 6.0), 1600, 4, 3)
