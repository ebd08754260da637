"""The two sizes of run: ``full`` for ``make bench`` and ``quick`` for ``make bench-quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    wire_conns: tuple[int, ...]
    wire_depths: tuple[int, ...]
    wire_rounds: int
    """Interleaved repetitions of each wire configuration; the report keeps the best."""
    wire_warmup_s: float
    wire_seconds: float
    session_counts: tuple[int, ...]
    """Idle-session counts; the largest count that the open-file limit allows is added."""
    add_max_sessions: bool
    storm_clients: int
    storm_in_flight: tuple[int, ...]
    """Extra storm runs with at most this many clients awaiting welcome at once."""
    matchmaker_sizes: tuple[int, ...]
    matchmaker_repeats: int
    lifecycle_players: int
    lifecycle_join_s: tuple[float, ...]
    """Seconds over which the players' joins are spread; one run with a fresh daemon each."""
    fanout_sessions: int
    fanout_rounds: int
    cluster_nodes: tuple[int, ...]
    """Cluster sizes to run; each run gets fresh nodes, keys and tables."""
    cluster_players: int
    cluster_probes: int
    """Join and leave round trips per node in the latency part of the cluster run."""


FULL = Profile(
    name="full",
    wire_conns=(1, 100, 1000),
    wire_depths=(1, 16),
    wire_rounds=3,
    wire_warmup_s=0.5,
    wire_seconds=2.0,
    session_counts=(1000, 5000, 10000),
    add_max_sessions=True,
    storm_clients=10_000,
    storm_in_flight=(500,),
    matchmaker_sizes=(1000, 10_000, 100_000),
    matchmaker_repeats=3,
    lifecycle_players=10_000,
    lifecycle_join_s=(2.0, 10.0),
    fanout_sessions=10_000,
    fanout_rounds=5,
    cluster_nodes=(1, 2, 3),
    cluster_players=2000,
    cluster_probes=200,
)

QUICK = Profile(
    name="quick",
    wire_conns=(1, 100),
    wire_depths=(1, 16),
    wire_rounds=1,
    wire_warmup_s=0.3,
    wire_seconds=1.0,
    session_counts=(1000, 2000),
    add_max_sessions=False,
    storm_clients=2000,
    storm_in_flight=(),
    matchmaker_sizes=(1000, 10_000),
    matchmaker_repeats=1,
    lifecycle_players=1000,
    lifecycle_join_s=(1.0,),
    fanout_sessions=1000,
    fanout_rounds=3,
    cluster_nodes=(1, 3),
    cluster_players=500,
    cluster_probes=50,
)

PROFILES = {profile.name: profile for profile in (FULL, QUICK)}
