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
    costs = [_costs(request, roles, autofill_after) for request in team]
    order = _cheapest_order(costs)
    if order is None:
        return None
    return {
        request.player: RoleAssignment(roles[index], bool(request.roles) and roles[index] not in request.roles)
        for request, index in zip(team, order, strict=True)
    }


# Larger than any assignment's total cost: at most 7 players times 8.
_BARRED: Final = 1_000


def _layer(count: int, size: int) -> list[tuple[int, list[int]]]:
    """Return each set of ``size`` roles out of ``count`` as a bit mask, with the roles not in it."""
    return [
        (taken, [role for role in range(count) if not taken >> role & 1])
        for taken in range(1 << count)
        if taken.bit_count() == size
    ]


# _LAYERS[count][size]: the sets of ``size`` taken roles that the dynamic programming
# of _cheapest_order visits, computed once for every team size up to MAX_ROLES.
_LAYERS: Final = [[_layer(count, size) for size in range(count + 1)] for count in range(MAX_ROLES + 1)]


def _costs(request: RoleRequest, roles: Sequence[str], autofill_after: float | None) -> list[int]:
    """Return the player's cost of each role: its place in their list, more for autofill, or barred."""
    if not request.roles:
        return [0] * len(roles)
    autofill = autofill_after is not None and request.wait >= autofill_after
    unlisted = len(roles) + 1 if autofill else _BARRED
    return [request.roles.index(role) if role in request.roles else unlisted for role in roles]


def _cheapest_order(costs: list[list[int]]) -> list[int] | None:
    """Return the role index of each player in the cheapest assignment, or None when every one is barred.

    Dynamic programming over the set of roles taken (2^7 sets at most) replaces the
    n! permutations. ``rest[i][taken]`` is the cheapest cost of players i onwards when
    the roles in ``taken`` are gone. Rebuilding front to back with the lowest role index
    that keeps the optimum returns the first cheapest permutation in lexicographic order.
    """
    count = len(costs)
    layers = _LAYERS[count]
    rest = [[0] * (1 << count) for _ in range(count + 1)]
    for player in reversed(range(count)):
        row, after, here = costs[player], rest[player + 1], rest[player]
        for taken, free in layers[player]:
            here[taken] = min([row[role] + after[taken | 1 << role] for role in free])
    if rest[0][0] >= _BARRED:
        return None

    order: list[int] = []
    taken = 0
    for player in range(count):
        target = rest[player][taken]
        role = next(
            role
            for role in range(count)
            if not taken >> role & 1 and costs[player][role] + rest[player + 1][taken | 1 << role] == target
        )
        order.append(role)
        taken |= 1 << role
    return order


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
