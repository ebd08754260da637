"""In-process benchmark of the matchmaker core: ``Lobby.tick`` over a full 5v5 queue.

No sockets and no server. For each size, the lobby is built through its public
calls (``connect`` and ``join_queue`` for every player), with ratings drawn from a
normal distribution (mean 1500, sd 300) and waits drawn uniformly from 0 to 120 s.
Then ``tick(now)`` runs until a tick forms no match, which drains the pool whether
or not the lobby caps the matches of one tick. Only the ticks are timed. Each repeat
builds a fresh lobby from a new seed. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import statistics
import time
from typing import Any

from lobbyd.config import Config
from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import PlayerRecord

QUEUE = "5v5"
RATING_MEAN, RATING_SD = 1500, 300
MAX_WAIT_S = 120.0
NOW = 1_700_000_000.0  # a fixed epoch time, so runs are repeatable
MAX_TICKS = 100_000  # a bound on the drain loop, far above what any size needs


def build_lobby(tickets: int, seed: int) -> Lobby:
    """Return a lobby whose 5v5 queue contains ``tickets`` waiting players."""
    config = Config()  # the daemon's default queue rules and lobby settings
    match_ids = itertools.count()
    lobby = Lobby(config.queue_rules(), config.lobby_settings(), lambda: f"m{next(match_ids)}")
    rng = random.Random(seed)
    for index in range(tickets):
        player, session = f"p{index}", f"s{index}"
        rating = max(0, round(rng.gauss(RATING_MEAN, RATING_SD)))
        joined = NOW - rng.uniform(0.0, MAX_WAIT_S)
        record = PlayerRecord(player, player, rating, joined, joined)
        lobby.connect(session, record, player, None, joined)
        lobby.join_queue(session, QUEUE, joined)
    return lobby


class GcClock:
    """Total time spent in Python's garbage collector, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.total_ms = 0.0
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.total_ms += (time.perf_counter() - self._started) * 1000
            self._started = None


def drain(tickets: int, seed: int) -> dict[str, Any]:
    """Tick a fresh lobby until a tick forms no match; return tick times and matches.

    A collection by Python's garbage collector can fall inside any tick, as it can in
    the daemon, so each tick's collector time is recorded beside its total.
    """
    lobby = build_lobby(tickets, seed)
    gc.collect()
    clock = GcClock()
    gc.callbacks.append(clock)
    tick_ms: list[float] = []
    gc_ms: list[float] = []
    matches: list[int] = []
    try:
        while len(tick_ms) < MAX_TICKS:
            gc_before, started = clock.total_ms, time.perf_counter()
            effects = lobby.tick(NOW)
            tick_ms.append((time.perf_counter() - started) * 1000)
            gc_ms.append(clock.total_ms - gc_before)
            matches.append(sum(isinstance(effect, fx.OfferMatch) for effect in effects))
            if not matches[-1]:
                break
    finally:
        gc.callbacks.remove(clock)
    slowest = max(range(len(tick_ms)), key=tick_ms.__getitem__)
    return {
        "first_tick_ms": tick_ms[0],
        "first_tick_matches": matches[0],
        "slowest_tick_ms": tick_ms[slowest],
        "slowest_tick_gc_ms": gc_ms[slowest],
        "slowest_tick_without_gc_ms": max(total - in_gc for total, in_gc in zip(tick_ms, gc_ms, strict=True)),
        "ticks": len(tick_ms),
        "drain_ms": sum(tick_ms),
        "gc_ms": sum(gc_ms),
        "matches": sum(matches),
        "left_waiting": len(lobby.queues[QUEUE]),
    }


def measure(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    results = []
    for size in sizes:
        runs = [drain(size, seed) for seed in range(repeats)]
        summary: dict[str, Any] = {"tickets": size, "repeats": repeats}
        for key in runs[0]:
            summary[key] = statistics.median(run[key] for run in runs)
        summary["matches_per_s"] = summary["matches"] / (summary["drain_ms"] / 1000)
        summary["runs"] = runs
        results.append(summary)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=lambda text: [int(n) for n in text.split(",")], required=True,
        help="comma-separated ticket counts",
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh lobbies timed per size")
    args = parser.parse_args()
    print(json.dumps({"sizes": measure(args.sizes, args.repeats)}))


if __name__ == "__main__":
    main()
