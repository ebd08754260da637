"""``lobbyd client``: a line-oriented client for people and shell scripts.

It logs in, then runs three tasks side by side until one of them ends the run:

- the reader prints every server message as ``< {json}`` on stdout;
- the console turns each stdin line into a request, printed as ``> {json}``;
- the heartbeat pings when nothing was sent for ``heartbeat_ms / 2``, so a person
  reading the output is not disconnected. These pings and their pongs are not printed.

stdout carries only the ``<`` and ``>`` lines, so it can be piped into other tools.
Hints, help and the reason for exiting go to stderr.

Exit codes:

- 0: a message of the ``--until`` type arrived, ``quit`` was typed, or stdin ended
  without ``--until``;
- 1: the connection failed or was closed by the server, or ``--timeout`` passed;
- 2: invalid ``--connect``;
- 3: the server sent ``kicked``, whose reason goes to stderr;
- 130: Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import uvloop

from lobbyd.client import ClientError, LobbyClient
from lobbyd.errors import ConfigError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_KICKED: Final = 3
EXIT_INTERRUPTED: Final = 130

# After stdin ends, the client waits for the replies to its requests and then for
# QUIET_AFTER_EOF seconds without a message, so that it also prints what a reply set off.
# MAX_WAIT_AFTER_EOF caps the wait, so that scripts never hang on a busy connection.
QUIET_AFTER_EOF: Final = 0.3
MAX_WAIT_AFTER_EOF: Final = 2.0

# Maximum bytes read from stdin per call. A line may span several reads.
STDIN_CHUNK: Final = 65_536

HELP: Final = """\
commands, one per line:
  join QUEUE       join_queue
  leave [QUEUE]    leave_queue
  accept [MATCH]   accept; MATCH defaults to the last match_found
  decline [MATCH]  decline; MATCH defaults to the last match_found
  ping             ping
  profile          get_profile: rating, games and wins
  history          get_history: the last 10 matches
  {"type": ...}    send this JSON object as it is
  help             show this list
  quit             exit with status 0"""

_ENCODE_JSON = msgspec.json.Encoder()
_DECODE_JSON = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Command:
    """A console command that sends one message with at most one string field."""

    type: str
    field: str | None
    required: bool
    usage: str


COMMANDS: Final = {
    "join": Command("join_queue", "queue", required=True, usage="join QUEUE"),
    "leave": Command("leave_queue", "queue", required=False, usage="leave [QUEUE]"),
    "accept": Command("accept", "match", required=True, usage="accept [MATCH]"),
    "decline": Command("decline", "match", required=True, usage="decline [MATCH]"),
    "ping": Command("ping", None, required=False, usage="ping"),
    "profile": Command("get_profile", None, required=False, usage="profile"),
    "history": Command("get_history", None, required=False, usage="history"),
}


class CommandError(Exception):
    """Invalid stdin line. The exception message is the hint shown to the user."""


class ClientExit(Exception):
    """Raised by any task to end the run with ``code``."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(reason or f"exit {code}")
        self.code = code
        self.reason = reason


def run_cli(args: argparse.Namespace) -> int:
    """Run ``lobbyd client`` with parsed arguments and return the exit code."""
    player = args.player or f"player-{secrets.token_hex(2)}"
    try:
        return uvloop.run(_run(args, player))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _run(args: argparse.Namespace, player: str) -> int:
    timeout = args.timeout if args.timeout > 0 else None
    try:
        async with asyncio.timeout(timeout):
            return await _connect_and_serve(args, player)
    except TimeoutError:
        waiting = f" waiting for {args.until}" if args.until else ""
        _fail(f"timed out after {args.timeout:g} s{waiting}")
        return EXIT_FAILED
    except ClientExit as stop:
        if stop.reason:
            _fail(stop.reason)
        return stop.code


async def _connect_and_serve(args: argparse.Namespace, player: str) -> int:
    client = await _open(args.connect, json_lines=args.json_lines)
    try:
        console = Console(client, until=args.until, auto_accept=args.auto_accept)
        await console.log_in(player, args.name)
        return await console.serve()
    finally:
        await client.close()


async def _open(address: str, *, json_lines: bool) -> LobbyClient:
    """Connect, or raise ``ClientExit`` with a one-line reason."""
    try:
        return await LobbyClient.connect(address, json_lines=json_lines)
    except ConfigError as exc:
        detail = str(exc).removeprefix("listen: ")
        raise ClientExit(EXIT_USAGE, f"invalid --connect: {detail}") from None
    except TimeoutError:
        raise ClientExit(EXIT_FAILED, f"cannot connect to {address}: timed out") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ClientExit(EXIT_FAILED, f"cannot connect to {address}: {reason}") from None


class Console:
    """One logged-in connection, driven by stdin and printed to stdout."""

    def __init__(self, client: LobbyClient, *, until: str | None, auto_accept: bool) -> None:
        self.client = client
        self.until = until
        self.auto_accept = auto_accept
        self.heartbeat = 0.0
        self.last_match: str | None = None
        self._rids = iter(range(1, 2**63))
        self._last_sent = time.monotonic()
        self._last_received = time.monotonic()
        # rids of requests still waiting for their reply, and of the automatic pings,
        # whose pongs are not printed.
        self._awaiting: set[int] = set()
        self._silent: set[int] = set()

    async def log_in(self, player: str, name: str | None) -> None:
        """Send hello and print the reply. Raise ``ClientExit`` unless the reply is welcome."""
        hello: dict[str, Any] = {"type": "hello", "v": 1, "player": player}
        if name:
            hello["name"] = name
        await self.send(hello)
        reply = await self._receive()
        _print_line("<", reply)
        await self._react(reply)
        if reply.get("type") != "welcome":
            detail = reply.get("message") or reply.get("reason") or reply.get("type")
            raise ClientExit(EXIT_FAILED, f"login failed: {detail}")
        self.heartbeat = int(reply["heartbeat_ms"]) / 1000

    async def serve(self) -> int:
        """Run reader, console and heartbeat until one of them raises ``ClientExit``."""
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        _start_stdin_thread(asyncio.get_running_loop(), lines.put_nowait)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read_messages())
                group.create_task(self._read_commands(lines))
                group.create_task(self._keep_alive())
        except* ClientExit as stops:
            stop = stops.exceptions[0]
            assert isinstance(stop, ClientExit)
            raise stop from None
        return EXIT_OK

    # Sending.

    async def send(self, message: dict[str, Any], *, silent: bool = False) -> None:
        rid = message.get("rid")
        if isinstance(rid, int):
            (self._silent if silent else self._awaiting).add(rid)
        if not silent:
            _print_line(">", message)
        self._last_sent = time.monotonic()
        try:
            await self.client.send(message)
        except ConnectionError as exc:
            raise ClientExit(EXIT_FAILED, f"connection lost: {exc}") from None

    async def request(self, type_: str, **fields: Any) -> None:
        await self.send({"type": type_, **fields, "rid": next(self._rids)})

    # Server messages.

    async def _read_messages(self) -> None:
        while True:
            message = await self._receive()
            rid = message.get("rid")
            if rid in self._silent:
                self._silent.discard(rid)
                continue
            self._awaiting.discard(rid)
            _print_line("<", message)
            await self._react(message)

    async def _receive(self) -> dict[str, Any]:
        try:
            message = await self.client.recv(timeout=None)
        except ClientError as exc:
            raise ClientExit(EXIT_FAILED, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ClientExit(EXIT_FAILED, f"invalid message from the server: {exc}") from None
        self._last_received = time.monotonic()
        return message

    async def _react(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == self.until:
            raise ClientExit(EXIT_OK)
        if kind == "kicked":
            raise ClientExit(EXIT_KICKED, f"kicked by the server: {message.get('reason')}")
        if kind == "match_found":
            self.last_match = message.get("match")
            if self.auto_accept:
                await self.request("accept", match=self.last_match)

    # Commands.

    async def _read_commands(self, lines: asyncio.Queue[bytes | None]) -> None:
        while (line := await lines.get()) is not None:
            try:
                message = self.parse(line.decode("utf-8", errors="replace").strip())
            except CommandError as exc:
                _hint(str(exc))
                continue
            if message is not None:
                await self.send(message)
        if self.until is None:
            await self._wait_for_replies()
            raise ClientExit(EXIT_OK)

    def parse(self, line: str) -> dict[str, Any] | None:
        """Turn one stdin line into the message to send, or ``None`` for nothing to send.

        Raises ``CommandError`` with a hint for a line it cannot use, and ``ClientExit``
        for ``quit``.
        """
        if not line:
            return None
        if line.startswith("{"):
            return _parse_raw(line)
        command, *words = line.split()
        if command == "help":
            print(HELP, file=sys.stderr, flush=True)
            return None
        if command == "quit":
            raise ClientExit(EXIT_OK)
        if command not in COMMANDS:
            msg = f"unknown command {command!r}, type help for the list of commands"
            raise CommandError(msg)
        return self._build(COMMANDS[command], words)

    def _build(self, command: Command, words: list[str]) -> dict[str, Any]:
        if command.field == "match" and not words:
            if self.last_match is None:
                msg = f"{command.type}: no match_found has arrived yet, so give a match id"
                raise CommandError(msg)
            words = [self.last_match]
        allowed = 0 if command.field is None else 1
        needed = 1 if command.required else 0
        if not needed <= len(words) <= allowed:
            msg = f"usage: {command.usage}"
            raise CommandError(msg)

        message: dict[str, Any] = {"type": command.type}
        if words and command.field is not None:
            message[command.field] = words[0]
        message["rid"] = next(self._rids)
        return message

    async def _wait_for_replies(self) -> None:
        """Wait until every reply has arrived and the server went quiet, up to a cap."""
        deadline = time.monotonic() + MAX_WAIT_AFTER_EOF
        while time.monotonic() < deadline:
            quiet_for = time.monotonic() - self._last_received
            if not self._awaiting and quiet_for >= QUIET_AFTER_EOF:
                return
            await asyncio.sleep(0.05)

    # Heartbeat.

    async def _keep_alive(self) -> None:
        interval = self.heartbeat / 2
        while True:
            idle_for = time.monotonic() - self._last_sent
            if idle_for >= interval:
                await self.send({"type": "ping", "rid": next(self._rids)}, silent=True)
                idle_for = 0.0
            await asyncio.sleep(interval - idle_for)


def _parse_raw(line: str) -> dict[str, Any]:
    try:
        return _DECODE_JSON.decode(line)
    except msgspec.DecodeError as exc:
        msg = f"invalid JSON object: {exc}"
        raise CommandError(msg) from None


def _start_stdin_thread(
    loop: asyncio.AbstractEventLoop, put: Callable[[bytes | None], None]
) -> None:
    """Feed stdin lines, then ``None`` at end of input, to ``put`` on ``loop``.

    A daemon thread works for a TTY, a pipe and a regular file alike, which
    ``connect_read_pipe`` does not. It reads the file descriptor with ``os.read``
    rather than through ``sys.stdin``, so a read still blocked at exit holds no lock
    that interpreter shutdown would wait for.
    """

    def deliver(item: bytes | None) -> bool:
        try:
            loop.call_soon_threadsafe(put, item)
        except RuntimeError:
            return False  # The loop has closed: the client is exiting.
        return True

    def read_lines() -> None:
        pending = b""
        try:
            while chunk := os.read(sys.stdin.fileno(), STDIN_CHUNK):
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    if not deliver(line):
                        return
        except (OSError, ValueError) as exc:
            # A closed or unreadable stdin counts as end of input.
            _hint(f"cannot read stdin: {exc}")
        if pending:
            deliver(pending)
        deliver(None)

    threading.Thread(target=read_lines, name="stdin", daemon=True).start()


def _print_line(direction: str, message: dict[str, Any]) -> None:
    # The type goes first so that `grep '< {"type":"match_start"'` finds a message.
    if "type" in message:
        message = {"type": message["type"], **message}
    line = f"{direction} {_ENCODE_JSON.encode(message).decode()}\n"
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(line)
        sys.stdout.flush()


def _hint(text: str) -> None:
    print(f"lobbyd client: {text}", file=sys.stderr, flush=True)


def _fail(reason: str) -> None:
    print(f"lobbyd client: {reason}", file=sys.stderr, flush=True)
