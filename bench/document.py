"""Write BENCHMARKS.md from a full run's results."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench import report
from bench.phases import DAEMON_ENV

METHOD = """\
## What each measurement does

All traffic stays on loopback. Servers run pinned to one CPU and the load
generators to the other (`taskset -c`), each in its own process with its own
open-file limit. Every client connection has its own source address
(127.B.x.y, one block B per measurement), so ephemeral ports never run out and
lobbyd's per-address connection limit never applies. Every lobbyd instance is
fresh, with an empty SQLite data directory and the settings listed under
"Commands". Below each table, "other processes" is the machine's busy CPU time
(`/proc/stat`) minus the CPU time of the suite's own processes: on a shared
machine, figures taken while it is high are noisier.

1. **Wire.** `bench/load_wire.py` opens N connections (for lobbyd, each sends
   hello first) and keeps D pings in flight on each: a read that brings K pongs
   is answered with K new pings in one write. After a warm-up it measures a
   fixed window: pongs received per second, round-trip percentiles over every
   ping in the window, and the server's CPU time (utime + stime from
   `/proc/PID/stat`, 10 ms resolution) divided by the pongs received. One ping
   is one frame in and one frame out. The baselines
   `bench/baselines/streams_echo.py` (streams, two `readexactly` per frame,
   `write` and `drain` per reply) and `bench/baselines/protocol_echo.py`
   (`asyncio.Protocol`, one write per read) run beside lobbyd, all on uvloop and
   all decoding each msgpack map. Each configuration is measured on the three
   servers in turn, in several rounds, and the round with the least server CPU
   per ping is kept. With one ping in flight on few connections the server CPU
   often goes idle between pings, so its CPU per ping includes the cost of
   waking up. When the generator column nears 1.0, the generator set the pace.
2. **Sessions.** `bench/load_sessions.py` logs one session in and out, then
   reads the daemon's `Rss` and `Pss` from `/proc/PID/smaps_rollup` as the
   zero-session baseline. It grows to each count of idle authenticated sessions
   and reads again once the daemon's CPU time has stopped growing. KB per
   session is (memory at N - memory at 0) / N. The largest count is the
   open-file hard limit minus the daemon's open descriptors and a margin of 100,
   rounded down to hundreds. At the end every session must return a pong to one ping.
3. **Connection storm.** `bench/load_storm.py` starts every client in the same
   loop iteration: connect, hello, wait for welcome. Sessions per second is the
   clients welcomed divided by the time from the first connect call to the last
   welcome. A client's welcome time runs from its own connect call. The second
   row bounds how many clients wait for their welcome at once, which keeps the
   burst inside the listen queue and shows the daemon's own rate. Listen-queue
   overflows are the kernel's `TcpExtListenOverflows` counter over the storm. A
   connection dropped there is retried by the client's kernel after about 1 s.
4. **Matchmaker.** `bench/matchmaker.py` builds a `Lobby` in process through
   `connect` and `join_queue` for every player, with ratings drawn from a normal
   distribution (mean 1500, sd 300), waits uniform over 0-120 s and the daemon's
   default 5v5 rules and lobby settings. It then calls `tick(now)` until a tick
   forms no match, timing each tick, so the figures hold whether or not the
   lobby caps the matches of one tick: the first tick, the slowest tick, and the
   ticks and time needed to drain the pool. Each figure is the median over
   repeats, each repeat with a fresh lobby from a new seed. Python's garbage
   collector stays on, as in the daemon, and its time inside each tick is read
   through `gc.callbacks`, so a collection that lands in a tick shows as such.
5. **Lifecycle.** `bench/load_lifecycle.py` logs in every player, spreads their
   `join_queue` evenly over the given seconds, and accepts every `match_found`
   at once. Per match it takes the time from the last `accept` written to the
   last `match_start` read, both on the generator's clock, so the figure
   includes the generator's own delays. Each row uses a fresh daemon. Meanwhile
   `bench/lag_probe.py`, a separate process under real-time scheduling
   (`chrt --fifo`, when permitted), pings over its own session every 5 ms. Its
   slowest round trip is an upper bound on the daemon's longest event-loop
   stall, and it also includes time the ping waited behind other clients' work.
   The probe's own timer lateness shows how much of the bound is on the probe's
   side. "During logins" covers logging in the players, 500 at a time, and "from
   first join" covers the rest of the run.
6. **Fan-out.** lobbyd's `match_start` goes to 10 players, so a broadcast to
   every session is approximated from outside: `bench/load_fanout.py` logs in N
   sessions, then each round writes one ping on every connection in one loop
   pass before reading anything, and records when each pong arrives. The table
   gives the time the writes took and the time from the first write to the last
   pong. Both include the generator's own work on one CPU.
7. **Cluster.** `bench/load_cluster.py` runs against one embedded daemon, then
   against clusters of one, two and three nodes on Redis and PostgreSQL
   (`LOBBYD_BENCH_REDIS_URL` and `LOBBYD_BENCH_PG_DSN`, by default the local
   servers), each cluster with a fresh key prefix and schema. Every node runs on
   the server CPU; Redis and PostgreSQL run wherever the kernel puts them. First,
   on each node in turn, one player sends `join_queue` and `leave_queue` one at a
   time and the round trips are recorded: in a cluster they go through Redis to
   the leader and back through the node's inbox. Then the players, spread
   round-robin over the nodes, all join 5v5 at once and accept at once; matches per
   second run from the first `join_queue` to the last `match_start`.
"""


def render(results: dict[str, Any]) -> str:
    """Return the full BENCHMARKS.md text for ``results``."""
    parts = [
        "# lobbyd benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`) from `bench/`; the raw figures are in "
        "`bench/results/latest.json`. `make bench-quick` runs a smaller set in under a minute "
        "and writes only `bench/results/quick.json`.",
        "",
        f"Run on {results['date']} in {results['duration_s']:.0f} s, profile `{results['profile']}`.",
        "",
        "## Machine",
        "",
        machine_table(results),
        "",
        "## Results",
        "",
        report.render_tables(results),
        "",
        daemon_logs(results),
        METHOD,
        commands(results),
    ]
    return "\n".join(parts) + "\n"


def machine_table(results: dict[str, Any]) -> str:
    info = results["machine"]
    versions = info["versions"]
    commit = info["git_commit"] + (" with uncommitted changes" if info["git_dirty"] else "")
    rows = [
        ["CPU", f"{info['cpu_model']}, {info['cpus']} CPUs"],
        ["CPU use", f"servers on CPU {results['cpus']['server']}, load on CPU {results['cpus']['load']}"],
        ["memory", f"{info['memory_gib']} GiB"],
        ["kernel", info["kernel"]],
        ["Python", info["python"]],
        ["lobbyd", f"{versions['lobbyd']}, commit {commit}"],
        ["uvloop / msgspec / structlog", f"{versions['uvloop']} / {versions['msgspec']} / {versions['structlog']}"],
        ["open-file hard limit", str(info["open_files_hard_limit"])],
        ["load average at start", " ".join(info["load_average"])],
    ]
    return report.table(["", ""], rows)


def daemon_logs(results: dict[str, Any]) -> str:
    """Return the warnings, errors and stray output each lobbyd logged, and its exit code."""
    lines = ["## Daemon logs", "", "Each lobbyd ran at log level `warning`.", ""]
    for name, summary in results["daemon_logs"].items():
        events = ", ".join(f"`{event}` x {count}" for event, count in sorted(summary["events"].items()))
        lines.append(f"- `{name}`: exit code {summary['exit_code']}; {events or 'no warnings or errors'}.")
        for line in summary["other_lines"][:5]:
            lines.append(f"  - output: `{line[:200]}`")
    return "\n".join(lines) + "\n"


def commands(results: dict[str, Any]) -> str:
    settings = "\n".join(f"    {key}={value}" for key, value in DAEMON_ENV.items())
    # The wire rounds repeat each command; list each once, in first-run order, with its count.
    counts = Counter(results["commands"])
    listing = "\n".join(
        f"    {line}" + (f"  # {counts[line]} runs" if counts[line] > 1 else "") for line in counts
    )
    return (
        "## Commands\n\n"
        f"`{results['command']}` ran these processes from the repository root, in order. "
        "Ports and data directories are picked afresh each run.\n\n"
        f"{listing}\n\n"
        f"Every lobbyd got these settings:\n\n{settings}\n"
    )
