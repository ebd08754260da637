"""Unit tests of stepped expansion: the step a wait reaches, and matches it allows."""

from __future__ import annotations

import math

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.expansion import Expansion
from lobbyd.core.lobby import Lobby
from lobbyd.core.matchmaker import find_groups
from lobbyd.core.model import QueueRules, Ticket
from tests.test_core_lobby import SETTINGS, login, match_ids, queue_up, session

# Rating gap 50 at 0 s, 100 at 15 s, 200 at 30 s, no limit after 90 s.
STEPS = Expansion.of((0, 50), (15, 100), (30, 200), (90, None))
DUEL = QueueRules("duel", rating_steps=STEPS)


def ticket(player: str, rating: int, since: float = 0.0, seq: int = 0) -> Ticket:
    return Ticket(player, "duel", rating, since, seq)


def names(groups: list[list[Ticket]]) -> list[list[str]]:
    return [[t.player for t in group] for group in groups]


@pytest.mark.parametrize(
    ("wait", "step", "limit"),
    [
        (0.0, 0, 50.0),
        (14.999, 0, 50.0),
        (15.0, 1, 100.0),
        (29.0, 1, 100.0),
        (30.0, 2, 200.0),
        (89.9, 2, 200.0),
        (90.0, 3, math.inf),
        (10_000.0, 3, math.inf),
        (-5.0, 0, 50.0),
    ],
)
def test_step_and_limit_by_wait(wait: float, step: int, limit: float) -> None:
    assert STEPS.step_at(wait) == step
    assert STEPS.limit_at(wait) == limit


def test_rules_window_follows_steps() -> None:
    assert DUEL.window(0.0) == 50.0
    assert DUEL.window(16.0) == 100.0
    assert DUEL.window(95.0) == math.inf
    assert DUEL.expansion_step(31.0) == 2


def test_rules_window_adds_uncertainty_to_step() -> None:
    rules = QueueRules("duel", window_uncertainty=1.0, rating_steps=STEPS)

    assert rules.window(20.0, uncertainty=30.0) == 130.0


def test_rules_without_steps_report_no_step() -> None:
    assert QueueRules("duel").expansion_step(40.0) is None


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ((), "at least one step is required"),
        (((5, 50),), "[0].after_s: the first step must start at 0 seconds, got 5"),
        (((0, 50), (0, 60)), "[1].after_s: 0 must be greater than the previous step's 0"),
        (((0, 50), (10, 40)), "[1].limit: 40 is below the previous step's 50"),
        (((0, None), (10, 40)), "[0].limit: only the last step may lift the limit"),
    ],
)
def test_invalid_steps_rejected(pairs: tuple[tuple[float, float | None], ...], problem: str) -> None:
    with pytest.raises(ValueError, match=r"^" + problem.replace("[", r"\[").replace("]", r"\]") + r"$"):
        Expansion.of(*pairs)


def test_anchor_wait_picks_step() -> None:
    # Gap 80: the anchor a (waiting since 0) reaches 100 points at 15 s, b joined at 10 s.
    tickets = [ticket("a", 1500, since=0.0, seq=0), ticket("b", 1580, since=10.0, seq=1)]

    assert names(find_groups(tickets, DUEL, now=14.0)) == []
    assert names(find_groups(tickets, DUEL, now=15.0)) == [["a", "b"]]


def test_lifted_limit_matches_any_gap() -> None:
    tickets = [ticket("a", 800, since=0.0, seq=0), ticket("b", 2900, since=0.0, seq=1)]

    assert names(find_groups(tickets, DUEL, now=89.0)) == []
    assert names(find_groups(tickets, DUEL, now=90.0)) == [["a", "b"]]


def test_lobby_logs_expansion_step() -> None:
    lobby = Lobby({"duel": DUEL}, SETTINGS, match_ids())
    login(lobby, "a", rating=1500)
    login(lobby, "b", rating=1650)
    queue_up(lobby, "duel", ["a", "b"])

    assert lobby.tick(29.0) == []
    effects = lobby.tick(30.0)

    found = [e for e in effects if getattr(e, "name", None) == "match_found"]
    assert len(found) == 1
    assert found[0].fields["expansion_step"] == 2  # type: ignore[attr-defined]
    assert found[0].fields["rating_spread"] == 150  # type: ignore[attr-defined]


def test_started_match_stores_explanation() -> None:
    lobby = Lobby({"duel": DUEL}, SETTINGS, match_ids())
    login(lobby, "a", rating=1500)
    login(lobby, "b", rating=1580)
    queue_up(lobby, "duel", ["a", "b"], now=100.0)
    lobby.tick(116.0)

    lobby.accept(session("a"), "m1", 117.0)
    effects = lobby.accept(session("b"), "m1", 118.0)

    starts = [effect for effect in effects if isinstance(effect, fx.StartMatch)]
    assert len(starts) == 1
    assert starts[0].record.explanation == {
        "win_probability": 0.452,
        "expansion_step": 1,
        "rating_spread": 80,
        "anchor_wait": 16.0,
        "region": "default",
    }
