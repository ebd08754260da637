"""Dodge penalties: a ladder of queue lockouts for players who decline matches.

A dodge is a decline, or letting the ready check expire, after ``match_found`` was
sent to the player. Each dodge moves the player one rung up the ladder, and the rung
sets how long the player may not queue: 0 seconds is a warning. Dodges past the top
rung repeat the top rung's lockout. Every full ``decay_after`` seconds without a dodge,
counted from the last dodge, takes the player one rung down.

A broken connection is not a dodge, because the player may not have seen the match.
The other players of a dodged match keep their wait and go back with priority.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PenaltyLadder:
    """Lockouts in seconds by rung (the first rung is index 0) and the clean period that removes one rung."""

    lockouts: tuple[float, ...] = (0.0, 300.0, 1800.0)
    decay_after: float = 86_400.0

    def __post_init__(self) -> None:
        if not self.lockouts:
            msg = "a penalty ladder needs at least one rung"
            raise ValueError(msg)
        if self.decay_after <= 0:
            msg = f"decay_after must be positive, got {self.decay_after:g}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Penalty:
    """A player's standing on the ladder: 0 rungs is a clean record.

    ``since`` is when the last dodge happened and ``locked_until`` when the lockout it
    caused ends, both in seconds since the epoch.
    """

    level: int = 0
    since: float = 0.0
    locked_until: float = 0.0

    def level_at(self, ladder: PenaltyLadder, now: float) -> int:
        """Return the rung after decay: one rung less for each full clean period since the last dodge."""
        if self.level == 0:
            return 0
        periods = math.floor(max(now - self.since, 0.0) / ladder.decay_after)
        return max(self.level - periods, 0)

    def remaining(self, now: float) -> float:
        """Return the seconds of lockout left at ``now``; 0 when the player may queue."""
        return max(self.locked_until - now, 0.0)

    def after_dodge(self, ladder: PenaltyLadder, now: float) -> Penalty:
        """Return the standing after one more dodge at ``now``."""
        level = self.level_at(ladder, now) + 1
        lockout = ladder.lockouts[min(level, len(ladder.lockouts)) - 1]
        return Penalty(level, now, max(now + lockout, self.locked_until))
