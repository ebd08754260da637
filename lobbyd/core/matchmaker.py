"""Pick groups of tickets that can play together, oldest tickets first.

Each pass walks the tickets in anchor order: requeued (priority) tickets first, then
by how long they have waited, then by arrival. The anchor's wait sets the rating
window (``QueueRules.window``), so an old ticket pulls in a wider range of players
than a new one. Candidates come from the rating-sorted pool, nearest rating first,
within the anchor's window; among those, the longest-waiting fill the match. A group
is only formed when it is complete, so a pass never holds a ticket it cannot use.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

from lobbyd.core.model import QueueRules, Ticket

# How many in-window neighbours an anchor considers beyond the players it needs:
# more gives older tickets a better chance to be picked, at a linear cost per anchor.
CANDIDATE_SLACK: Final = 2


def anchor_order(ticket: Ticket) -> tuple[bool, float, int]:
    return (not ticket.priority, ticket.waiting_since, ticket.seq)


def find_groups(tickets: Iterable[Ticket], rules: QueueRules, now: float) -> list[list[Ticket]]:
    """Return disjoint groups of ``rules.match_size`` tickets, oldest anchors first."""
    pool = list(tickets)
    need = rules.match_size
    if len(pool) < need:
        return []

    by_rating = sorted(pool, key=lambda t: (t.rating, t.seq))
    ratings = [t.rating for t in by_rating]
    index = {t.player: i for i, t in enumerate(by_rating)}
    taken: set[str] = set()
    groups: list[list[Ticket]] = []

    for anchor in sorted(pool, key=anchor_order):
        if anchor.player in taken:
            continue
        if len(pool) - len(taken) < need:
            break
        window = rules.window(now - anchor.waiting_since, anchor.uncertainty)
        candidates = _nearest_free(by_rating, ratings, index[anchor.player], window, need, taken)
        if len(candidates) < need - 1:
            continue
        chosen = sorted(candidates, key=anchor_order)[: need - 1]
        group = [anchor, *chosen]
        taken.update(t.player for t in group)
        groups.append(group)
    return groups


def _nearest_free(
    by_rating: list[Ticket],
    ratings: list[int],
    at: int,
    window: float,
    need: int,
    taken: set[str],
) -> list[Ticket]:
    """Collect free tickets within ``window`` of ``by_rating[at]``, nearest first."""
    center = ratings[at]
    low = bisect.bisect_left(ratings, center - window)
    high = bisect.bisect_right(ratings, center + window)
    wanted = need - 1 + CANDIDATE_SLACK
    found: list[Ticket] = []
    left, right = at - 1, at + 1

    # Merge the two directions by rating distance, skipping tickets already taken.
    while len(found) < wanted and (left >= low or right < high):
        go_left = right >= high or (left >= low and center - ratings[left] <= ratings[right] - center)
        if go_left:
            ticket, left = by_rating[left], left - 1
        else:
            ticket, right = by_rating[right], right + 1
        if ticket.player not in taken:
            found.append(ticket)
    return found
