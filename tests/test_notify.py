"""systemd notifications on a real datagram socket: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lobbyd.client import LobbyClient
from lobbyd.server.notify import Notifier, keep_alive, watchdog_interval
from tests.daemon import running_daemon

Message = dict[str, str]


class NotifyListener:
    """The service manager's end: a bound datagram socket that collects notifications."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.received: list[tuple[float, Message]] = []

    def receive(self, timeout: float) -> Message | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((time.monotonic(), message))
        return message

    def wait_for(self, matches: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        """Return the first notification from now on for which ``matches`` is true."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and matches(message):
                return message
        seen = [message for _, message in self.received]
        raise AssertionError(f"no matching notification within {timeout} s; received {seen}")

    def count(self, key: str) -> int:
        return sum(1 for _, message in self.received if key in message)


@pytest.fixture
def notify_path() -> Iterator[str]:
    # A Unix socket path has at most 107 bytes, so it lives in a short temporary directory.
    directory = tempfile.mkdtemp(prefix="lobbyd-")
    yield os.path.join(directory, "notify")
    shutil.rmtree(directory)


@pytest.fixture
def listener(notify_path: str) -> Iterator[NotifyListener]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notify_path)
        yield NotifyListener(sock, notify_path)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_daemon_notifies_ready_status_watchdog(tmp_path: Path, listener: NotifyListener) -> None:
    # WATCHDOG_USEC of 0.4 s requests a ping every 0.2 s.
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000", "LOBBYD_TICK_INTERVAL_MS": "50"}

    with running_daemon(tmp_path / "data", env=env) as daemon:
        ready = listener.wait_for(lambda message: "READY" in message)
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("sessions: ")
        assert "queued players: 0" in ready["STATUS"]

        async def queue_one() -> None:
            client = await LobbyClient.connect(daemon.address)
            await client.hello("notified")
            await client.request("join_queue", queue="5v5")
            await client.recv_type("queued")
            status = await asyncio.to_thread(
                listener.wait_for, lambda message: "queued players: 1" in message.get("STATUS", "")
            )
            assert "sessions: 1," in status["STATUS"]
            await client.close()

        asyncio.run(queue_one())
        pings_before = listener.count("WATCHDOG")
        time.sleep(1.0)
        while listener.receive(0.05) is not None:
            pass
        assert listener.count("WATCHDOG") - pings_before >= 3

    assert daemon.exit_code == 0, daemon.output()
    stopping = [message for _, message in listener.received if "STOPPING" in message]
    assert stopping or listener.wait_for(lambda message: "STOPPING" in message, timeout=2)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_daemon_notifies_abstract_socket(tmp_path: Path) -> None:
    name = f"lobbyd-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        listener = NotifyListener(sock, "@" + name)

        with running_daemon(tmp_path / "data", env={"NOTIFY_SOCKET": listener.address}) as daemon:
            ready = listener.wait_for(lambda message: "READY" in message)

        assert ready["READY"] == "1"
        assert daemon.exit_code == 0, daemon.output()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_daemon_without_watchdog_sends_no_pings(tmp_path: Path, listener: NotifyListener) -> None:
    with running_daemon(tmp_path / "data", env={"NOTIFY_SOCKET": listener.address}):
        listener.wait_for(lambda message: "READY" in message)
        time.sleep(0.5)
        while listener.receive(0.05) is not None:
            pass

    assert listener.count("WATCHDOG") == 0


def test_notifier_without_socket_sends_nothing() -> None:
    notifier = Notifier.from_environ({})

    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_notifier_reports_missing_socket(notify_path: str) -> None:
    # Nobody listens at the path: the send fails and says so instead of raising.
    notifier = Notifier(notify_path)

    assert notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.close()


def test_reloading_carries_monotonic_time(listener: NotifyListener) -> None:
    notifier = Notifier(listener.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    notifier.reloading()
    message = listener.wait_for(lambda message: "RELOADING" in message, timeout=2)

    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


async def test_watchdog_pings_stop_while_loop_blocked(listener: NotifyListener) -> None:
    # A thread receives, so that arrival times are taken while the loop is blocked.
    done = threading.Event()

    def receive_until_done() -> None:
        while not done.is_set():
            listener.receive(0.05)

    receiver = threading.Thread(target=receive_until_done)
    receiver.start()
    notifier = Notifier(listener.address)
    task = asyncio.create_task(keep_alive(notifier, 0.05, lambda: "status"))
    await asyncio.sleep(0.3)

    # Block the event loop the way a runaway synchronous call would.
    blocked_at = time.monotonic()
    time.sleep(0.6)  # noqa: ASYNC251
    unblocked_at = time.monotonic()
    await asyncio.sleep(0.3)
    task.cancel()
    notifier.close()
    done.set()
    receiver.join()

    pings = [at for at, message in listener.received if "WATCHDOG" in message]
    assert any(at < blocked_at for at in pings)
    assert any(at > unblocked_at for at in pings)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert max(gaps) >= 0.5
