"""Region choice: where a match can be hosted so that every player's latency is acceptable.

Each player reports a round-trip time in milliseconds per region. A match may form in a
region only if every player reported it and every reported time is within the queue's
latency limit, which widens with the anchor's wait in steps (``Expansion``). Among the
regions that qualify, the one with the lowest worst-player latency wins, then the lowest
total, then the name, so the choice is deterministic.

Players report their latencies in ``join_queue``; a queue with ``latency_steps`` uses
this choice for every match, and game-server allocation looks in the chosen region.
A party ticket carries its leader's report for every member.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lobbyd.core.expansion import Expansion


def choose_region(latencies: Sequence[Mapping[str, float]], limit: Expansion, anchor_wait: float) -> str | None:
    """Return the best region for players with ``latencies``, or None when none qualifies."""
    if not latencies:
        return None
    ceiling = limit.limit_at(anchor_wait)
    shared = set(latencies[0]).intersection(*latencies[1:])

    best: tuple[float, float, str] | None = None
    for region in shared:
        times = [player[region] for player in latencies]
        worst = max(times)
        if worst > ceiling:
            continue
        key = (worst, sum(times), region)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def regions_within(latency: Mapping[str, float] | None, ceiling: float) -> frozenset[str]:
    """Return the regions whose reported latency is at most ``ceiling`` milliseconds."""
    if latency is None:
        return frozenset()
    if ceiling == math.inf:
        return frozenset(latency)
    return frozenset(region for region, ms in latency.items() if ms <= ceiling)
