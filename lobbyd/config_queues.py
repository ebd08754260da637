"""Queue settings: the ``[queues.NAME]`` tables of the configuration and their checks.

Each field of a queue is checked on its own, and each rule between fields runs on
the valid fields alone, so one bad value hides no other problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Final

import msgspec

from lobbyd.config_values import Problem, suggestion, value_problems
from lobbyd.core.expansion import Expansion, ExpansionStep, step_problem
from lobbyd.protocol.messages import ID_PATTERN, MAX_ID_LENGTH, MAX_ROLES

Region = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)]
RoleName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)]

_QUEUE_NAME = re.compile(ID_PATTERN)


class StepConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One expansion step: from ``after_s`` seconds of wait on, ``limit`` applies. Without ``limit`` there is none."""

    after_s: Annotated[float, msgspec.Meta(ge=0)]
    limit: Annotated[float, msgspec.Meta(ge=0)] | None = None


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One queue: how many teams of how many players, and how the rating window grows."""

    team_count: Annotated[int, msgspec.Meta(ge=2, le=64)] = 2
    team_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    window_start: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    window_growth: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    window_max: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    window_uncertainty: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """Extra window per point of the anchor's sigma, in rating points."""
    region: Region = "default"
    """Region whose game servers host this queue's matches."""

    rating_steps: list[StepConfig] | None = None
    """Rating gap steps, in points, by the anchor's wait. When set, they replace the window_* ramp."""

    party_sizes: list[Annotated[int, msgspec.Meta(ge=1, le=64)]] = msgspec.field(default_factory=lambda: [1])
    """Party sizes that may queue, each at most team_size; 1 lets solo players queue."""

    max_premade_gap: Annotated[int, msgspec.Meta(ge=0, le=63)] | None = None
    """Largest difference between the biggest party on any two teams; unset, no cap."""

    roles: list[RoleName] = msgspec.field(default_factory=list)
    """Positions of a team, one player each; as many as team_size, at most 7. Empty: no roles."""

    autofill_after_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Seconds a player waits before they may get a role they did not list; unset, never."""

    latency_steps: list[StepConfig] | None = None
    """Round-trip latency limit steps, in milliseconds, by the anchor's wait. When set,
    each match is hosted in the region its players' reported latencies pick."""

    regions: list[Region] = msgspec.field(default_factory=list)
    """Regions a latency queue may host matches in; empty allows any region players report."""

    def rating_expansion(self) -> Expansion | None:
        return _expansion(self.rating_steps)

    def latency_expansion(self) -> Expansion | None:
        return _expansion(self.latency_steps)


def _expansion(steps: list[StepConfig] | None) -> Expansion | None:
    if steps is None:
        return None
    return Expansion(tuple(ExpansionStep(step.after_s, step.limit) for step in steps))


def queues_problems(queues: object) -> list[Problem]:
    """Return every problem of the ``queues`` table, each keyed ``queues.NAME[.FIELD]``."""
    if not isinstance(queues, dict):
        return [("queues", f"expected a table of queues, got {type(queues).__name__}")]
    if not queues:
        return [("queues", "at least one queue is required")]
    problems = []
    for name, table in queues.items():
        problems += _queue_problems(str(name), table)
    return problems


def _queue_problems(name: str, table: object) -> list[Problem]:
    key = f"queues.{name}"
    problems = []
    if len(name) > MAX_ID_LENGTH or not _QUEUE_NAME.match(name):
        problems.append((key, f"a queue name is 1 to {MAX_ID_LENGTH} of A-Z a-z 0-9 _ . -"))
    if not isinstance(table, dict):
        return [*problems, (key, f"expected a table, got {type(table).__name__}")]

    # Each field on its own first.
    bad_fields = set()
    valid = {}
    for field, value in table.items():
        if field not in QueueConfig.__struct_fields__:
            found = [(f"{key}.{field}", f"unknown queue setting{suggestion(field, QueueConfig.__struct_fields__)}")]
        else:
            found = value_problems(field, value, QueueConfig, prefix=key)
        problems += found
        if found:
            bad_fields.add(field)
        else:
            valid[field] = value

    # Then each rule between fields whose fields are all valid; a bad field's
    # default would stand in for it and could report a problem that is not there.
    queue = msgspec.convert(valid, QueueConfig, strict=False)
    for fields, rule in _RULES:
        if not fields & bad_fields:
            problems += rule(key, queue)
    return problems


def _window_problems(key: str, queue: QueueConfig) -> list[Problem]:
    if queue.window_max < queue.window_start:
        return [(f"{key}.window_max", f"{queue.window_max} is below window_start ({queue.window_start})")]
    return []


def _party_problems(key: str, queue: QueueConfig) -> list[Problem]:
    problems = []
    too_big = [size for size in queue.party_sizes if size > queue.team_size]
    if too_big:
        problems.append(
            (f"{key}.party_sizes", f"{too_big} exceed team_size ({queue.team_size}); a party plays on one team")
        )
    if not queue.party_sizes:
        problems.append((f"{key}.party_sizes", "at least one party size is required; [1] lets solo players queue"))
    return problems


def _roles_problems(key: str, queue: QueueConfig) -> list[Problem]:
    problems = []
    roles = queue.roles
    if roles and len(roles) != queue.team_size:
        count = len(roles)
        problems.append(
            (f"{key}.roles", f"{count} roles for team_size {queue.team_size}; a team has one player per role")
        )
    if len(roles) > MAX_ROLES:
        problems.append((f"{key}.roles", f"{len(roles)} roles is more than the {MAX_ROLES} a queue may have"))
    repeated = sorted({role for role in roles if roles.count(role) > 1})
    if repeated:
        problems.append((f"{key}.roles", f"{repeated[0]!r} is listed more than once"))
    if queue.autofill_after_s is not None and not roles:
        problems.append((f"{key}.autofill_after_s", "the queue has no roles to autofill; set roles or remove it"))
    return problems


def _regions_problems(key: str, queue: QueueConfig) -> list[Problem]:
    problems = []
    if queue.regions and queue.latency_steps is None:
        problems.append(
            (f"{key}.regions", "only a queue with latency_steps picks a region per match; set latency_steps")
        )
    repeated = sorted({region for region in queue.regions if queue.regions.count(region) > 1})
    if repeated:
        problems.append((f"{key}.regions", f"{repeated[0]!r} is listed more than once"))
    return problems


def _rating_steps_problems(key: str, queue: QueueConfig) -> list[Problem]:
    return _steps_problems(f"{key}.rating_steps", queue.rating_steps)


def _latency_steps_problems(key: str, queue: QueueConfig) -> list[Problem]:
    return _steps_problems(f"{key}.latency_steps", queue.latency_steps)


def _steps_problems(key: str, steps: list[StepConfig] | None) -> list[Problem]:
    if steps is None:
        return []
    problem = step_problem([ExpansionStep(step.after_s, step.limit) for step in steps])
    if problem is None:
        return []
    if problem.startswith("["):
        index, _, message = problem.partition(": ")
        return [(f"{key}{index}", message)]
    return [(key, problem)]


# Rules between the fields of one queue: the fields each reads, and the check.
_RULES: Final[tuple[tuple[frozenset[str], Callable[[str, QueueConfig], list[Problem]]], ...]] = (
    (frozenset({"window_start", "window_max"}), _window_problems),
    (frozenset({"rating_steps"}), _rating_steps_problems),
    (frozenset({"party_sizes", "team_size"}), _party_problems),
    (frozenset({"roles", "team_size", "autofill_after_s"}), _roles_problems),
    (frozenset({"latency_steps"}), _latency_steps_problems),
    (frozenset({"regions", "latency_steps"}), _regions_problems),
)
