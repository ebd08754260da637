"""Player skill as OpenSkill's Plackett-Luce model keeps it, and the numbers derived from it.

A skill is a mean ``mu`` and an uncertainty ``sigma``, both in OpenSkill's units: a new
player starts at mu 25, sigma 25/3. Clients and the matchmaker see one integer, the
display rating, made from the conservative ordinal ``mu - k * sigma``:

    rating = 1500 + 50 * (mu - k * sigma - (25 - k * 25/3))

so a new player shows 1500 whatever ``k`` is, and one mu unit is 50 rating points.
A rating update for one match costs about 60 microseconds for a 5v5 (openskill 6.2,
measured with ``PlackettLuce.rate`` on an x86-64 development host), so the core applies
it synchronously.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from openskill.models import PlackettLuce, PlackettLuceRating

INITIAL_MU: Final = 25.0
INITIAL_SIGMA: Final = 25.0 / 3.0
DISPLAY_BASE: Final = 1500
# For two settled players (sigma near 1), 8 mu units are about 10:1 odds, which is
# what 400 points mean in Elo, so 50 points per mu keeps Elo-like magnitudes.
DISPLAY_SCALE: Final = 50.0
DEFAULT_ORDINAL_K: Final = 1.0

# One model for the process: its parameters are OpenSkill's defaults (beta 25/6,
# tau 25/300), and ``rate`` keeps no state between calls.
MODEL: Final = PlackettLuce()


@dataclass(frozen=True, slots=True)
class Skill:
    """A player's skill estimate: mean and standard deviation, in OpenSkill units."""

    mu: float
    sigma: float


NEW_SKILL: Final = Skill(INITIAL_MU, INITIAL_SIGMA)


def display_rating(skill: Skill, k: float = DEFAULT_ORDINAL_K) -> int:
    """Return the integer rating shown to clients and used by the matchmaker."""
    ordinal = skill.mu - k * skill.sigma
    start = INITIAL_MU - k * INITIAL_SIGMA
    return round(DISPLAY_BASE + DISPLAY_SCALE * (ordinal - start))


def skill_from_rating(rating: int) -> Skill:
    """Return the skill with a new player's sigma whose display rating is ``rating``, for any ``k``.

    Players stored before skills were kept, and records that carry only a rating,
    are placed at their rating this way.
    """
    mu = INITIAL_MU + (rating - DISPLAY_BASE) / DISPLAY_SCALE
    return Skill(mu, INITIAL_SIGMA)


def sigma_points(skill: Skill) -> float:
    """Return ``sigma`` in display rating points."""
    return skill.sigma * DISPLAY_SCALE


def win_probability(first: Sequence[Skill], second: Sequence[Skill]) -> float:
    """Return the chance that team ``first`` beats team ``second``.

    This is ``PlackettLuce.predict_win`` for two teams, written out so that no rating
    objects are built: Phi((sum mu_a - sum mu_b) / sqrt(2 beta^2 + sum sigma_a^2 +
    sum sigma_b^2)).
    """
    mu_gap = sum(s.mu for s in first) - sum(s.mu for s in second)
    variance = 2 * MODEL.beta**2 + sum(s.sigma**2 for s in first) + sum(s.sigma**2 for s in second)
    return 0.5 * (1.0 + math.erf(mu_gap / math.sqrt(2.0 * variance)))


def rate(teams: Sequence[Sequence[Skill]], ranks: Sequence[int]) -> list[list[Skill]]:
    """Return every player's new skill after a match, parallel to ``teams``.

    ``ranks`` has one number per team: lower is better, and equal numbers are a draw.
    """
    rated = MODEL.rate(
        [[PlackettLuceRating(s.mu, s.sigma) for s in team] for team in teams],
        ranks=[float(rank) for rank in ranks],
    )
    return [[Skill(r.mu, r.sigma) for r in team] for team in rated]
