"""Role assignment: one player per role on every team, preferred roles first.

A queue may define positions (``("tank", "healer", "damage")``). Each player lists
the roles they want, most wanted first. A team is assignable when every role gets
exactly one player. Among all such assignments the one with the lowest total
preference rank wins, where a listed role costs its index. A role the player did not
list is autofill: it is allowed only once the player has waited ``autofill_after``
seconds, and it costs more than any listed role, so autofill happens only when
nothing else fills the team.

NOTE: this module is not wired into the matchmaker or the protocol yet: no queue
setting, ``join_queue`` field or ``match_start`` field uses it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# Teams are assigned by trying every permutation: 5 roles are 120 permutations, and
# this bound keeps a 7-role team at 5,040.
MAX_ROLES: Final = 7


@dataclass(frozen=True, slots=True)
class RoleRequest:
    """One player's preferences: ``roles`` most wanted first, and seconds waited."""

    player: str
    roles: tuple[str, ...]
    wait: float


@dataclass(frozen=True, slots=True)
class RoleAssignment:
    role: str
    autofilled: bool


def assign_roles(
    team: Sequence[RoleRequest], roles: Sequence[str], autofill_after: float | None
) -> dict[str, RoleAssignment] | None:
    """Return each player's role, or None when no assignment gives every role one player.

    ``autofill_after`` None turns autofill off. Ties go to the first assignment in
    permutation order of ``roles``, so results are deterministic.
    """
    if len(team) != len(roles):
        return None
    if len(roles) > MAX_ROLES:
        msg = f"{len(roles)} roles is more than the {MAX_ROLES} a team can be assigned"
        raise ValueError(msg)
    unlisted_cost = len(roles) + 1

    best: tuple[int, tuple[str, ...]] | None = None
    for order in itertools.permutations(roles):
        cost = 0
        for request, role in zip(team, order, strict=True):
            if role in request.roles:
                cost += request.roles.index(role)
            elif autofill_after is not None and request.wait >= autofill_after:
                cost += unlisted_cost
            else:
                break
        else:
            if best is None or cost < best[0]:
                best = (cost, order)
    if best is None:
        return None
    return {
        request.player: RoleAssignment(role, role not in request.roles)
        for request, role in zip(team, best[1], strict=True)
    }
