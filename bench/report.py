"""Turn a run's results into target verdicts, Markdown tables and BENCHMARKS.md."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

# The project's goals. Each is checked against the run's own figures; the
# baselines are measured in the same run, so ratios compare like with like.
MAX_PIPELINED_VS_STREAMS = 1.0
MAX_PIPELINED_VS_PROTOCOL = 2.0
MAX_SINGLE_VS_PROTOCOL = 1.3
MAX_KB_PER_SESSION = 8.0
MAX_SESSION_SPREAD = 1.25
"""Flat: the largest per-session figure is at most this many times the smallest."""
MAX_TICK_MS = 50.0
TICK_TARGET_TICKETS = 100_000
MAX_ACCEPT_TO_START_P99_MS = 5.0
MAX_LOOP_LAG_MS = 10.0
MIN_STORM_PER_S = 5000.0


@dataclass
class Verdict:
    target: str
    measured: str
    passed: bool | None
    """None when the run did not measure it (a quick run, or a failed phase)."""

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "not run"}[self.passed]


def evaluate(phases: dict[str, Any]) -> list[Verdict]:
    return [
        *_wire_verdicts(phases.get("wire", {})),
        *_session_verdicts(phases.get("sessions", {})),
        _storm_verdict(phases.get("storm", {})),
        _tick_verdict(phases.get("matchmaker", {})),
        *_lifecycle_verdicts(phases.get("lifecycle", {})),
    ]


def wire_row(wire: dict[str, Any], server: str, conns: int, depth: int) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = wire.get("rows", [])
    for row in rows:
        if (row["server"], row["conns"], row["depth"]) == (server, conns, depth):
            return row
    return None


def wire_ratio(wire: dict[str, Any], baseline: str, conns: int, depth: int) -> float | None:
    """Return lobbyd's server CPU per ping divided by ``baseline``'s in the same configuration."""
    ours, theirs = wire_row(wire, "lobbyd", conns, depth), wire_row(wire, baseline, conns, depth)
    if not ours or not theirs or not ours["server_cpu_us_per_ping"] or not theirs["server_cpu_us_per_ping"]:
        return None
    return float(ours["server_cpu_us_per_ping"]) / float(theirs["server_cpu_us_per_ping"])


def _ratio_verdict(wire: dict[str, Any], target: str, baseline: str, conns: int, depth: int, limit: float) -> Verdict:
    ratio = wire_ratio(wire, baseline, conns, depth)
    if ratio is None:
        return Verdict(target, "—", None)
    ours, theirs = wire_row(wire, "lobbyd", conns, depth), wire_row(wire, baseline, conns, depth)
    assert ours and theirs
    measured = f"{ours['server_cpu_us_per_ping']:.2f} µs vs {theirs['server_cpu_us_per_ping']:.2f} µs = {ratio:.2f}x"
    return Verdict(target, measured, ratio <= limit)


def _wire_verdicts(wire: dict[str, Any]) -> Iterable[Verdict]:
    yield _ratio_verdict(
        wire, "lobbyd CPU per ping, 100 conns x 16 in flight ≤ streams echo", "streams_echo", 100, 16,
        MAX_PIPELINED_VS_STREAMS,
    )
    yield _ratio_verdict(
        wire, f"lobbyd CPU per ping, 100 conns x 16 in flight ≤ {MAX_PIPELINED_VS_PROTOCOL:g}x protocol echo",
        "protocol_echo", 100, 16, MAX_PIPELINED_VS_PROTOCOL,
    )
    for conns in (1, 100, 1000):
        connections = "1 conn" if conns == 1 else f"{conns:,} conns"
        yield _ratio_verdict(
            wire, f"lobbyd CPU per ping, {connections} x 1 in flight ≤ {MAX_SINGLE_VS_PROTOCOL:g}x protocol echo",
            "protocol_echo", conns, 1, MAX_SINGLE_VS_PROTOCOL,
        )


def _session_verdicts(sessions: dict[str, Any]) -> Iterable[Verdict]:
    points = [p for p in sessions.get("points", []) if p["sessions"]]
    per_session = [p["rss_kb_per_session"] for p in points]
    if not per_session:
        yield Verdict(f"RSS per idle session ≤ {MAX_KB_PER_SESSION:g} KB", "—", None)
        yield Verdict("RSS per idle session flat", "—", None)
        return
    worst = max(per_session)
    yield Verdict(
        f"RSS per idle session ≤ {MAX_KB_PER_SESSION:g} KB at every count",
        f"max {worst:.2f} KB (up to {points[-1]['sessions']:,} sessions)",
        worst <= MAX_KB_PER_SESSION,
    )
    spread = worst / min(per_session)
    yield Verdict(
        f"RSS per idle session flat (largest ≤ {MAX_SESSION_SPREAD:g}x smallest)",
        ", ".join(f"{value:.2f}" for value in per_session) + f" KB; spread {spread:.2f}x",
        spread <= MAX_SESSION_SPREAD,
    )


def _storm_verdict(phase: dict[str, Any]) -> Verdict:
    target = f"storm ≥ {MIN_STORM_PER_S:,.0f} hello/s (all clients at once)"
    storm: dict[str, Any] = next((run for run in phase.get("runs", []) if run["in_flight"] == 0), {})
    rate = storm.get("sessions_per_s")
    if rate is None:
        return Verdict(target, "—", None)
    failed = storm["clients"] - storm["welcomed"]
    measured = f"{rate:,.0f} /s, slowest welcome {number(storm['welcome']['max_ms'])} ms, {failed} failed"
    return Verdict(target, measured, rate >= MIN_STORM_PER_S and failed == 0)


def _tick_verdict(matchmaker: dict[str, Any]) -> Verdict:
    target = f"matchmaker tick < {MAX_TICK_MS:g} ms at {TICK_TARGET_TICKETS:,} tickets (slowest tick)"
    for size in matchmaker.get("sizes", []):
        if size["tickets"] == TICK_TARGET_TICKETS:
            measured = (
                f"{size['slowest_tick_ms']:,.1f} ms ({size['slowest_tick_gc_ms']:,.1f} ms of it in GC); "
                f"the pool drained in {size['ticks']:,.0f} ticks and {size['drain_ms']:,.0f} ms"
            )
            return Verdict(target, measured, size["slowest_tick_ms"] < MAX_TICK_MS)
    return Verdict(target, "—", None)


def _lifecycle_verdicts(phase: dict[str, Any]) -> Iterable[Verdict]:
    runs = phase.get("runs", [])
    if not runs:
        yield Verdict(f"last accept → every match_start p99 < {MAX_ACCEPT_TO_START_P99_MS:g} ms", "—", None)
        yield Verdict(f"event-loop lag ≤ {MAX_LOOP_LAG_MS:g} ms", "—", None)
    for run in runs:
        joins = f"{run['players']:,} joins over {run['join_seconds']:g} s"
        p99 = run["accept_to_start"]["p99_ms"]
        expected = run["players"] // 10
        note = "" if run["matches_started"] == expected else f" ({run['matches_started']} of {expected} started)"
        yield Verdict(
            f"last accept → every match_start p99 < {MAX_ACCEPT_TO_START_P99_MS:g} ms ({joins})",
            f"{number(p99, 1)} ms{note}",
            p99 is not None and p99 < MAX_ACCEPT_TO_START_P99_MS and not note,
        )
        worst = run["loop_lag"]["rtt"]["max_ms"]
        yield Verdict(
            f"event-loop lag ≤ {MAX_LOOP_LAG_MS:g} ms, slowest probe round trip ({joins})",
            f"{worst:,.1f} ms",
            worst <= MAX_LOOP_LAG_MS,
        )


# Tables.


def table(headers: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: Any, digits: int = 0) -> str:
    """Format ``value`` with thousands separators, or a dash for a missing figure."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def verdict_table(verdicts: list[Verdict]) -> str:
    return table(["target", "measured", "result"], ([v.target, v.measured, v.label] for v in verdicts))


def wire_table(wire: dict[str, Any]) -> str:
    rows = []
    for row in wire.get("rows", []):
        ratios = ["", ""]
        if row["server"] == "lobbyd":
            for i, baseline in enumerate(("streams_echo", "protocol_echo")):
                ratios[i] = number(wire_ratio(wire, baseline, row["conns"], row["depth"]), 2) + "x"
        rows.append([
            row["server"], number(row["conns"]), number(row["depth"]), number(row["pongs_per_s"]),
            number(row["rtt"]["p50_ms"], 3), number(row["rtt"]["p99_ms"], 3),
            number(row["server_cpu_us_per_ping"], 2), number(row["server_cpu_share"], 2),
            number(row["load_cpu_share"], 2), *ratios,
        ])
    headers = [
        "server", "conns", "in flight", "pings/s", "RTT p50 ms", "RTT p99 ms", "server CPU µs/ping",
        "server CPU (cores)", "generator CPU (cores)", "lobbyd ÷ streams", "lobbyd ÷ protocol",
    ]
    return table(headers, rows)


def sessions_table(sessions: dict[str, Any]) -> str:
    rows = [
        [
            number(p["sessions"]), number(p["rss"] / 1024, 1), number(p["pss"] / 1024, 1),
            number(p.get("rss_kb_per_session"), 2), number(p.get("pss_kb_per_session"), 2),
            number(p["open_files"]), number(p.get("open_s"), 1),
        ]
        for p in sessions.get("points", [])
    ]
    headers = ["sessions", "RSS MiB", "PSS MiB", "RSS KB/session", "PSS KB/session", "daemon fds", "open time s"]
    return table(headers, rows)


def storm_table(phase: dict[str, Any]) -> str:
    rows = [
        [
            number(run["clients"]), number(run["in_flight"]) if run["in_flight"] else "all",
            number(run["welcomed"]), number(run["sessions_per_s"]), number(run["welcome"]["p50_ms"], 1),
            number(run["welcome"]["p99_ms"], 1), number(run["welcome"]["max_ms"], 1),
            number(run["listen_overflows"]), number(run["server_cpu_s"], 2), number(run["load_cpu_s"], 2),
        ]
        for run in phase.get("runs", [])
    ]
    headers = [
        "clients", "in flight", "welcomed", "sessions/s", "welcome p50 ms", "welcome p99 ms",
        "slowest welcome ms", "listen queue overflows", "daemon CPU s", "generator CPU s",
    ]
    return table(headers, rows)


def matchmaker_table(matchmaker: dict[str, Any]) -> str:
    rows = [
        [
            number(s["tickets"]), number(s["first_tick_ms"], 1), number(s["first_tick_matches"]),
            number(s["slowest_tick_ms"], 1), number(s["slowest_tick_gc_ms"], 1),
            number(s["slowest_tick_without_gc_ms"], 1), number(s["ticks"]), number(s["drain_ms"], 0),
            number(s["matches"]), number(s["matches_per_s"]), number(s["repeats"]),
        ]
        for s in matchmaker.get("sizes", [])
    ]
    headers = [
        "waiting tickets", "first tick ms", "matches in first tick", "slowest tick ms", "of it in GC ms",
        "slowest tick without GC ms", "ticks to drain", "drain ms", "matches", "matches/s", "repeats (medians)",
    ]
    return table(headers, rows)


def lifecycle_table(phase: dict[str, Any]) -> str:
    rows = []
    for run in phase.get("runs", []):
        times, lag = run["accept_to_start"], run["loop_lag"]
        stages, cpu = lag["stage_max_ms"], run["daemon_cpu_share"]
        problems = ", ".join(f"{k} {v}" for k, v in sorted(run["problems"].items())) or "none"
        rows.append([
            number(run["players"]), number(run["join_seconds"], 1), number(run["matches_started"]),
            number(times["p50_ms"], 1), number(times["p99_ms"], 1), number(times["max_ms"], 1),
            number(cpu["matchmaking"], 2), number(lag["rtt"]["max_ms"], 1), number(stages["login"], 1),
            number(stages["matchmaking"], 1), number(lag["max_timer_lateness_ms"], 1), problems,
        ])
    headers = [
        "players", "joins over s", "matches started", "accept→start p50 ms", "p99 ms", "max ms",
        "daemon CPU (cores) from first join", "loop lag max ms", "during logins", "from first join",
        "probe's own timer lateness ms", "problems",
    ]
    return table(headers, rows)


def fanout_table(fanout: dict[str, Any]) -> str:
    if "rounds" not in fanout:
        return ""
    row = [
        number(fanout["sessions"]), number(len(fanout["rounds"])), number(fanout["write_median_ms"], 1),
        number(fanout["last_reply_median_ms"], 1), number(fanout["last_reply_max_ms"], 1),
        number(fanout["missing"]),
    ]
    headers = ["sessions", "rounds", "write loop ms (median)", "last pong ms (median)", "last pong ms (max)", "missing"]
    return table(headers, [row])


def cluster_table(phase: dict[str, Any]) -> str:
    """Return one row for the embedded daemon and one per cluster size."""
    rows = []
    for label, run in [("embedded (SQLite, no Redis)", phase["embedded"])] + [
        (f"cluster of {run['nodes']}", run) for run in phase["runs"]
    ]:
        trips = run["round_trips"]
        leader = [t for t in trips if t["port"] == run.get("leader_port")]
        followers = [t for t in trips if t["port"] != run.get("leader_port")] if "leader_port" in run else []
        start = run["accept_to_start"]
        rows.append(
            [
                label,
                number(run["matches_started"]),
                number(run["matches_per_s"], 1),
                number(start["p50_ms"], 2),
                number(start["p99_ms"], 2),
                number((leader or trips)[0]["p50_ms"], 3),
                number(followers[0]["p50_ms"], 3) if followers else "—",
                number(followers[0]["p99_ms"], 3) if followers else "—",
            ]
        )
    headers = [
        "setup", "matches", "matches/s", "accept→start p50 ms", "accept→start p99 ms",
        "request RTT p50 ms (leader's node)", "request RTT p50 ms (other node)", "request RTT p99 ms (other node)",
    ]
    return table(headers, rows)


SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("wire", "Wire: ping/pong", wire_table),
    ("sessions", "Sessions: memory per idle session", sessions_table),
    ("storm", "Connection storm", storm_table),
    ("matchmaker", "Matchmaker core tick (in process)", matchmaker_table),
    ("lifecycle", "Lifecycle: join → match_found → accept → match_start", lifecycle_table),
    ("fanout", "Fan-out: one ping to every session at once", fanout_table),
    ("cluster", "Cluster: matches started per second and request round trips", cluster_table),
]


def render_tables(results: dict[str, Any]) -> str:
    """Return the verdicts and one table per measurement, as Markdown."""
    parts = ["### Targets", "", verdict_table([Verdict(**v) for v in results["targets"]])]
    for key, title, render in SECTIONS:
        phase = results["phases"].get(key)
        if phase is None:
            continue
        parts += ["", f"### {title}", ""]
        if "error" in phase:
            parts.append(f"Failed: {phase['error']}")
            continue
        parts.append(render(phase))
        background = phase.get("background", {})
        if background:
            parts += [
                "",
                f"Other processes on the machine used {background['other_processes_cpus']:.2f} CPUs during this "
                f"measurement (steal {background['steal_cpus']:.2f}).",
            ]
    return "\n".join(parts)


def verdicts_as_dicts(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    return [asdict(v) for v in verdicts]
