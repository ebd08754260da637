"""Run ``lobbyd serve`` as a subprocess, for tests that need the real process.

``running_daemon`` starts the daemon on a free loopback port, waits until the port
accepts connections and stops the daemon with SIGTERM on the way out, whatever the
test did. The daemon's stdout, its JSON log, goes to a file so that a chatty daemon
never blocks on a full pipe; ``log_events`` parses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Variables through which systemd talks to a service. A test that wants them sets
# them itself, so a suite that runs under systemd does not leak its own.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
ACTIVATE_SCRIPT = Path(__file__).resolve().parent / "socket_activate.py"


def free_port() -> int:
    """Return a loopback port that was free a moment ago.

    The port is closed again before the caller uses it, so another process could
    take it in between. Tests accept that small race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class DaemonProcess:
    """One ``lobbyd serve`` subprocess and the files that capture its output."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path, stderr_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.stderr_path = stderr_path
        self.exit_code: int | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log_events(self) -> list[dict[str, Any]]:
        """Parse the JSON log lines written so far. Lines that are not JSON are skipped."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    def output(self) -> str:
        """Return stdout and stderr so far, for assertion messages."""
        log = self.log_path.read_text(errors="replace")
        errors = self.stderr_path.read_text(errors="replace")
        return f"--- stdout ---\n{log[-4000:]}\n--- stderr ---\n{errors[-4000:]}"

    def wait_for_event(self, name: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Return the first log event called ``name``, waiting up to ``timeout`` s for it.

        Raises RuntimeError if the daemon exits first, and TimeoutError after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [event for event in self.log_events() if event.get("event") == name]
            if found:
                return found[0]
            if self.process.poll() is not None:
                status = self.process.returncode
                msg = f"lobbyd serve exited with status {status} before logging {name}\n{self.output()}"
                raise RuntimeError(msg)
            time.sleep(0.05)
        msg = f"lobbyd serve did not log {name} within {timeout} s\n{self.output()}"
        raise TimeoutError(msg)

    def wait_until_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the port accepts a connection.

        Raises RuntimeError if the daemon exits first, and TimeoutError after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"lobbyd serve exited with status {self.process.returncode} before listening\n{self.output()}"
                raise RuntimeError(msg)
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        msg = f"lobbyd serve did not listen on {self.address} within {timeout} s\n{self.output()}"
        raise TimeoutError(msg)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum`` and return the exit status.

        Kills the daemon and raises TimeoutError if it is still running after ``timeout`` s.
        """
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            msg = f"lobbyd serve ignored {signal.Signals(signum).name} for {timeout} s and was killed"
            raise TimeoutError(msg) from None
        return self.exit_code


@contextlib.contextmanager
def running_daemon(
    data_dir: Path,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    max_open_files: int | None = None,
) -> Iterator[DaemonProcess]:
    """Start ``lobbyd serve`` with its SQLite store in ``data_dir`` and stop it on exit.

    ``extra_args`` are appended to the command line, and ``env`` adds variables such
    as ``LOBBYD_TICK_INTERVAL_MS``. LOBBYD_* variables of the calling environment are
    not passed on, so the test alone decides the settings. ``max_open_files`` sets
    both the soft and the hard RLIMIT_NOFILE of the daemon. After the block,
    ``exit_code`` holds the status the daemon exited with after SIGTERM.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [sys.executable, "-m", "lobbyd", "serve", "--listen", f"{HOST}:{port}", "--data-dir", str(data_dir)]
    child_env = child_environment(env)
    log_path = data_dir / "stdout.log"
    stderr_path = data_dir / "stderr.log"

    def limit_open_files() -> None:
        assert max_open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    preexec = limit_open_files if max_open_files is not None else None
    with log_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, *extra_args], stdout=stdout, stderr=stderr, env=child_env, preexec_fn=preexec
        )
    daemon = DaemonProcess(process, port, log_path, stderr_path)
    try:
        daemon.wait_until_listening()
        yield daemon
    finally:
        daemon.stop()


def child_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """Return this process's environment less LOBBYD_* and systemd's variables, plus ``env``."""
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LOBBYD_") and key not in SYSTEMD_VARIABLES
    }
    child_env.update(env or {})
    return child_env


@contextlib.contextmanager
def activated_daemon(
    data_dir: Path,
    listener: socket.socket,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
) -> Iterator[DaemonProcess]:
    """Start ``lobbyd serve`` on ``listener`` as systemd's socket activation would, and stop it on exit.

    The listening socket becomes the daemon's file descriptor 3, with LISTEN_FDS=1 and
    LISTEN_PID naming the daemon's own process. The test keeps its copy of the
    socket, as systemd does, so the socket keeps listening between two daemons.
    The daemon counts as started when it logs ``server_started``, because the port
    accepts connections even while no daemon runs.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = listener.getsockname()[1]
    command = [sys.executable, str(ACTIVATE_SCRIPT), str(listener.fileno())]
    command += [sys.executable, "-m", "lobbyd", "serve", "--data-dir", str(data_dir), *extra_args]
    log_path = data_dir / f"stdout-{time.monotonic_ns()}.log"
    stderr_path = log_path.with_name(log_path.name.replace("stdout", "stderr"))

    with log_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, env=child_environment(env), pass_fds=(listener.fileno(),)
        )
    daemon = DaemonProcess(process, port, log_path, stderr_path)
    try:
        daemon.wait_for_event("server_started")
        yield daemon
    finally:
        daemon.stop()
