"""Unit tests of skills, display ratings, rating updates and the win-probability team split."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from openskill.models import PlackettLuce

from lobbyd.core.matchmaker import find_groups
from lobbyd.core.model import QueueRules, Ticket
from lobbyd.core.ratings import (
    DISPLAY_SCALE,
    NEW_SKILL,
    Skill,
    display_rating,
    rate,
    sigma_points,
    skill_from_rating,
    win_probability,
)
from lobbyd.core.teams import split_teams

MODEL = PlackettLuce()


def random_skills(rng: random.Random, count: int) -> list[Skill]:
    return [Skill(rng.gauss(25.0, 4.0), rng.uniform(0.8, 8.4)) for _ in range(count)]


def ticket(player: str, skill: Skill, seq: int = 0, since: float = 0.0) -> Ticket:
    return Ticket(player, "q", display_rating(skill), since, seq, skill=skill)


# Display ratings.


@pytest.mark.parametrize("k", [0.0, 1.0, 3.0])
def test_new_player_shows_1500(k: float) -> None:
    assert display_rating(NEW_SKILL, k) == 1500


def test_display_subtracts_k_sigma() -> None:
    skill = Skill(27.0, 2.0)

    assert display_rating(skill, 0.0) == 1500 + 2 * 50
    assert display_rating(skill, 1.0) == round(1500 + 50 * (25.0 - (25.0 - 25.0 / 3.0)))


def test_skill_from_rating_round_trips() -> None:
    for rating in (-7, 1200, 1500, 1523, 2400):
        skill = skill_from_rating(rating)
        assert skill.sigma == NEW_SKILL.sigma
        assert display_rating(skill, 1.0) == rating
        assert display_rating(skill, 3.0) == rating


def test_sigma_points_scale() -> None:
    assert sigma_points(Skill(25.0, 2.0)) == 2.0 * DISPLAY_SCALE


# Rating updates and predictions agree with openskill called directly.


def test_rate_matches_openskill() -> None:
    rng = random.Random(7)
    for team_size, team_count in ((1, 2), (5, 2), (2, 3)):
        teams = [random_skills(rng, team_size) for _ in range(team_count)]
        ranks = [rng.randrange(team_count) for _ in range(team_count)]

        ours = rate(teams, ranks)
        theirs = MODEL.rate(
            [[MODEL.rating(mu=s.mu, sigma=s.sigma) for s in team] for team in teams], ranks=[float(r) for r in ranks]
        )

        assert [[(s.mu, s.sigma) for s in team] for team in ours] == [
            [(r.mu, r.sigma) for r in team] for team in theirs
        ]


def test_rate_winner_gains() -> None:
    (winner,), (loser,) = rate([[NEW_SKILL], [NEW_SKILL]], [0, 1])

    assert winner.mu > NEW_SKILL.mu > loser.mu
    assert winner.sigma < NEW_SKILL.sigma


def test_win_probability_matches_predict_win() -> None:
    rng = random.Random(11)
    for size in (1, 3, 5):
        first, second = random_skills(rng, size), random_skills(rng, size)
        expected = MODEL.predict_win(
            [[MODEL.rating(mu=s.mu, sigma=s.sigma) for s in team] for team in (first, second)]
        )[0]

        assert win_probability(first, second) == pytest.approx(expected, abs=1e-12)


def test_rate_5v5_under_a_millisecond() -> None:
    teams = [random_skills(random.Random(3), 5), random_skills(random.Random(4), 5)]
    runs = 200
    started = time.perf_counter()
    for _ in range(runs):
        rate(teams, [0, 1])
    per_match = (time.perf_counter() - started) / runs

    assert per_match < 0.001, f"{per_match * 1e6:.0f} us per 5v5 update"


# Team split.


def brute_force_gap(skills: list[Skill], team_size: int) -> float:
    """Return the smallest |P(win) - 0.5| over every split, asking openskill itself."""
    best = 1.0
    for chosen in itertools.combinations(range(len(skills)), team_size):
        first = [MODEL.rating(mu=skills[i].mu, sigma=skills[i].sigma) for i in chosen]
        second = [MODEL.rating(mu=s.mu, sigma=s.sigma) for i, s in enumerate(skills) if i not in chosen]
        best = min(best, abs(MODEL.predict_win([first, second])[0] - 0.5))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_split_5v5_closest_to_even(seed: int) -> None:
    skills = random_skills(random.Random(seed), 10)
    tickets = [ticket(f"p{i}", skill, seq=i) for i, skill in enumerate(skills)]

    first, second = split_teams(tickets, 2, 5)
    chosen = win_probability([t.current_skill for t in first], [t.current_skill for t in second])

    assert len(first) == len(second) == 5
    assert abs(chosen - 0.5) == pytest.approx(brute_force_gap(skills, 5), abs=1e-9)


def test_split_uses_mu_not_display() -> None:
    # Equal display ratings, but a and b are far more certain of a high mu: they must
    # not end up on one team.
    a, b = Skill(30.0, 1.0), Skill(30.0, 1.0)
    c, d = Skill(35.0, 6.0), Skill(35.0, 6.0)
    tickets = [ticket(name, skill, seq=i) for i, (name, skill) in enumerate(zip("abcd", (a, b, c, d), strict=True))]

    first, _ = split_teams(tickets, 2, 2)

    assert {t.player for t in first} in ({"a", "c"}, {"a", "d"})


# The window widens with uncertainty.


def test_window_adds_uncertainty() -> None:
    rules = QueueRules("q", window_start=50.0, window_growth=0.0, window_uncertainty=0.5)

    assert rules.window(0.0, 400.0) == 250.0
    assert rules.window(0.0) == 50.0


def test_uncertain_anchor_reaches_further() -> None:
    rules = QueueRules("q", window_start=50.0, window_growth=0.0, window_max=50.0, window_uncertainty=1.0)
    settled = Skill(25.0, 1.0)
    far = Skill(25.0 + 200.0 / DISPLAY_SCALE, 1.0)
    uncertain_near = Skill(25.0 + 8.0, 8.0)

    assert find_groups([ticket("a", settled, 0), ticket("b", far, 1)], rules, now=0.0) == []
    groups = find_groups([ticket("c", uncertain_near, 0), ticket("d", far, 1)], rules, now=0.0)
    assert [[t.player for t in group] for group in groups] == [["c", "d"]]
