"""Start, pin, watch and stop the processes of a benchmark run.

Every process runs under ``taskset -c CPU``: servers on one CPU, load generators on
another, so a server never competes with its own load for a core. The argument
lists and environment overrides are kept, so the report can print the exact
commands. Ports are picked free on 127.0.0.1 just before a server starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
LOG_DIR = ROOT / "bench" / "results" / "logs"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


class BenchError(Exception):
    """A benchmark step failed; the message names the step and the cause."""


@dataclass
class Cpus:
    server: int
    load: int


def pick_cpus() -> Cpus:
    """Return one CPU for servers and another for load; raise with fewer than two."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        msg = f"the suite needs two CPUs to keep servers and load apart, but only {available} are available"
        raise BenchError(msg)
    return Cpus(server=available[0], load=available[1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def render_command(argv: list[str], env: dict[str, str]) -> str:
    """Return the shell form of a command run from the repository root."""
    relative_argv = [os.path.relpath(arg, ROOT) if arg.startswith(str(ROOT)) else arg for arg in argv]
    assignments = [f"{key}={value}" for key, value in env.items()]
    return shlex.join(assignments + relative_argv)


@dataclass
class Commands:
    """Every command a run started, in order, in shell form."""

    lines: list[str] = field(default_factory=list)

    def add(self, argv: list[str], env: dict[str, str]) -> None:
        self.lines.append(render_command(argv, env))


COMMANDS = Commands()


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def start_server(name: str, argv: list[str], cpu: int, port: int, env: dict[str, str] | None = None) -> Server:
    """Start a server pinned to ``cpu`` and wait until its port accepts connections."""
    env = env or {}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    pinned = ["taskset", "-c", str(cpu), *argv]
    COMMANDS.add(pinned, env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            pinned, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(name, port, process, log_path)
    wait_until_listening(server)
    return server


def wait_until_listening(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            msg = f"{server.name} exited with code {server.process.returncode} before listening:\n{tail}"
            raise BenchError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
            return
        time.sleep(0.05)
    stop_server(server)
    msg = f"{server.name} did not listen on port {server.port} within {READY_TIMEOUT_S:g} s"
    raise BenchError(msg)


def stop_server(server: Server) -> int:
    """Stop the server with SIGTERM, or SIGKILL after ``STOP_TIMEOUT_S``; return its exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        return -signal.SIGKILL


def summarize_log(path: Path) -> dict[str, Any]:
    """Count a daemon log's JSON events by level and name; keep the first other lines."""
    events: Counter[str] = Counter()
    other: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            events[f"{record.get('level')}:{record.get('event')}"] += 1
        except (json.JSONDecodeError, AttributeError):
            if line.strip() and len(other) < 20:
                other.append(line)
    return {"events": dict(events), "other_lines": other, "path": os.path.relpath(path, ROOT)}


def run_generator(module: str, args: list[str], cpu: int, timeout: float) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` pinned to ``cpu``; return the JSON it prints last."""
    argv = ["taskset", "-c", str(cpu), str(PYTHON), "-m", module, *args]
    COMMANDS.add(argv, {})
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        msg = f"{module} did not finish within {timeout:g} s"
        raise BenchError(msg) from None
    if done.returncode != 0 or not done.stdout.strip():
        tail = done.stderr.decode(errors="replace")[-3000:]
        msg = f"{module} failed with exit code {done.returncode}:\n{tail}"
        raise BenchError(msg)
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


@dataclass
class Background:
    """A generator that runs beside another one until its standard input closes."""

    module: str
    process: subprocess.Popen[bytes]

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout


def start_background(module: str, args: list[str], cpu: int, prefix: tuple[str, ...] = ()) -> Background:
    """Start a generator and wait for its first output line, which signals that it is ready.

    ``prefix`` goes before ``taskset``, for example to run the generator under ``chrt``.
    """
    argv = [*prefix, "taskset", "-c", str(cpu), str(PYTHON), "-m", module, *args]
    COMMANDS.add(argv, {})
    process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    background = Background(module, process)
    readable, _, _ = select.select([background.stdout], [], [], READY_TIMEOUT_S)
    if not readable or not background.stdout.readline():
        process.kill()
        _, err = process.communicate()
        msg = f"{module} was not ready within {READY_TIMEOUT_S:g} s:\n{err.decode(errors='replace')[-3000:]}"
        raise BenchError(msg)
    return background


def stop_background(background: Background) -> dict[str, Any]:
    """Close the generator's standard input and return the JSON it prints."""
    try:
        out, err = background.process.communicate(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        background.process.kill()
        out, err = background.process.communicate()
    if background.process.returncode != 0 or not out.strip():
        msg = f"{background.module} failed with exit code {background.process.returncode}:\n{err.decode()[-3000:]}"
        raise BenchError(msg)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
