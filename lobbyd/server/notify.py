"""Tell systemd how the daemon is doing, over the sd_notify datagram protocol.

systemd passes the address of a Unix datagram socket in ``$NOTIFY_SOCKET``. Each
notification is one datagram of newline-separated ``KEY=VALUE`` assignments, as
sd_notify(3) describes. An address that starts with ``@`` names a socket in the
abstract namespace, where the ``@`` stands for a leading NUL byte. Without
``$NOTIFY_SOCKET`` every call does nothing, so the daemon behaves the same outside
systemd.

The daemon sends ``READY=1`` once it listens and its store is open, and ``STATUS=``
with what it serves. ``WATCHDOG=1`` comes from a task on the event loop, so a stuck
loop stops the pings and systemd restarts the service. ``RELOADING=1`` with
``MONOTONIC_USEC=`` starts a configuration reload, and ``STOPPING=1`` a stop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

from lobbyd.server import logs

# How often STATUS= is refreshed when the watchdog requests no more frequent pings.
STATUS_INTERVAL_S: Final = 2.0

log = logs.get(__name__)


class Notifier:
    """Send notifications to the service manager, or nothing when there is none."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None
        self._failures = 0
        if self.address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A full socket buffer must never block the event loop: such a
            # notification is dropped, and the next one follows within seconds.
            self._socket.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; return False if it was not sent."""
        if self._socket is None or self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            self._report_failure(exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        # Type=notify-reload services must send the time of the reload request
        # along with RELOADING=1, as CLOCK_MONOTONIC microseconds.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _report_failure(self, exc: OSError) -> None:
        # Log the first failure and then every hundredth, because a ping that fails
        # once a second would otherwise flood the journal.
        if self._failures % 100 == 0:
            log.warning("notify_failed", address=self.address, error=str(exc), failures=self._failures + 1)
        self._failures += 1


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return the seconds between watchdog pings that systemd requests, or None.

    systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, when set, must be this
    process). Pings go out at half that timeout, as sd_watchdog_enabled(3) advises.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def keep_alive(notifier: Notifier, watchdog_s: float | None, status: Callable[[], str]) -> None:
    """Ping the watchdog and refresh STATUS= until cancelled.

    This runs as a task on the event loop, so the pings stop when the loop is stuck.
    STATUS= is sent only when its text changed.
    """
    period = min(watchdog_s, STATUS_INTERVAL_S) if watchdog_s else STATUS_INTERVAL_S
    last_status = ""
    while True:
        await asyncio.sleep(period)
        text = status()
        assignments = ["WATCHDOG=1"] if watchdog_s else []
        if text != last_status:
            assignments.append(f"STATUS={text}")
            last_status = text
        if assignments:
            notifier.send(*assignments)
