"""Stepped expansion: a matching limit that widens with a ticket's wait.

A queue lists steps as (wait in seconds, limit). A ticket that has waited ``wait``
seconds is held to the limit of the last step whose wait it has reached, so the
limit is a step function of the wait, not a ramp. A step without a limit removes
the limit. For example, rating gap steps ``(0, 50), (15, 100), (30, 200), (90, None)``
give a ticket 50 rating points for its first 15 seconds, 100 until 30 seconds,
200 until 90 seconds and any gap after that.

The matchmaker applies the steps to the anchor of a candidate match, which is the
oldest (or requeued) ticket that the match is built around. The anchor's wait alone
picks the step, and every other ticket of the match must fall within its limit.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ExpansionStep:
    """One step: from ``after`` seconds of wait on, the limit is ``limit`` (None: no limit)."""

    after: float
    limit: float | None


@dataclass(frozen=True, slots=True)
class Expansion:
    """Steps in ascending order of wait; the first starts at 0 seconds.

    Raises ``ValueError`` when the steps are empty, do not start at 0, are not in
    strictly ascending order of wait, narrow the limit, or lift it before the last step.
    """

    steps: tuple[ExpansionStep, ...]

    def __post_init__(self) -> None:
        problem = step_problem(self.steps)
        if problem is not None:
            raise ValueError(problem)

    @classmethod
    def of(cls, *pairs: tuple[float, float | None]) -> Expansion:
        """Build an expansion from (after, limit) pairs."""
        return cls(tuple(ExpansionStep(after, limit) for after, limit in pairs))

    def step_at(self, wait: float) -> int:
        """Return the index of the step a ticket that waited ``wait`` seconds is on."""
        afters = [step.after for step in self.steps]
        return max(bisect.bisect_right(afters, wait) - 1, 0)

    def limit_at(self, wait: float) -> float:
        """Return the limit after ``wait`` seconds; ``math.inf`` when a step lifted it."""
        limit = self.steps[self.step_at(wait)].limit
        return math.inf if limit is None else limit


def step_problem(steps: Sequence[ExpansionStep]) -> str | None:
    """Return why ``steps`` cannot form an expansion, or None when they can.

    The message names the offending step by its index.
    """
    if not steps:
        return "at least one step is required"
    if steps[0].after != 0:
        return f"[0].after_s: the first step must start at 0 seconds, got {steps[0].after:g}"
    for index in range(1, len(steps)):
        previous, step = steps[index - 1], steps[index]
        if step.after <= previous.after:
            return f"[{index}].after_s: {step.after:g} must be greater than the previous step's {previous.after:g}"
        if previous.limit is None:
            return f"[{index - 1}].limit: only the last step may lift the limit"
        if step.limit is not None and step.limit < previous.limit:
            return f"[{index}].limit: {step.limit:g} is below the previous step's {previous.limit:g}"
    return None
