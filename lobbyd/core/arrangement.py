"""Arrange a matched group: its teams, each player's role and the region that hosts it.

A queue without roles or a latency limit splits teams with ``split_teams`` and hosts
in its own region, as it always did. With a latency limit, the region is the one
``choose_region`` picks under the limit of the anchor's wait, the same wait that
picks the rating step. With roles, the split must let every team give each role to
exactly one player. Two teams try splits from the most even one on. Among the first
few that work and are nearly as even as the first of them, the one that autofills
fewest players, then honours preferences best, wins. More teams try the greedy split,
then one built from the role slots. Within a split each team's roles go by
preference (``assign_roles``).

``GroupCheck`` is the cheap half that the matchmaker runs while it grows a group: it
rejects a ticket that leaves no common region or no way to cover every role.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from lobbyd.core.model import QueueRules, Ticket
from lobbyd.core.regions import choose_region, regions_within
from lobbyd.core.roles import RoleAssignment, RoleRequest, SlotMatching, allowed_roles, assign_roles
from lobbyd.core.teams import ranked_two_team_splits, split_parties, split_teams


@dataclass(frozen=True, slots=True)
class Arrangement:
    teams: list[list[Ticket]]
    roles: dict[str, RoleAssignment]
    """Player id to role; empty in a queue without roles."""
    region: str


def arrange(group: Sequence[Ticket], rules: QueueRules, now: float) -> Arrangement | None:
    """Return the teams, roles and region of ``group``, or None when the rules allow none.

    ``group[0]`` is the anchor; its wait sets the latency limit. The result depends
    only on the arguments, so the matchmaker's check and the lobby's proposal agree.
    """
    region = _region(group, rules, now - group[0].waiting_since)
    if region is None:
        return None
    if not rules.roles:
        return Arrangement(split_teams(group, rules.team_count, rules.team_size, rules.max_premade_gap), {}, region)

    best: tuple[tuple[int, int], list[list[Ticket]], dict[str, RoleAssignment]] | None = None
    first_gap = 0.0
    compared = 0
    for gap, teams in _splits(group, rules, now):
        if best is not None and (compared >= ROLE_SPLITS_COMPARED or gap > first_gap + ROLE_BALANCE_SLACK_MU):
            break
        roles = _team_roles(teams, rules, now)
        if roles is None:
            continue
        if best is None:
            first_gap = gap
        compared += 1
        cost = _role_cost(group, roles)
        if best is None or cost < best[0]:
            best = (cost, teams, roles)
        if cost == (0, 0):
            # Everyone has their first choice: no later split can do better.
            break
    if best is None:
        return None
    return Arrangement(best[1], best[2], region)


# How many workable splits a role queue compares, and how much less even than the
# first workable one (in the sum of mu over a team) a split may be to be compared. A
# mu point is about 50 display rating points, so 0.5 trades at most 25 points of
# team total for fewer autofilled players, and 3 splits bound the cost of assigning.
ROLE_SPLITS_COMPARED: Final = 3
ROLE_BALANCE_SLACK_MU: Final = 0.5


@dataclass(frozen=True, slots=True)
class Partial:
    """Constraints a growing group still allows: the regions every player is under the limit in, and the role slots."""

    regions: frozenset[str] | None
    slots: SlotMatching | None


class GroupCheck:
    """The role and region checks of one candidate match, built around its anchor."""

    __slots__ = ("ceiling", "now", "rules")

    def __init__(self, rules: QueueRules, now: float, anchor_wait: float) -> None:
        self.rules = rules
        self.now = now
        steps = rules.latency_steps
        self.ceiling = steps.limit_at(anchor_wait) if steps is not None else None

    def start(self) -> Partial:
        regions = frozenset(self.rules.regions) if self.ceiling is not None and self.rules.regions else None
        return Partial(regions, SlotMatching(self.rules.team_count) if self.rules.roles else None)

    def extend(self, partial: Partial, ticket: Ticket) -> Partial | None:
        """Return ``partial`` with ``ticket`` added, or None when the ticket rules the match out."""
        regions = partial.regions
        if self.ceiling is not None:
            within = regions_within(ticket.latency, self.ceiling)
            regions = within if regions is None else regions & within
            if not regions:
                return None

        slots = partial.slots
        if slots is not None:
            allowed = _allowed(ticket, self.rules, self.now)
            # A party plays on one team, so its members need distinct roles.
            if ticket.size > 1 and SlotMatching(1).add(*allowed) is None:
                return None
            slots = slots.add(*allowed)
            if slots is None:
                return None
        return Partial(regions, slots)


def _allowed(ticket: Ticket, rules: QueueRules, now: float) -> tuple[tuple[str, ...], ...]:
    """Return the roles each player of ``ticket`` may be given now."""
    wait = now - ticket.waiting_since
    return tuple(allowed_roles(ticket.prefs_of(i), rules.roles, wait, rules.autofill_after) for i in range(ticket.size))


def _region(group: Sequence[Ticket], rules: QueueRules, anchor_wait: float) -> str | None:
    if rules.latency_steps is None:
        return rules.region
    # A ticket without a report has no region any match can use. ``rules.regions`` may
    # be narrower than at the join: the lobby leaves out regions without a free server.
    allowed = rules.regions
    latencies = [
        {region: ms for region, ms in (ticket.latency or {}).items() if not allowed or region in allowed}
        for ticket in group
    ]
    return choose_region(latencies, rules.latency_steps, anchor_wait)


def _splits(group: Sequence[Ticket], rules: QueueRules, now: float) -> Iterator[tuple[float, list[list[Ticket]]]]:
    """Yield candidate team splits with their mu gap, the most even first.

    Splits of more than two teams have no gap ordering and come with gap 0.
    """
    if rules.team_count == 2:
        for gap, first, second in ranked_two_team_splits(group, rules.team_size, rules.max_premade_gap):
            yield gap, [first, second]
        return
    greedy = split_parties(group, rules.team_count, rules.team_size, rules.max_premade_gap)
    if greedy is not None:
        yield 0.0, greedy
    if all(ticket.size == 1 for ticket in group):
        by_slots = _teams_from_slots(group, rules, now)
        if by_slots is not None:
            yield 0.0, by_slots
    # TODO: parties in a role queue of more than two teams get only the greedy split,
    # so a group whose greedy split puts two tanks on one team waits for another group.


def _teams_from_slots(group: Sequence[Ticket], rules: QueueRules, now: float) -> list[list[Ticket]] | None:
    """Split solo tickets so that the holders of slot (role, k) form team k."""
    allowed = [allowed for ticket in group for allowed in _allowed(ticket, rules, now)]
    matching = SlotMatching(rules.team_count).add(*allowed)
    if matching is None:
        return None
    teams: list[list[Ticket]] = [[] for _ in range(rules.team_count)]
    for (_, team), player in sorted(matching.holders.items()):
        teams[team].append(group[player])
    return teams


def _role_cost(group: Sequence[Ticket], roles: dict[str, RoleAssignment]) -> tuple[int, int]:
    """Return (autofilled players, sum of the given roles' places in each player's list)."""
    autofilled = 0
    rank = 0
    for ticket in group:
        for index, player in enumerate(ticket.players):
            given = roles[player]
            listed = ticket.prefs_of(index)
            if given.autofilled:
                autofilled += 1
            elif given.role in listed:
                rank += listed.index(given.role)
    return autofilled, rank


def _team_roles(teams: Sequence[Sequence[Ticket]], rules: QueueRules, now: float) -> dict[str, RoleAssignment] | None:
    """Return every player's role when each team can cover every role, else None."""
    roles: dict[str, RoleAssignment] = {}
    for team in teams:
        # The matching is cheaper than assign_roles' permutations, and most
        # infeasible splits fail it.
        allowed = [allowed for ticket in team for allowed in _allowed(ticket, rules, now)]
        if SlotMatching(1).add(*allowed) is None:
            return None
        requests = [
            RoleRequest(player, ticket.prefs_of(index), now - ticket.waiting_since)
            for ticket in team
            for index, player in enumerate(ticket.players)
        ]
        assigned = assign_roles(requests, rules.roles, rules.autofill_after)
        if assigned is None:
            return None
        roles.update(assigned)
    return roles
