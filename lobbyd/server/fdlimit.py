"""The file-descriptor budget: how many connections the process can hold, and what happens past it.

Each client connection costs one file descriptor. When the process runs out
(EMFILE), uvloop's accept raises nothing. libuv (``uv__server_io`` in
``src/unix/stream.c``) closes a descriptor it keeps in reserve, accepts every
pending connection and closes each at once, then reopens the reserve. The
clients see the connection close without a reply and no Python code runs. So
the server keeps its own account:

* at start it raises the soft ``RLIMIT_NOFILE`` towards the hard limit, as far
  as ``max_connections`` needs;
* it takes at most ``capacity`` sessions, which leaves ``headroom`` descriptors
  free, so that clients past it get ``server_full`` with a retry hint instead
  of a silent close;
* it probes for a free descriptor when it refuses a connection and once a
  second, and logs ``fd_exhausted`` once when none is left and
  ``fd_exhausted_ended`` when one is free again.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import time
from typing import Final

from lobbyd.server import logs

# Share of the descriptor limit kept free beyond the sessions: refusals in flight
# hold one each for up to a second, SQLite may open a journal or temporary file,
# and libuv keeps one in reserve for its EMFILE fallback.
HEADROOM_SHARE: Final = 0.05
MIN_HEADROOM: Final = 8

# Seconds between two probes of the watch loop.
WATCH_INTERVAL: Final = 1.0

log = logs.get(__name__)


class FdBudget:
    """The descriptor limit of this process and the connections it leaves room for.

    Until ``measure`` runs, ``max_connections`` is the configured value unchanged.
    """

    def __init__(self, max_connections: int) -> None:
        self.requested = max_connections
        self.max_connections = max_connections
        self.limit = 0
        self.baseline = 0
        self.headroom = 0
        self.exhausted_since: float | None = None
        self.exhausted_checks = 0

    def measure(self) -> None:
        """Raise the soft limit as far as needed and size ``max_connections`` to fit under it.

        Call it after the store is open and the listener is bound, so that the
        descriptors those hold count as in use. Logs ``fd_limit_low`` when the limit
        leaves room for fewer connections than were configured.
        """
        self.baseline = count_open_fds()
        self.limit = raise_soft_limit(self.baseline + self.requested + _headroom_for(self.requested))
        self.headroom = _headroom_for(self.limit)
        capacity = max(self.limit - self.baseline - self.headroom, 1)
        self.max_connections = min(self.requested, capacity)
        if capacity < self.requested:
            log.warning(
                "fd_limit_low",
                limit=self.limit,
                open_fds=self.baseline,
                max_connections=self.requested,
                capacity=capacity,
                detail="raise the hard RLIMIT_NOFILE (LimitNOFILE= under systemd) to serve max_connections",
            )

    def check(self) -> bool:
        """Probe for a free descriptor; log when the process runs out and when it recovers.

        Returns True while no descriptor is free.
        """
        if not _no_fd_free():
            if self.exhausted_since is not None:
                seconds = round(time.monotonic() - self.exhausted_since, 3)
                log.info("fd_exhausted_ended", seconds=seconds, checks=self.exhausted_checks)
                self.exhausted_since = None
            return False
        self.exhausted_checks += 1
        if self.exhausted_since is None:
            self.exhausted_since = time.monotonic()
            self.exhausted_checks = 1
            log.warning(
                "fd_exhausted",
                limit=self.limit,
                detail="no file descriptor is free: new connections are closed without a reply until one is",
            )
        return True

    async def watch(self) -> None:
        """Probe every ``WATCH_INTERVAL`` seconds until cancelled."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self.check()


def _headroom_for(limit: int) -> int:
    return max(round(limit * HEADROOM_SHARE), MIN_HEADROOM)


def _no_fd_free() -> bool:
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return True
        raise
    os.close(fd)
    return False


def count_open_fds() -> int:
    """Return how many descriptors this process has open, or 0 where the OS does not list them."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            # The listing includes the descriptor that reads it.
            return len(os.listdir(listing)) - 1
        except OSError:
            continue
    return 0


def raise_soft_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``needed``, capped at the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("fd_limit_raised", previous=soft, limit=target, hard_limit=hard)
        return target
    # An unlimited soft limit is still capped by the kernel (fs.nr_open), far above ``needed``.
    return soft if soft != resource.RLIM_INFINITY else needed
