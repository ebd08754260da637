"""Pick groups of tickets that can play together, oldest tickets first.

Each pass walks the tickets in anchor order: requeued (priority) tickets first, then
by how long they have waited. The anchor's wait sets the rating window
(``QueueRules.window``), so an old ticket pulls in a wider range of players than a
new one. Candidates come from the pool's rating index, nearest rating first, within
the anchor's window; among those, the longest-waiting fill the match. A group is only
formed when it is complete, so a pass never holds a ticket it cannot use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from lobbyd.core.model import QueueRules, Ticket
from lobbyd.core.pool import TicketPool

# How many in-window neighbours an anchor considers beyond the players it needs:
# more gives older tickets a better chance to be picked, at a linear cost per anchor.
CANDIDATE_SLACK: Final = 2


def anchor_order(ticket: Ticket) -> tuple[bool, float, int]:
    return (not ticket.priority, ticket.waiting_since, ticket.seq)


def take_groups(pool: TicketPool, rules: QueueRules, now: float, limit: int) -> list[list[Ticket]]:
    """Remove and return up to ``limit`` disjoint groups of ``rules.match_size`` tickets.

    The limit bounds the work of one tick; the tickets left wait for the next one,
    oldest still first.
    """
    need = rules.match_size
    groups: list[list[Ticket]] = []
    if len(pool) < need or limit <= 0:
        return groups

    for anchor in pool.anchors():
        if anchor.player not in pool:
            continue
        if len(pool) < need:
            break
        window = rules.window(now - anchor.waiting_since, anchor.uncertainty)
        candidates = pool.nearest(anchor, window, need - 1 + CANDIDATE_SLACK)
        if len(candidates) < need - 1:
            continue
        chosen = sorted(candidates, key=anchor_order)[: need - 1]
        group = [anchor, *chosen]
        for ticket in group:
            pool.remove(ticket.player)
        groups.append(group)
        if len(groups) >= limit:
            break
    return groups


def find_groups(tickets: Iterable[Ticket], rules: QueueRules, now: float) -> list[list[Ticket]]:
    """Return the groups ``take_groups`` would form from ``tickets``, leaving them untouched."""
    pool = TicketPool()
    # The pool expects tickets to join oldest first, as they do in a queue.
    for ticket in sorted(tickets, key=lambda t: (t.waiting_since, t.seq)):
        pool.add(ticket)
    return take_groups(pool, rules, now, limit=len(pool))
