"""The seven measurements. Each starts its own servers, runs its generators and stops them.

Servers run on the server CPU and generators on the load CPU (see ``processes``).
Every lobbyd instance gets a fresh data directory and the environment in
``DAEMON_ENV``, and its log is summarized into ``Context.daemon_logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench import procfs
from bench.processes import (
    PYTHON,
    ROOT,
    BenchError,
    Cpus,
    Server,
    free_port,
    run_generator,
    start_background,
    start_server,
    stop_background,
    stop_server,
    summarize_log,
)
from bench.profiles import Profile
from lobbyd.server.fdlimit import HEADROOM_SHARE

LOBBYD = PYTHON.parent / "lobbyd"
BASELINES = {
    "streams_echo": ROOT / "bench" / "baselines" / "streams_echo.py",
    "protocol_echo": ROOT / "bench" / "baselines" / "protocol_echo.py",
}

# Settings the suite gives every lobbyd it starts. Settings this lobbyd version does
# not have are ignored by it.
DAEMON_ENV = {
    # INFO writes several lines per session, and that cost would be measured too.
    "LOBBYD_LOG_LEVEL": "warning",
    "LOBBYD_LOG_FORMAT": "json",
    # Idle sessions must outlive the longest measurement, and a busy generator may
    # take seconds to send hello.
    "LOBBYD_HEARTBEAT_TIMEOUT_MS": "3600000",
    "LOBBYD_HELLO_TIMEOUT_MS": "60000",
    "LOBBYD_SHUTDOWN_TIMEOUT_MS": "3000",
    # The abuse limits would reject the load itself: the open-file limit, not a
    # connection cap, bounds the session count, and wire tests send far more than a
    # player's rate. The limiter code still runs on every message.
    "LOBBYD_MAX_CONNECTIONS": "1000000",
    "LOBBYD_RATE_LIMIT_PER_S": "1000000000",
    "LOBBYD_RATE_LIMIT_BURST": "1000000",
}

# The lag probe shares the load CPU with the lifecycle generator. Real-time
# scheduling lets it preempt the generator at once, so its round trips measure the
# daemon rather than its own wait for the CPU.
REALTIME = ("chrt", "--fifo", "10")

# Descriptors kept free for the daemon's own files when sizing the largest session count.
FD_MARGIN = 100
GENERATOR_TIMEOUT_S = 300.0


@dataclass
class Context:
    profile: Profile
    cpus: Cpus
    daemon_logs: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def running_lobbyd(ctx: Context, name: str) -> Iterator[Server]:
    """Run one lobbyd with a fresh data directory; summarize its log when it stops."""
    data_dir = tempfile.mkdtemp(prefix="lobbyd-bench-")
    port = free_port()
    argv = [str(LOBBYD), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir]
    server = start_server(name, argv, ctx.cpus.server, port, DAEMON_ENV)
    try:
        yield server
    finally:
        exit_code = stop_server(server)
        ctx.daemon_logs[name] = {"exit_code": exit_code, **summarize_log(server.log_path)}
        shutil.rmtree(data_dir, ignore_errors=True)


def start_baseline(ctx: Context, name: str) -> Server:
    port = free_port()
    argv = [str(PYTHON), str(BASELINES[name]), "--listen", f"127.0.0.1:{port}"]
    return start_server(name, argv, ctx.cpus.server, port)


# 1. Wire: ping/pong through lobbyd and both baselines.


def wire(ctx: Context) -> dict[str, Any]:
    """Measure every (connections, depth) pair on all three servers, interleaved.

    The three servers run side by side and each configuration is measured on each
    server in turn, so background load hits all three alike. Of the rounds, the one
    with the least server CPU per ping is kept for each server.
    """
    profile = ctx.profile
    rows: list[dict[str, Any]] = []
    with running_lobbyd(ctx, "wire-lobbyd") as lobbyd, contextlib.ExitStack() as stack:
        servers = [lobbyd]
        for name in BASELINES:
            baseline = start_baseline(ctx, name)
            stack.callback(stop_server, baseline)
            servers.append(baseline)

        for conns, depth in itertools.product(profile.wire_conns, profile.wire_depths):
            results: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
            for _ in range(profile.wire_rounds):
                for server in servers:
                    results[server.name].append(measure_wire(ctx, server, conns, depth))
            for rounds in results.values():
                best = min(rounds, key=cpu_per_ping)
                rows.append({**best, "cpu_us_per_ping_all_rounds": [r["server_cpu_us_per_ping"] for r in rounds]})
    return {"rows": rows}


def measure_wire(ctx: Context, server: Server, conns: int, depth: int) -> dict[str, Any]:
    args = [
        "--port", str(server.port), "--server-pid", str(server.pid),
        "--conns", str(conns), "--depth", str(depth),
        "--warmup", str(ctx.profile.wire_warmup_s), "--seconds", str(ctx.profile.wire_seconds),
    ]
    if server.name.endswith("lobbyd"):
        args.append("--hello")
    result = run_generator("bench.load_wire", args, ctx.cpus.load, GENERATOR_TIMEOUT_S)
    result["server"] = server.name.removeprefix("wire-")
    return result


def cpu_per_ping(result: dict[str, Any]) -> float:
    value = result.get("server_cpu_us_per_ping")
    return float("inf") if value is None else float(value)


# 2. Sessions: daemon memory per idle session.


def sessions(ctx: Context) -> dict[str, Any]:
    with running_lobbyd(ctx, "sessions-lobbyd") as server:
        counts = list(ctx.profile.session_counts)
        if ctx.profile.add_max_sessions:
            counts.append(largest_session_count(server.pid))
        args = ["--port", str(server.port), "--server-pid", str(server.pid), "--counts", ",".join(map(str, counts))]
        return run_generator("bench.load_sessions", args, ctx.cpus.load, GENERATOR_TIMEOUT_S)


def largest_session_count(pid: int) -> int:
    """Return the most sessions both the daemon and the generator can hold, in hundreds.

    Each process has its own open-file limit; the generator inherits the same hard
    limit as the daemon and needs one descriptor per session too. The daemon also
    keeps ``HEADROOM_SHARE`` of its descriptors free and answers server_full past that.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    usable = int(hard * (1 - HEADROOM_SHARE))
    return (usable - procfs.open_files(pid) - FD_MARGIN) // 100 * 100


# 3. Connection storm.


def storm(ctx: Context) -> dict[str, Any]:
    """Run the storm with every client at once, then with each bound in ``storm_in_flight``.

    Each run gets a fresh daemon, so no player is already known from an earlier run.
    """
    runs = []
    for in_flight in (0, *ctx.profile.storm_in_flight):
        with running_lobbyd(ctx, f"storm-lobbyd-{in_flight or 'all'}") as server:
            args = [
                "--port", str(server.port), "--server-pid", str(server.pid),
                "--clients", str(ctx.profile.storm_clients), "--in-flight", str(in_flight),
            ]
            runs.append(run_generator("bench.load_storm", args, ctx.cpus.load, GENERATOR_TIMEOUT_S))
    return {"runs": runs}


# 4. Matchmaker core, in process.


def matchmaker(ctx: Context) -> dict[str, Any]:
    """Time the pure core on the server CPU, where the daemon would run it."""
    args = [
        "--sizes", ",".join(map(str, ctx.profile.matchmaker_sizes)),
        "--repeats", str(ctx.profile.matchmaker_repeats),
    ]
    return run_generator("bench.matchmaker", args, ctx.cpus.server, GENERATOR_TIMEOUT_S)


# 5. Lifecycle with the event-loop lag probe.


def lifecycle(ctx: Context) -> dict[str, Any]:
    """Run the lifecycle once per join window in the profile, each with a fresh daemon."""
    return {"runs": [lifecycle_run(ctx, join_s) for join_s in ctx.profile.lifecycle_join_s]}


def lifecycle_run(ctx: Context, join_s: float) -> dict[str, Any]:
    with running_lobbyd(ctx, f"lifecycle-lobbyd-{join_s:g}s") as server:
        priority = probe_priority()
        probe = start_background("bench.lag_probe", ["--port", str(server.port)], ctx.cpus.load, priority)
        try:
            args = [
                "--port", str(server.port), "--server-pid", str(server.pid),
                "--players", str(ctx.profile.lifecycle_players), "--join-seconds", str(join_s),
            ]
            result = run_generator("bench.load_lifecycle", args, ctx.cpus.load, GENERATOR_TIMEOUT_S)
        finally:
            lag = stop_background(probe)
    return {**result, "loop_lag": split_lag(lag, result["stages"]), "probe_priority": " ".join(priority)}


def probe_priority() -> tuple[str, ...]:
    """Return the ``chrt`` prefix if this user may use real-time scheduling, else nothing."""
    try:
        allowed = subprocess.run([*REALTIME, "true"], capture_output=True, check=False).returncode == 0
    except OSError:
        allowed = False
    return REALTIME if allowed else ()


def split_lag(lag: dict[str, Any], stages: dict[str, list[float]]) -> dict[str, Any]:
    """Add the slowest probe round trip of each lifecycle stage; drop the raw samples."""
    samples = lag.pop("samples")
    lag["stage_max_ms"] = {
        stage: max((rtt for sent, rtt in samples if start <= sent < end), default=0.0) * 1000
        for stage, (start, end) in stages.items()
    }
    return lag


# 6. Fan-out approximated by simultaneous pings.


def fanout(ctx: Context) -> dict[str, Any]:
    with running_lobbyd(ctx, "fanout-lobbyd") as server:
        args = [
            "--port", str(server.port), "--sessions", str(ctx.profile.fanout_sessions),
            "--rounds", str(ctx.profile.fanout_rounds),
        ]
        return run_generator("bench.load_fanout", args, ctx.cpus.load, GENERATOR_TIMEOUT_S)


# 7. Cluster: several nodes on Redis and PostgreSQL.


def cluster(ctx: Context) -> dict[str, Any]:
    """Run the cluster generator against one embedded daemon, then clusters of each size.

    The embedded daemon is the baseline for the request round trips. Every cluster
    gets fresh nodes, a Redis key prefix and a PostgreSQL schema of its own, removed
    afterwards. All nodes share the server CPU, like every server in this suite.
    """
    args = ["--players", str(ctx.profile.cluster_players), "--probes", str(ctx.profile.cluster_probes)]
    with running_lobbyd(ctx, "cluster-embedded") as server:
        ports = ["--ports", str(server.port)]
        embedded = run_generator("bench.load_cluster", [*ports, *args], ctx.cpus.load, GENERATOR_TIMEOUT_S)
    runs = []
    for count in ctx.profile.cluster_nodes:
        with cluster_services() as services, running_cluster(ctx, count, services) as (nodes, leader_port):
            ports = ["--ports", ",".join(str(node.port) for node in nodes)]
            result = run_generator("bench.load_cluster", [*ports, *args], ctx.cpus.load, GENERATOR_TIMEOUT_S)
            runs.append({**result, "leader_port": leader_port})
    return {"embedded": embedded, "runs": runs}


@contextlib.contextmanager
def cluster_services() -> Iterator[dict[str, str]]:
    """Name the Redis and PostgreSQL of one run: a fresh key prefix and schema, dropped afterwards."""
    suffix = uuid.uuid4().hex[:12]
    services = {
        "redis_url": os.environ.get("LOBBYD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "pg_dsn": os.environ.get("LOBBYD_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        "prefix": f"lobbyd-bench-{suffix}",
        "schema": f"lobbyd_bench_{suffix}",
    }
    try:
        yield services
    finally:
        drop_cluster_state(services)


def drop_cluster_state(services: dict[str, str]) -> None:
    import asyncpg
    import redis

    client = redis.Redis.from_url(services["redis_url"])
    try:
        keys = list(client.scan_iter(match=f"{services['prefix']}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as exc:
        print(f"[bench] could not delete the cluster's Redis keys: {exc}", file=sys.stderr)
    finally:
        client.close()

    async def drop_schema() -> None:
        connection = await asyncpg.connect(services["pg_dsn"])
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{services["schema"]}" CASCADE')
        finally:
            await connection.close()

    try:
        asyncio.run(drop_schema())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"[bench] could not drop the cluster's schema: {exc}", file=sys.stderr)


@contextlib.contextmanager
def running_cluster(ctx: Context, count: int, services: dict[str, str]) -> Iterator[tuple[list[Server], int | None]]:
    """Run ``count`` lobbyd nodes of one cluster; yield them and the port of the leader."""
    import redis

    nodes: list[Server] = []
    env = {
        **DAEMON_ENV,
        "LOBBYD_STORE": "postgres",
        "LOBBYD_POSTGRES_DSN": services["pg_dsn"],
        "LOBBYD_POSTGRES_SCHEMA": services["schema"],
        "LOBBYD_CLUSTER": "redis",
        "LOBBYD_REDIS_URL": services["redis_url"],
        "LOBBYD_REDIS_PREFIX": services["prefix"],
    }
    # Each node gets its own data directory: the admin socket lives there, and two
    # daemons refuse to share one.
    data_dirs: list[str] = []
    try:
        for index in range(count):
            port = free_port()
            data_dirs.append(tempfile.mkdtemp(prefix="lobbyd-bench-"))
            argv = [str(LOBBYD), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dirs[-1]]
            name = f"cluster-{count}-n{index}"
            nodes.append(start_server(name, argv, ctx.cpus.server, port, {**env, "LOBBYD_NODE_ID": f"n{index}"}))
        client = redis.Redis.from_url(services["redis_url"])
        try:
            leader = wait_for_leader(client, services["prefix"])
        finally:
            client.close()
        yield nodes, nodes[int(leader.removeprefix("n"))].port
    finally:
        for node in nodes:
            exit_code = stop_server(node)
            ctx.daemon_logs[node.name] = {"exit_code": exit_code, **summarize_log(node.log_path)}
        for data_dir in data_dirs:
            shutil.rmtree(data_dir, ignore_errors=True)


def wait_for_leader(client: Any, prefix: str) -> str:
    """Return the id of the node that holds the lease, once one does."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        value = client.get(f"{prefix}:leader")
        if value is not None:
            return str(value.decode().rpartition(":")[0])
        time.sleep(0.05)
    msg = "no cluster node took the leader lease within 20 s"
    raise BenchError(msg)


PHASES = {
    "wire": wire,
    "sessions": sessions,
    "storm": storm,
    "matchmaker": matchmaker,
    "lifecycle": lifecycle,
    "fanout": fanout,
    "cluster": cluster,
}
