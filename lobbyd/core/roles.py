"""Role assignment: one player per role on every team, preferred roles first.

A queue may define positions (``("tank", "healer", "damage")``). Each player lists
the roles they want, most wanted first. A team is assignable when every role gets
exactly one player. Among all such assignments the one with the lowest total
preference rank wins, where a listed role costs its index. A role the player did not
list is autofill: it is allowed only once the player has waited ``autofill_after``
seconds, and it costs more than any listed role, so autofill happens only when
nothing else fills the team. A player who lists no role takes any role at no cost,
and is not counted as autofilled.

The matchmaker uses ``allowed_roles`` and ``slots_fillable`` to keep only groups whose
players can cover every role of every team, then ``assign_roles`` on each team of
the chosen split (``lobbyd.core.arrangement``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from lobbyd.protocol import messages

# Teams are assigned by trying every permutation: 5 roles are 120 permutations, and
# this bound, which the protocol shares, keeps a 7-role team at 5,040.
MAX_ROLES: Final = messages.MAX_ROLES


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
            if not request.roles:
                continue
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
        request.player: RoleAssignment(role, bool(request.roles) and role not in request.roles)
        for request, role in zip(team, best[1], strict=True)
    }


def allowed_roles(
    listed: tuple[str, ...], roles: Sequence[str], wait: float, autofill_after: float | None
) -> tuple[str, ...]:
    """Return the roles a player may be given after ``wait`` seconds: the listed ones, or any.

    Any role is allowed to a player who listed none, and to every player once
    autofill is on and they have waited ``autofill_after`` seconds. Listed roles keep
    their order, so searches try a player's favourites first.
    """
    if not listed:
        return tuple(roles)
    if autofill_after is not None and wait >= autofill_after:
        return (*listed, *(role for role in roles if role not in listed))
    return listed


Slot = tuple[str, int]
"""A role on one team: (role, team index)."""


@dataclass(frozen=True, slots=True)
class SlotMatching:
    """Players placed on distinct role slots, each on a role they are allowed.

    Every role has ``copies`` slots, one per team. Players are added by augmenting paths
    (Kuhn's algorithm for bipartite matching): every player already added stays
    placed, so each new player costs one search of at most players times slots steps.
    A complete matching says the players could cover every role of every team; it does
    not say which team split balances them.
    """

    copies: int
    allowed: tuple[tuple[str, ...], ...] = ()
    holders: dict[Slot, int] = field(default_factory=dict)

    def add(self, *players: tuple[str, ...]) -> SlotMatching | None:
        """Return the matching with ``players`` (each their allowed roles) placed too, or None."""
        allowed = self.allowed + players
        holders = dict(self.holders)
        for player in range(len(self.allowed), len(allowed)):
            if not _augment(player, allowed, holders, self.copies, set()):
                return None
        return SlotMatching(self.copies, allowed, holders)


def _augment(
    player: int, allowed: Sequence[tuple[str, ...]], holders: dict[Slot, int], copies: int, seen: set[Slot]
) -> bool:
    for role in allowed[player]:
        for copy in range(copies):
            slot = (role, copy)
            if slot in seen:
                continue
            seen.add(slot)
            holder = holders.get(slot)
            if holder is None or _augment(holder, allowed, holders, copies, seen):
                holders[slot] = player
                return True
    return False
