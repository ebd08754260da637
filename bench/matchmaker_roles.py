"""In-process benchmark of ``Lobby.tick`` over a 5v5 queue with roles and a latency limit.

Like ``bench.matchmaker``, but every player lists one or two of five roles at random
and reports a latency from 10 to 150 ms to each of three regions. The queue
autofills after 60 s and allows 60 ms, then 100 ms after 30 s, then 150 ms after
90 s. Ticks run until one forms no match; only the ticks are timed. Prints one JSON
object on stdout. Run: ``python -m bench.matchmaker_roles --tickets 10000``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time

from lobbyd.core import effects as fx
from lobbyd.core.expansion import Expansion
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, PlayerRecord, QueueRules

ROLES = ("top", "jungle", "mid", "bot", "support")
REGIONS = ("eu", "us", "asia")
NOW = 1_700_000_000.0  # a fixed epoch time, so runs are repeatable
MAX_WAIT_S = 120.0
RULES = QueueRules(
    "ranked",
    team_size=5,
    roles=ROLES,
    autofill_after=60.0,
    latency_steps=Expansion.of((0, 60), (30, 100), (90, 150)),
)


def build_lobby(tickets: int, seed: int) -> Lobby:
    match_ids = itertools.count()
    lobby = Lobby({RULES.name: RULES}, LobbySettings(), lambda: f"m{next(match_ids)}")
    rng = random.Random(seed)
    for index in range(tickets):
        player, session = f"p{index}", f"s{index}"
        rating = max(0, round(rng.gauss(1500, 300)))
        joined = NOW - rng.uniform(0.0, MAX_WAIT_S)
        lobby.connect(session, PlayerRecord(player, player, rating, joined, joined), player, None, joined)
        roles = rng.sample(ROLES, rng.choice((1, 2)))
        latency = {region: rng.uniform(10.0, 150.0) for region in REGIONS}
        lobby.join_queue(session, RULES.name, joined, roles=roles, latency=latency)
    return lobby


def drain(tickets: int, seed: int) -> dict[str, float]:
    lobby = build_lobby(tickets, seed)
    tick_ms: list[float] = []
    matches: list[int] = []
    while True:
        started = time.perf_counter()
        effects = lobby.tick(NOW)
        tick_ms.append((time.perf_counter() - started) * 1000)
        matches.append(sum(isinstance(effect, fx.OfferMatch) for effect in effects))
        if matches[-1] == 0:
            break
    return {
        "first_tick_ms": tick_ms[0],
        "median_tick_ms": statistics.median(tick_ms),
        "slowest_tick_ms": max(tick_ms),
        "last_tick_ms": tick_ms[-1],
        "ticks": len(tick_ms),
        "matches": sum(matches),
        "left_waiting": len(lobby.queues[RULES.name]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [drain(args.tickets, seed) for seed in range(args.repeats)]
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(json.dumps({"tickets": args.tickets, "median": summary, "runs": runs}))


if __name__ == "__main__":
    main()
