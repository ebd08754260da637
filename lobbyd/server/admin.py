"""The admin socket: a Unix socket on which ``lobbyd admin`` queries and steers the daemon.

Access control is the file mode: the socket is created with mode 0600 in the data
directory, so only the daemon's own user (and root) can connect. It is bound under
a temporary name, restricted, and only then renamed into place, so no other user
can connect in between.

The protocol is JSON lines: one request object per line, such as
``{"command": "player", "player": "alice"}``, answered by one line
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. Each request runs
on the event loop like any other state change, so it reads and changes the lobby
atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from lobbyd.config import Config
from lobbyd.errors import StartupError
from lobbyd.server import logs
from lobbyd.server.admin_commands import AdminCommand, AdminError, execute

if TYPE_CHECKING:
    from lobbyd.server.app import Server

SOCKET_NAME: Final = "admin.sock"

# A request is one short JSON object; 64 KiB leaves room and bounds a bad client.
MAX_REQUEST_BYTES: Final = 65_536
# An operator's connection that sends nothing for this long is closed.
IDLE_TIMEOUT_S: Final = 60.0
# sun_path of struct sockaddr_un has room for 108 bytes on Linux, the last one for the NUL.
MAX_SOCKET_PATH_BYTES: Final = 107

_decoder = msgspec.json.Decoder(AdminCommand)
_encoder = msgspec.json.Encoder()

log = logs.get(__name__)


def socket_path(config: Config) -> Path:
    """Return where the admin socket of a daemon running ``config`` is."""
    return Path(config.admin_socket) if config.admin_socket else Path(config.data_dir) / SOCKET_NAME


class AdminServer:
    """The listening admin socket of one daemon, from ``open`` to ``close``."""

    def __init__(self, server: Server, path: Path) -> None:
        self.server = server
        self.path = path
        self._listener: asyncio.Server | None = None
        self._inode: int | None = None

    async def open(self) -> None:
        """Create the socket with mode 0600 and listen; raises ``StartupError`` if it cannot."""
        # File system calls stay off the event loop, which already serves clients.
        sock, self._inode = await asyncio.to_thread(_bind_private, self.path)
        self._listener = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST_BYTES)
        log.info("admin_listening", path=str(self.path))

    def close(self) -> None:
        """Stop listening and remove the socket file, unless another process replaced it."""
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    line = await reader.readline()
                if not line:
                    return
                writer.write(_encoder.encode(await self._answer(line)) + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            # ValueError: a line longer than MAX_REQUEST_BYTES; the connection just ends.
            return
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            command = _decoder.decode(line)
        except msgspec.ValidationError as exc:
            return {"ok": False, "error": f"invalid request: {exc}"}
        except msgspec.DecodeError:
            return {"ok": False, "error": "invalid request: send one JSON object per line"}
        try:
            result = await execute(self.server, command)
        except AdminError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:
            log.exception("admin_command_failed", command=type(command).__name__)
            return {"ok": False, "error": "the command failed inside the daemon; see its log"}
        return {"ok": True, "result": result}


def _bind_private(path: Path) -> tuple[socket.socket, int]:
    """Bind a listening Unix socket at ``path`` that only this user can connect to.

    Returns the socket and the inode of its file, by which ``close`` recognizes it.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        msg = f"admin socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes: set a shorter admin_socket"
        raise StartupError(msg)
    _check_not_in_use(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        sock.listen()
        inode = path.stat().st_ino
    except OSError as exc:
        sock.close()
        msg = f"cannot create the admin socket {path}: {exc.strerror or exc}"
        raise StartupError(msg) from None
    return sock, inode


def _check_not_in_use(path: Path) -> None:
    """Raise ``StartupError`` if ``path`` is a live socket or not a socket at all.

    A socket file that refuses connections is left over from a daemon that did not
    stop cleanly, and is replaced.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        msg = f"admin socket path {path} exists and is not a socket: remove it or set admin_socket"
        raise StartupError(msg)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return
    msg = f"admin socket {path} is in use by another lobbyd: stop it, or give this one its own data_dir"
    raise StartupError(msg)
