"""Load generator: a connection storm of clients that connect and send hello at once.

Run as a separate process from the daemon. Every client starts in the same loop
iteration: it connects, sends hello and waits for welcome. With ``--in-flight W``,
at most W clients are between their connect call and their welcome at any time,
which keeps the burst within the daemon's listen queue. The result is sessions per
second (clients welcomed divided by the time from the first connect call to the
last welcome) and each client's time from its connect call to its welcome. Prints
one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import uvloop

from bench import procfs
from bench.client import Greeter, open_connection, raise_open_file_limit, source_address, summarize_ms

BLOCK = 3  # source addresses 127.3.x.y
WELCOME_TIMEOUT_S = 60.0


async def one_client(port: int, index: int, opened: list[Greeter]) -> tuple[float, float]:
    """Connect, say hello and return (connect call time, welcome time)."""
    started = time.perf_counter()
    connection = await open_connection(Greeter, port, source_address(BLOCK, index))
    opened.append(connection)
    connection.hello(f"storm-{index}")
    return started, await connection.welcomed


async def measure(args: argparse.Namespace) -> dict[str, object]:
    raise_open_file_limit()
    overflows = procfs.listen_overflows()
    server_cpu, load_cpu = procfs.cpu_seconds(args.server_pid), procfs.cpu_seconds(os.getpid())

    # Start every client at once and wait for all of them, failures included.
    opened: list[Greeter] = []
    limit = asyncio.Semaphore(args.in_flight or args.clients)

    async def limited_client(index: int) -> tuple[float, float]:
        async with limit:
            return await one_client(args.port, index, opened)

    tasks = [asyncio.ensure_future(limited_client(i)) for i in range(args.clients)]
    done, pending = await asyncio.wait(tasks, timeout=WELCOME_TIMEOUT_S)
    for task in pending:
        task.cancel()
    results = [task.result() for task in done if not task.exception()]
    errors = sorted({repr(task.exception()) for task in done if task.exception()})

    server_cpu = procfs.cpu_seconds(args.server_pid) - server_cpu
    load_cpu = procfs.cpu_seconds(os.getpid()) - load_cpu
    overflows = procfs.listen_overflows() - overflows
    for connection in opened:
        connection.close()

    first = min((started for started, _ in results), default=0.0)
    last = max((welcomed for _, welcomed in results), default=0.0)
    elapsed = last - first
    return {
        "clients": args.clients,
        "in_flight": args.in_flight,
        "welcomed": len(results),
        "failed": len(done) - len(results),
        "timed_out": len(pending),
        "errors": errors[:5],
        "seconds": elapsed,
        "sessions_per_s": len(results) / elapsed if elapsed > 0 else None,
        "welcome": summarize_ms([welcomed - started for started, welcomed in results]),
        "listen_overflows": overflows,
        "server_cpu_s": server_cpu,
        "load_cpu_s": load_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="daemon port on 127.0.0.1")
    parser.add_argument("--server-pid", type=int, required=True, help="daemon process whose CPU time is read")
    parser.add_argument("--clients", type=int, required=True, help="clients in the storm")
    parser.add_argument("--in-flight", type=int, default=0, help="most clients awaiting welcome at once (0: all)")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args))))


if __name__ == "__main__":
    main()
