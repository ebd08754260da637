"""Pick groups of tickets that can play together, oldest tickets first.

Each pass walks the tickets in anchor order: requeued (priority) tickets first, then
by how long they have waited. The anchor's wait sets the rating window
(``QueueRules.window``), so an old ticket pulls in a wider range of players than a
new one. Candidates come from the pool's rating index, nearest rating first, within
the anchor's window; among those, the longest-waiting fill the match. A party ticket
counts its members, and a group forms only if its parties split into whole teams. A group is only
formed when it is complete, so a pass never holds a ticket it cannot use.

A queue with roles or a latency limit (``QueueRules.constrained``) looks at more
candidates and admits one only if the group still has a region under the latency
limit of the anchor's wait and can still cover every role of every team
(``GroupCheck``); a complete group must have an arrangement (``arrange``). Queues
without them take none of these steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

from lobbyd.core.arrangement import GroupCheck, Partial, arrange
from lobbyd.core.model import QueueRules, Ticket
from lobbyd.core.pool import TicketPool
from lobbyd.core.teams import split_parties

# How many in-window neighbours an anchor considers beyond the players it needs:
# more gives older tickets a better chance to be picked, at a linear cost per anchor.
CANDIDATE_SLACK: Final = 2

# Candidates an anchor considers beyond the players it needs, per player of the match,
# in a queue with roles or a latency limit: many neighbours cannot fill the roles still
# open or share no region, so the anchor looks further.
CONSTRAINED_SLACK_PER_PLAYER: Final = 3

# Partial sets the party search of one anchor may visit: enough for every subset of
# the 6 candidates of a 2v2 with slack, and a bound on a 5v5 full of parties.
MAX_FILL_STEPS: Final = 256
# NOTE: party tickets make a tick dearer. In one ad hoc run (a 100,000-ticket 5v5 pool,
# 30% of tickets parties of 2 or 3), 50 matches took about 13 to 18 ms here against
# about 3 ms with solo tickets only; no benchmark in the repository tracks it yet.


GroupPolicy: TypeAlias = Callable[[TicketPool, QueueRules, float, int], list[list[Ticket]]]
"""Forms matches in one queue: ``(pool, rules, now, limit)`` to the groups it removed
from the pool. ``take_groups`` is lobbyd's policy; the tuning engine compares others."""


def anchor_order(ticket: Ticket) -> tuple[bool, float, int]:
    return (not ticket.priority, ticket.waiting_since, ticket.seq)


def take_groups(pool: TicketPool, rules: QueueRules, now: float, limit: int) -> list[list[Ticket]]:
    """Remove and return up to ``limit`` disjoint groups of tickets with ``rules.match_size`` players.

    The limit bounds the work of one tick; the tickets left wait for the next one,
    oldest still first.
    """
    need = rules.match_size
    groups: list[list[Ticket]] = []
    if pool.players < need or limit <= 0:
        return groups

    for anchor in pool.anchors():
        if anchor.player not in pool:
            continue
        if pool.players < need:
            break
        window = rules.window(now - anchor.waiting_since, anchor.uncertainty)
        slack = CONSTRAINED_SLACK_PER_PLAYER * need if rules.constrained else CANDIDATE_SLACK
        candidates = pool.nearest(anchor, window, need - 1 + slack)
        group = _fill(anchor, candidates, rules, now)
        if group is None:
            continue
        for ticket in group:
            pool.remove(ticket.player)
        groups.append(group)
        if len(groups) >= limit:
            break
    return groups


def _fill(anchor: Ticket, candidates: list[Ticket], rules: QueueRules, now: float) -> list[Ticket] | None:
    """Return the anchor and candidates that make exactly one match, or None.

    Solo tickets take the longest-waiting candidates. Party tickets, and every ticket
    of a queue with roles or a latency limit, are tried in the same order by a
    depth-first search for player counts that add up, pass ``GroupCheck`` and split
    into whole teams (``split_parties``, or ``arrange``), the first such set winning.
    The search visits at most ``MAX_FILL_STEPS`` partial sets, so an anchor that
    cannot be served costs bounded time and waits for the next tick.
    """
    need = rules.match_size
    ordered = sorted(candidates, key=anchor_order)
    if not rules.constrained and anchor.size == 1 and all(ticket.size == 1 for ticket in ordered):
        if len(ordered) < need - 1:
            return None
        return [anchor, *ordered[: need - 1]]

    check = GroupCheck(rules, now, now - anchor.waiting_since) if rules.constrained else None
    steps = 0

    def complete(group: list[Ticket]) -> bool:
        if check is None:
            return split_parties(group, rules.team_count, rules.team_size, rules.max_premade_gap) is not None
        # For solo tickets the checks are exact: a shared region is one choose_region
        # accepts, and players who fill every role slot can be dealt one team per
        # slot copy, so arrange succeeds. Parties must stay whole, which only arrange sees.
        return all(ticket.size == 1 for ticket in group) or arrange(group, rules, now) is not None

    def search(group: list[Ticket], total: int, start: int, partial: Partial | None) -> list[Ticket] | None:
        nonlocal steps
        steps += 1
        if total == need:
            return group if complete(group) else None
        for index in range(start, len(ordered)):
            if steps >= MAX_FILL_STEPS:
                return None
            ticket = ordered[index]
            if total + ticket.size > need:
                continue
            grown = partial
            if check is not None and partial is not None:
                # A rejected ticket costs a matching, so it counts as a step.
                grown = check.extend(partial, ticket)
                if grown is None:
                    steps += 1
                    continue
            found = search([*group, ticket], total + ticket.size, index + 1, grown)
            if found is not None:
                return found
        return None

    partial = None
    if check is not None:
        partial = check.extend(check.start(), anchor)
        if partial is None:
            return None
    return search([anchor], anchor.size, 0, partial)


def find_groups(tickets: Iterable[Ticket], rules: QueueRules, now: float) -> list[list[Ticket]]:
    """Return the groups ``take_groups`` would form from ``tickets``, leaving them untouched."""
    pool = TicketPool()
    # The pool expects tickets to join oldest first, as they do in a queue.
    for ticket in sorted(tickets, key=lambda t: (t.waiting_since, t.seq)):
        pool.add(ticket)
    return take_groups(pool, rules, now, limit=len(pool))
