"""The tickets of one queue, indexed for the matchmaker.

A queue can hold 100,000 tickets, and a tick must not sort them or walk past
tickets it cannot use. The pool keeps three views, all updated in constant or
logarithmic time on every add and remove:

* ``tickets``: player id to ticket, in insertion order. Tickets join with the
  current time, so apart from requeued tickets this is oldest first.
* ``priority``: the requeued tickets, which anchors take before all others.
* ``buckets``: tickets by exact rating, each bucket in insertion order, with the
  distinct ratings in a sorted list, so the nearest ratings to any value are found by
  bisection and a bucket gives its oldest tickets first.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping

from lobbyd.core.model import Ticket


class TicketPool(Mapping[str, Ticket]):
    """The tickets of one queue by player id, with rating and priority indexes."""

    __slots__ = ("buckets", "players", "priority", "ratings", "tickets")

    def __init__(self) -> None:
        self.tickets: dict[str, Ticket] = {}
        self.priority: dict[str, Ticket] = {}
        self.buckets: dict[int, dict[str, Ticket]] = {}
        self.ratings: list[int] = []
        """The distinct ratings of the tickets, ascending."""
        self.players = 0
        """Players on all tickets: a party ticket counts each member."""

    def __getitem__(self, player: str) -> Ticket:
        return self.tickets[player]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tickets)

    def __len__(self) -> int:
        return len(self.tickets)

    def add(self, ticket: Ticket) -> None:
        self.tickets[ticket.player] = ticket
        self.players += ticket.size
        if ticket.priority:
            self.priority[ticket.player] = ticket
        bucket = self.buckets.get(ticket.rating)
        if bucket is None:
            bucket = self.buckets[ticket.rating] = {}
            bisect.insort(self.ratings, ticket.rating)
        bucket[ticket.player] = ticket

    def remove(self, player: str) -> Ticket:
        """Remove and return ``player``'s ticket; raises KeyError if there is none."""
        ticket = self.tickets.pop(player)
        self.players -= ticket.size
        self.priority.pop(player, None)
        bucket = self.buckets[ticket.rating]
        del bucket[player]
        if not bucket:
            del self.buckets[ticket.rating]
            del self.ratings[bisect.bisect_left(self.ratings, ticket.rating)]
        return ticket

    def anchors(self) -> Iterator[Ticket]:
        """Yield every ticket in anchor order: requeued ones first, then the oldest.

        The order is taken up front, so the caller may remove tickets while it
        iterates; it must skip the tickets no longer in the pool. Tickets join in
        time order, so insertion order is age order; only a wall-clock step backwards
        while tickets join could disorder it, by the size of the step.
        """
        yield from sorted(self.priority.values(), key=lambda t: (t.waiting_since, t.seq))
        for ticket in list(self.tickets.values()):
            if not ticket.priority:
                yield ticket

    def nearest(self, anchor: Ticket, window: float, count: int) -> list[Ticket]:
        """Return up to ``count`` other tickets within ``window`` of the anchor's rating.

        Nearest rating first; at equal distance the lower rating first; within one
        rating the oldest first.
        """
        center = anchor.rating
        ratings = self.ratings
        right = bisect.bisect_left(ratings, center)
        left = right - 1
        found: list[Ticket] = []
        while len(found) < count:
            left_gap = center - ratings[left] if left >= 0 else None
            right_gap = ratings[right] - center if right < len(ratings) else None
            if right_gap is None or (left_gap is not None and left_gap <= right_gap):
                gap, rating, left = left_gap, ratings[left] if left >= 0 else 0, left - 1
            else:
                gap, rating, right = right_gap, ratings[right], right + 1
            if gap is None or gap > window:
                break
            for ticket in self.buckets[rating].values():
                if ticket is not anchor:
                    found.append(ticket)
                    if len(found) == count:
                        break
        return found
