"""Reference match-forming policies to compare lobbyd's matchmaker against.

Each is a ``GroupPolicy``, as ``Lobby.tick`` takes it, and exists only in the offline
engine, never in the daemon. The lobby splits their groups into teams as it splits
its own (``split_teams``), so only the choice of players differs.

* ``fifo``: the first players in queue order form a match, whatever their ratings.
* ``FixedInterval``: every ``interval`` seconds, the waiting pool is sorted by rating
  and cut into consecutive groups whose rating spread is within a fixed ``window``;
  the players left over wait for the next cut, however long they have waited.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from lobbyd.core.matchmaker import GroupPolicy, take_groups
from lobbyd.core.model import QueueRules, Ticket
from lobbyd.core.pool import TicketPool
from lobbyd.core.teams import split_parties

LOBBYD: Final = "lobbyd"
FIFO: Final = "fifo"
FIXED_INTERVAL: Final = "fixed-interval"
NAMES: Final = (LOBBYD, FIFO, FIXED_INTERVAL)


def fifo(pool: TicketPool, rules: QueueRules, now: float, limit: int) -> list[list[Ticket]]:
    """Remove and return groups of the first tickets in queue order, requeued tickets first."""
    groups = _consecutive_groups(pool.anchors(), rules, limit)
    _remove(pool, groups)
    return groups


class FixedInterval:
    """Every ``interval`` seconds per queue, cut the pool sorted by rating into groups.

    A group forms only when its highest and lowest ratings are at most ``window``
    points apart, whatever its players' wait; None takes every group.
    """

    def __init__(self, interval: float, window: float | None = None) -> None:
        self.interval = interval
        self.window = window
        self.next_cut: dict[str, float] = {}

    def __call__(self, pool: TicketPool, rules: QueueRules, now: float, limit: int) -> list[list[Ticket]]:
        due = self.next_cut.setdefault(rules.name, now + self.interval)
        if now < due:
            return []
        ordered = sorted(pool.values(), key=lambda ticket: (ticket.rating, ticket.waiting_since, ticket.seq))
        groups = _consecutive_groups(ordered, rules, limit, self.window)
        _remove(pool, groups)
        # A cut that hit the tick's match limit continues on the next tick, which the
        # lobby runs at once. Only a finished cut waits for the next interval.
        if len(groups) < limit:
            self.next_cut[rules.name] = now + self.interval
        return groups


def make(name: str, interval: float, window: float | None = None) -> GroupPolicy:
    """Return the policy called ``name``.

    ``interval`` in seconds and ``window`` in rating points are the fixed-interval cut's.
    """
    if name == FIFO:
        return fifo
    if name == FIXED_INTERVAL:
        return FixedInterval(interval, window)
    if name == LOBBYD:
        return take_groups
    msg = f"unknown policy {name!r}: expected one of {', '.join(NAMES)}"
    raise ValueError(msg)


def _consecutive_groups(
    tickets: Iterable[Ticket], rules: QueueRules, limit: int, window: float | None = None
) -> list[list[Ticket]]:
    """Fill groups from ``tickets`` in order; a ticket too large for the open group waits for the next.

    With a ``window``, only groups within ``window`` rating points form, and
    ``tickets`` must be sorted by rating. A ticket too far above the open group's first
    ticket drops the group's tickets that are more than ``window`` points below it.
    """
    need = rules.match_size
    groups: list[list[Ticket]] = []
    group: list[Ticket] = []
    total = 0
    for ticket in tickets:
        if len(groups) >= limit:
            break
        if window is not None:
            while group and ticket.rating - group[0].rating > window:
                total -= group.pop(0).size
        if total + ticket.size > need or not _packs([*group, ticket], rules):
            continue
        group.append(ticket)
        total += ticket.size
        if total < need:
            continue
        # Parties must split into whole teams; if they cannot, the last one waits.
        if split_parties(group, rules.team_count, rules.team_size, rules.max_premade_gap) is None:
            total -= group.pop().size
            continue
        groups.append(group)
        group, total = [], 0
    return groups


def _packs(tickets: list[Ticket], rules: QueueRules) -> bool:
    """Return True when the tickets' parties fit into the teams without splitting any.

    Without this check a group could take parties that no later ticket can complete,
    for example three parties of 3 for two teams of 5, and stop the policy for good.
    """
    sizes = sorted((ticket.size for ticket in tickets), reverse=True)
    room = [rules.team_size] * rules.team_count

    def place(index: int) -> bool:
        if index == len(sizes):
            return True
        tried = set()
        for team, free in enumerate(room):
            if free < sizes[index] or free in tried:
                continue
            tried.add(free)
            room[team] -= sizes[index]
            if place(index + 1):
                return True
            room[team] += sizes[index]
        return False

    return place(0)


def _remove(pool: TicketPool, groups: list[list[Ticket]]) -> None:
    for group in groups:
        for ticket in group:
            pool.remove(ticket.player)
