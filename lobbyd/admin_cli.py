"""``lobbyd admin``: query and steer a running daemon over its admin socket.

Each call sends one JSON request line and prints the reply as a table for people,
or as JSON with ``--json`` for scripts. The exit status is 0 on success, 1 when
the daemon rejects the command or cannot be reached, and 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import sys
from pathlib import Path
from typing import Any, Final

from lobbyd import config as config_module
from lobbyd.errors import ConfigError

# Every command replies at once; a daemon that stays silent this long is stuck.
REPLY_TIMEOUT_S: Final = 10.0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class AdminUnavailable(Exception):
    """The daemon could not be reached, or its reply could not be read."""


def add_arguments(admin: argparse.ArgumentParser) -> None:
    admin.add_argument("--socket", type=Path, help="admin socket path (default: from the configuration)")
    admin.add_argument("--config", type=Path, help="TOML configuration file of the daemon, to find its socket")
    admin.add_argument("--json", action="store_true", help="print the reply as JSON instead of a table")
    commands = admin.add_subparsers(dest="admin_command", required=True, parser_class=type(admin))
    commands.add_parser("status", help="what the daemon serves: sessions, queues, matches, reload, log level")
    commands.add_parser("queues", help="every queue with its players and oldest wait")
    player = commands.add_parser("player", help="one player: connection, place, queue or match")
    player.add_argument("player", help="player id")
    kick = commands.add_parser("kick", help="disconnect a player with kicked {reason admin}")
    kick.add_argument("player", help="player id")
    commands.add_parser("drain", help="reject new join_queue requests; running queues and matches go on")
    commands.add_parser("resume", help="accept join_queue requests again after drain")
    level = commands.add_parser("log-level", help="change the log level until the next reload or restart")
    level.add_argument("level", choices=["debug", "info", "warning", "error"])


def run_cli(args: argparse.Namespace) -> int:
    try:
        path = args.socket or _socket_from_config(args.config)
    except ConfigError as exc:
        # The same SOURCE:KEY: message lines as check-config.
        print(exc, file=sys.stderr)
        print("lobbyd admin: invalid configuration", file=sys.stderr)
        return EXIT_USAGE
    request = _request(args)
    try:
        reply = send(path, request)
    except AdminUnavailable as exc:
        print(f"lobbyd admin: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not reply.get("ok"):
        print(f"lobbyd admin: {reply.get('error', 'the daemon rejected the command')}", file=sys.stderr)
        return EXIT_FAILED
    result = reply.get("result")
    print(json.dumps(result, indent=2) if args.json else render(args.admin_command, result))
    return 0


def send(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the admin socket at ``path`` and return the daemon's reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REPLY_TIMEOUT_S)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = _read_line(sock)
        except FileNotFoundError:
            msg = f"no admin socket at {path}: is lobbyd running? Name the socket with --socket or --config"
            raise AdminUnavailable(msg) from None
        except PermissionError:
            msg = f"permission denied on {path}: run as the daemon's user or root"
            raise AdminUnavailable(msg) from None
        except TimeoutError:
            msg = f"no answer from {path} within {REPLY_TIMEOUT_S:g} s"
            raise AdminUnavailable(msg) from None
        except OSError as exc:
            msg = f"cannot talk to {path}: {exc.strerror or exc}"
            raise AdminUnavailable(msg) from None
    try:
        decoded: dict[str, Any] = json.loads(reply)
    except json.JSONDecodeError:
        msg = f"the daemon at {path} sent a reply that is not JSON"
        raise AdminUnavailable(msg) from None
    return decoded


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65_536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


def _socket_from_config(path: Path | None) -> Path:
    from lobbyd.server.admin import socket_path

    return socket_path(config_module.load(path))


def _request(args: argparse.Namespace) -> dict[str, Any]:
    command = args.admin_command
    if command in ("player", "kick"):
        return {"command": command, "player": args.player}
    if command == "log-level":
        return {"command": "log_level", "level": args.level}
    return {"command": command}


# Tables.


def render(command: str, result: Any) -> str:
    """Return ``result`` of ``command`` as text for a terminal."""
    if command == "queues":
        header = ["QUEUE", "TEAMS", "SIZE", "PLAYERS", "OLDEST WAIT", "READY CHECKS"]
        rows = []
        for row in result:
            wait = _seconds(row["oldest_wait_s"])
            rows.append([row["queue"], row["team_count"], row["team_size"], row["players"], wait, row["ready_checks"]])
        return _table(header, rows)
    if command == "status":
        return _table(["SETTING", "VALUE"], _pairs(result))
    if command == "player":
        shown = dict(result)
        for key in _TIME_FIELDS & shown.keys():
            if shown[key] is not None:
                shown[key] = _utc(shown[key])
        return _table(["FIELD", "VALUE"], _pairs(shown))
    if command == "kick":
        return f"kicked player {result['player']} (session {result['session']})"
    if command in ("drain", "resume"):
        return "draining: join_queue is rejected" if result["draining"] else "not draining: join_queue is accepted"
    return f"log level: {result['log_level']}"


# Fields of admin player that contain Unix times in seconds. The JSON reply keeps them as numbers.
_TIME_FIELDS: Final = frozenset({"first_seen", "last_seen"})


def _utc(unix_time: float) -> str:
    """Return a Unix time as ISO 8601 in UTC, to the second, such as 2025-01-31T12:00:00Z."""
    return datetime.datetime.fromtimestamp(unix_time, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pairs(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += [[f"{key}.{inner}", inner_value] for inner, inner_value in value.items()]
        else:
            rows.append([key, value])
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_text(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_text(item) for item in value) or "-"
    return str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"
