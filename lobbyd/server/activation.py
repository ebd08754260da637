"""Take over listening sockets that systemd opened for the daemon (socket activation).

With a ``.socket`` unit, systemd binds and listens itself and passes the sockets to
the service as file descriptors 3, 4, ... with ``$LISTEN_FDS`` saying how many and
``$LISTEN_PID`` naming the process they are meant for, as sd_listen_fds(3)
describes. Because systemd keeps the socket open while the service restarts, clients
that connect in between wait in the kernel's accept backlog instead of being
refused, and the next process accepts them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from typing import Final

from lobbyd.errors import StartupError

# The first passed descriptor, SD_LISTEN_FDS_START in sd-daemon.h.
LISTEN_FDS_START: Final = 3
ACTIVATION_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(StartupError):
    """The passed descriptors cannot be served: not a listening TCP socket, or a bad count."""


def inherited_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Return the listening sockets passed to this process, or an empty list.

    The variables are removed from ``environ`` (``os.environ`` by default), as
    sd_listen_fds(1) does, so that a child process never takes them for its own.
    Raises ``ActivationError`` when a passed descriptor is not a listening stream socket.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    for name in ACTIVATION_VARIABLES:
        env.pop(name, None)
    if pid != str(os.getpid()):
        return []
    if not count.isdigit():
        msg = f"LISTEN_FDS is {count!r}: expected the number of passed sockets"
        raise ActivationError(msg)
    return [_adopt(fd) for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))]


def _adopt(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        msg = f"passed file descriptor {fd} is not a socket: {exc.strerror}"
        raise ActivationError(msg) from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        msg = f"passed file descriptor {fd} is not a TCP socket: use ListenStream= in the .socket unit"
        raise ActivationError(msg)
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        msg = f"passed socket {fd} is not listening: set Accept=no in the .socket unit"
        raise ActivationError(msg)
    # systemd passes the descriptors inheritable; no child of the daemon should hold them.
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    """Return ``HOST:PORT`` of a listening socket, with brackets around an IPv6 host."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
