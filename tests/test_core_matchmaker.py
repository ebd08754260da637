"""Unit tests of the rating window, ``find_groups`` and ``split_teams``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lobbyd.core import teams
from lobbyd.core.matchmaker import find_groups
from lobbyd.core.model import QueueRules, Ticket
from lobbyd.core.teams import split_teams

DUEL = QueueRules("duel", team_count=2, team_size=1, window_start=50.0, window_growth=10.0)


def fixed_window(points: float, team_count: int = 2, team_size: int = 1) -> QueueRules:
    """Return rules whose window stays at ``points`` however long a ticket waits."""
    return QueueRules("q", team_count, team_size, window_start=points, window_growth=0.0)


def ticket(player: str, rating: int, since: float = 0.0, seq: int = 0, priority: bool = False) -> Ticket:
    return Ticket(player, "q", rating, since, seq, priority)


def numbered(ratings: Sequence[int]) -> list[Ticket]:
    """Return tickets p0, p1, ... with ``ratings``, all waiting since 0, in seq order."""
    return [ticket(f"p{i}", rating, seq=i) for i, rating in enumerate(ratings)]


def names(groups: Sequence[Sequence[Ticket]]) -> list[list[str]]:
    return [[t.player for t in group] for group in groups]


def ratings(split: Sequence[Sequence[Ticket]]) -> list[list[int]]:
    return [[t.rating for t in team] for team in split]


def sums(split: Sequence[Sequence[Ticket]]) -> list[int]:
    return [sum(t.rating for t in team) for team in split]


# The rating window.


def test_window_starts_at_window_start() -> None:
    assert DUEL.window(0.0) == 50.0


def test_window_grows_per_second() -> None:
    assert DUEL.window(15.0) == 200.0


def test_window_caps_at_window_max() -> None:
    assert DUEL.window(1_000.0) == 1_000.0


def test_window_ignores_negative_wait() -> None:
    assert DUEL.window(-3.0) == 50.0


def test_match_size_counts_all_teams() -> None:
    assert QueueRules("ffa", team_count=4, team_size=3).match_size == 12


# Forming groups.


def test_groups_need_full_match() -> None:
    assert find_groups([ticket("a", 1500)], DUEL, 100.0) == []


def test_window_blocks_distant_ratings() -> None:
    # 1400 and 1600 are 200 apart, and 50 + 10 * wait reaches 200 at wait 15 s.
    tickets = [ticket("a", 1400, seq=0), ticket("b", 1600, seq=1)]

    assert find_groups(tickets, DUEL, 0.0) == []
    assert find_groups(tickets, DUEL, 14.9) == []


def test_window_admits_at_exact_second() -> None:
    tickets = [ticket("a", 1400, seq=0), ticket("b", 1600, seq=1)]

    assert names(find_groups(tickets, DUEL, 15.0)) == [["a", "b"]]


def test_anchor_wait_sets_window() -> None:
    # b joined 14 s after a: only a's 15 s wait makes the window wide enough.
    tickets = [ticket("a", 1400, since=0.0, seq=0), ticket("b", 1600, since=14.0, seq=1)]

    assert names(find_groups(tickets, DUEL, 15.0)) == [["a", "b"]]


def test_priority_anchor_takes_contested_ticket() -> None:
    # a and p both reach x but not each other. p is newer but was requeued.
    rules = fixed_window(40.0)
    a = ticket("a", 1500, since=0.0, seq=0)
    x = ticket("x", 1530, since=40.0, seq=1)
    p = ticket("p", 1560, since=50.0, seq=2, priority=True)

    assert names(find_groups([a, x, p], rules, 60.0)) == [["p", "x"]]


def test_oldest_anchor_without_priority() -> None:
    rules = fixed_window(40.0)
    a = ticket("a", 1500, since=0.0, seq=0)
    x = ticket("x", 1530, since=40.0, seq=1)
    p = ticket("p", 1560, since=50.0, seq=2)

    assert names(find_groups([a, x, p], rules, 60.0)) == [["a", "x"]]


def test_priority_groups_formed_first() -> None:
    rules = fixed_window(50.0)
    tickets = [
        ticket("a", 1000, since=0.0, seq=0),
        ticket("b", 1000, since=5.0, seq=1),
        ticket("p", 1500, since=10.0, seq=2, priority=True),
        ticket("c", 1500, since=20.0, seq=3),
    ]

    assert names(find_groups(tickets, rules, 30.0)) == [["p", "c"], ["a", "b"]]


def test_seq_breaks_wait_tie() -> None:
    rules = fixed_window(40.0)
    a = ticket("a", 1500, seq=1)
    x = ticket("x", 1530, seq=2)
    b = ticket("b", 1560, seq=0)

    assert names(find_groups([a, x, b], rules, 10.0)) == [["b", "x"]]


def test_longest_waiting_candidate_fills() -> None:
    rules = fixed_window(100.0)
    tickets = [
        ticket("a", 1500, since=0.0, seq=0),
        ticket("near", 1510, since=30.0, seq=1),
        ticket("old", 1540, since=10.0, seq=2),
        ticket("far", 1590, since=20.0, seq=3),
    ]

    assert names(find_groups(tickets, rules, 40.0)) == [["a", "old"], ["far", "near"]]


def test_candidate_slack_bounds_search() -> None:
    # An anchor looks at the nearest 1 + CANDIDATE_SLACK free tickets, so c4, the oldest
    # candidate but the fourth nearest, is out of a's reach and anchors its own group.
    rules = fixed_window(100.0)
    tickets = [
        ticket("a", 1500, since=0.0, seq=0),
        ticket("c1", 1501, since=40.0, seq=1),
        ticket("c2", 1502, since=30.0, seq=2),
        ticket("c3", 1503, since=20.0, seq=3),
        ticket("c4", 1504, since=10.0, seq=4),
    ]

    assert names(find_groups(tickets, rules, 50.0)) == [["a", "c3"], ["c4", "c2"]]


def test_lonely_anchor_skipped() -> None:
    rules = fixed_window(50.0)
    tickets = [
        ticket("a", 1000, since=0.0, seq=0),
        ticket("b", 1500, since=1.0, seq=1),
        ticket("c", 1510, since=2.0, seq=2),
    ]

    assert names(find_groups(tickets, rules, 10.0)) == [["b", "c"]]


def test_groups_are_disjoint() -> None:
    tickets = numbered([1500, 1500, 1500, 1500, 1500])
    groups = find_groups(tickets, DUEL, 0.0)
    players = [t.player for group in groups for t in group]

    assert names(groups) == [["p0", "p1"], ["p2", "p3"]]
    assert len(players) == len(set(players))


def test_squad_group_has_four() -> None:
    rules = fixed_window(200.0, team_count=2, team_size=2)
    tickets = numbered([1400, 1450, 1550, 1600, 2500])

    assert names(find_groups(tickets, rules, 0.0)) == [["p0", "p1", "p2", "p3"]]


# Splitting teams.


def test_split_1v1_keeps_order() -> None:
    split = split_teams(numbered([1700, 1300]), 2, 1)

    assert [[t.player for t in team] for team in split] == [["p0"], ["p1"]]


def test_split_2v2_pairs_extremes() -> None:
    split = split_teams(numbered([1000, 1100, 1200, 1300]), 2, 2)

    assert ratings(split) == [[1000, 1300], [1100, 1200]]


def test_split_5v5_even_total() -> None:
    # Total 15,600, so a perfect split has 7,800 a side: 2400 + 1650 + 1400 + 1350 + 1000
    # against 1700 + 1600 + 1550 + 1500 + 1450. The greedy split only reaches 7,900 : 7,700.
    split = split_teams(numbered([2400, 1700, 1650, 1600, 1550, 1500, 1450, 1400, 1350, 1000]), 2, 5)

    assert sums(split) == [7800, 7800]
    assert ratings(split)[0][0] == 2400
    assert sorted(len(team) for team in split) == [5, 5]


def test_split_5v5_odd_total() -> None:
    # Every rating is a multiple of 50 and the total 14,550 is an odd multiple of 50,
    # so a gap of 50 is the minimum: 1000 + 1100 + 1400 + 1800 + 1950 = 7,250.
    split = split_teams(numbered([1000, 1100, 1200, 1300, 1400, 1500, 1600, 1700, 1800, 1950]), 2, 5)

    assert sums(split) == [7250, 7300]
    assert ratings(split) == [[1000, 1100, 1400, 1800, 1950], [1200, 1300, 1500, 1600, 1700]]


def test_split_3v3_outlier() -> None:
    # The 2000 player's team gets two 1000s at best, so 4,000 : 3,000 is minimal.
    split = split_teams(numbered([1000, 1000, 2000, 1000, 1000, 1000]), 2, 3)

    assert sorted(sums(split)) == [3000, 4000]


def test_split_3v3_gap_of_one() -> None:
    split = split_teams(numbered([1500, 1500, 1501, 1500, 1500, 1500]), 2, 3)

    assert sorted(sums(split)) == [4500, 4501]


def test_split_equal_ratings_keeps_first() -> None:
    split = split_teams(numbered([1500, 1500, 1500, 1500]), 2, 2)

    assert [[t.player for t in team] for team in split] == [["p0", "p1"], ["p2", "p3"]]


def test_split_rejects_wrong_count() -> None:
    with pytest.raises(ValueError, match="cannot split 3 tickets into 2 teams of 2"):
        split_teams(numbered([1500, 1500, 1500]), 2, 2)


def test_greedy_three_teams() -> None:
    # Strongest first, each to the weakest team with room: 1800, 1700 and 1600 open
    # the teams, then 1500 joins 1600, 1400 joins 1700 and 1300 joins 1800.
    split = split_teams(numbered([1800, 1700, 1600, 1500, 1400, 1300]), 3, 2)

    assert ratings(split) == [[1800, 1300], [1700, 1400], [1600, 1500]]
    assert sums(split) == [3100, 3100, 3100]


def test_greedy_respects_team_size() -> None:
    # The last 1000 must go to the 3000 team, the only one with room left.
    split = split_teams(numbered([3000, 1000, 1000, 1000, 1000, 1000]), 3, 2)

    assert [[t.player for t in team] for team in split] == [["p0", "p5"], ["p1", "p3"], ["p2", "p4"]]
    assert sums(split) == [4000, 2000, 2000]


def test_greedy_free_for_all() -> None:
    split = split_teams(numbered([1200, 1800, 1500]), 3, 1)

    assert ratings(split) == [[1800], [1500], [1200]]


def test_large_two_team_split_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teams, "MAX_EXHAUSTIVE_SPLITS", 0)
    split = split_teams(numbered([2400, 1700, 1650, 1600, 1550, 1500, 1450, 1400, 1350, 1000]), 2, 5)

    assert ratings(split) == [[2400, 1600, 1500, 1400, 1000], [1700, 1650, 1550, 1450, 1350]]
    assert sums(split) == [7900, 7700]
