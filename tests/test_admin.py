"""The admin socket and ``lobbyd admin`` against a running daemon."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lobbyd.admin_cli import AdminUnavailable, render, send
from lobbyd.client import LobbyClient
from lobbyd.errors import StartupError
from lobbyd.server.admin import _bind_private
from tests.conftest import ClientFactory, RunningServer, ServerFactory
from tests.daemon import DaemonProcess, free_port, running_daemon

pytestmark = pytest.mark.timeout(90)


def admin(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lobbyd", "admin", "--socket", str(socket_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def admin_json(socket_path: Path, *args: str) -> Any:
    done = admin(socket_path, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    data = tmp_path_factory.mktemp("admin") / "data"
    with running_daemon(data, env={"LOBBYD_TICK_INTERVAL_MS": "50"}) as process:
        process.wait_for_event("admin_listening")
        yield process
    assert process.exit_code == 0, process.output()


@pytest.fixture(scope="module")
def socket_path(daemon: DaemonProcess) -> Path:
    return Path(daemon.wait_for_event("admin_listening")["path"])


class Player:
    """A connected client on its own event loop, driven step by step from a sync test."""

    def __init__(self, address: str, player: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(LobbyClient.connect(address))
        self.loop.run_until_complete(self.client.hello(player))

    def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        async def exchange() -> dict[str, Any]:
            await self.client.request(type_, **fields)
            return await self.client.recv()

        return self.loop.run_until_complete(exchange())

    def recv(self) -> dict[str, Any]:
        return self.loop.run_until_complete(self.client.recv())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def player(daemon: DaemonProcess, request: pytest.FixtureRequest) -> Iterator[Player]:
    handle = Player(daemon.address, request.node.name[:40].replace("[", "_").replace("]", ""))
    yield handle
    handle.close()


@pytest.mark.slow
def test_socket_is_private(socket_path: Path) -> None:
    mode = socket_path.stat().st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.slow
def test_status_reports_sessions(socket_path: Path, player: Player) -> None:
    status = admin_json(socket_path, "status")
    table = admin(socket_path, "status")

    assert status["sessions"] >= 1
    assert status["sessions_by_framing"]["binary"] >= 1
    assert status["pid"] > 0
    assert status["draining"] is False
    assert status["log_level"] == "info"
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["SETTING", "VALUE"]
    assert any(line.split()[:1] == ["sessions"] for line in table.stdout.splitlines())


@pytest.mark.slow
def test_queues_lists_sizes(socket_path: Path, player: Player) -> None:
    assert player.request("join_queue", queue="5v5")["type"] == "queued"

    rows = {row["queue"]: row for row in admin_json(socket_path, "queues")}
    table = admin(socket_path, "queues").stdout.splitlines()

    assert rows["5v5"]["players"] == 1
    assert rows["5v5"]["team_size"] == 5
    assert rows["5v5"]["oldest_wait_s"] >= 0
    assert rows["1v1"]["players"] == 0
    assert table[0].split() == ["QUEUE", "TEAMS", "SIZE", "PLAYERS", "OLDEST", "WAIT", "READY", "CHECKS"]
    assert table[2].split()[:4] == ["5v5", "2", "5", "1"]


@pytest.mark.slow
def test_player_shows_place(socket_path: Path, player: Player, request: pytest.FixtureRequest) -> None:
    player_id = request.node.name[:40]
    player.request("join_queue", queue="5v5")

    shown = admin_json(socket_path, "player", player_id)
    table = admin(socket_path, "player", player_id)

    assert shown["online"] is True
    assert shown["place"] == "queued"
    assert shown["queue"] == "5v5"
    assert shown["peer"].startswith("127.0.0.1:")
    assert shown["framing"] == "binary"
    assert ["player", player_id] in [line.split() for line in table.stdout.splitlines()]


@pytest.mark.slow
def test_player_unknown_fails(socket_path: Path) -> None:
    done = admin(socket_path, "player", "never-seen")

    assert done.returncode == 1
    assert done.stderr == "lobbyd admin: player 'never-seen' not found: never seen by this server\n"


@pytest.mark.slow
def test_kick_disconnects_player(socket_path: Path, player: Player, request: pytest.FixtureRequest) -> None:
    player_id = request.node.name[:40]

    done = admin(socket_path, "kick", player_id)
    kicked = player.recv()
    time.sleep(0.2)
    shown = admin_json(socket_path, "player", player_id)
    again = admin(socket_path, "kick", player_id)

    assert done.returncode == 0
    assert done.stdout.startswith(f"kicked player {player_id} (session ")
    assert kicked == {"type": "kicked", "reason": "admin"}
    assert shown["online"] is False
    assert again.returncode == 1
    assert again.stderr == f"lobbyd admin: player {player_id!r} is not connected\n"


@pytest.mark.slow
def test_drain_rejects_join_until_resume(socket_path: Path, player: Player) -> None:
    drained = admin(socket_path, "drain")
    rejected = player.request("join_queue", queue="1v1")
    status = admin_json(socket_path, "status")
    resumed = admin(socket_path, "resume")
    accepted = player.request("join_queue", queue="1v1")

    assert drained.stdout == "draining: join_queue is rejected\n"
    assert rejected["type"] == "error"
    assert rejected["code"] == "shutting_down"
    assert "draining" in rejected["message"]
    assert status["draining"] is True
    assert resumed.stdout == "not draining: join_queue is accepted\n"
    assert accepted["type"] == "queued"


@pytest.mark.slow
def test_log_level_applies(socket_path: Path, daemon: DaemonProcess) -> None:
    changed = admin(socket_path, "log-level", "debug")
    # A login marks the player's record dirty, and its flush logs at DEBUG.
    newcomer = Player(daemon.address, "debug-logged")
    try:
        flushed = daemon.wait_for_event("flush_done", timeout=5)
    finally:
        newcomer.close()
        restored = admin_json(socket_path, "log-level", "info")

    assert changed.stdout == "log level: debug\n"
    assert flushed["level"] == "debug"
    assert restored == {"log_level": "info"}
    assert admin_json(socket_path, "status")["log_level"] == "info"


@pytest.mark.slow
def test_second_daemon_on_same_socket_exits(socket_path: Path) -> None:
    command = [sys.executable, "-m", "lobbyd", "serve", "--listen", f"127.0.0.1:{free_port()}"]
    command += ["--data-dir", str(socket_path.parent)]

    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    assert done.returncode == 1
    assert done.stderr == (
        f"lobbyd: admin socket {socket_path} is in use by another lobbyd: "
        "stop it, or give this one its own data_dir\n"
    )
    assert stat.S_ISSOCK(socket_path.stat().st_mode)


@pytest.mark.slow
def test_admin_without_daemon_fails(tmp_path: Path) -> None:
    missing = tmp_path / "admin.sock"

    done = admin(missing, "status")

    assert done.returncode == 1
    assert done.stderr.startswith(f"lobbyd admin: no admin socket at {missing}: is lobbyd running?")


# The socket's protocol and set-up, in process.


@pytest.fixture
async def running(start_server: ServerFactory) -> RunningServer:
    return await start_server()


async def request_raw(server: RunningServer, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(server.server.admin.path))
    writer.write(line)
    reply = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    decoded: dict[str, Any] = json.loads(reply)
    return decoded


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "invalid request: send one JSON object per line"),
        (b'{"command": "reboot"}\n', "invalid request: Invalid value 'reboot' - at `$.command`"),
        (b'{"command": "player"}\n', "invalid request: Object missing required field `player`"),
        (b'{"command": "log_level", "level": "loud"}\n', "invalid request: Invalid enum value 'loud'"),
    ],
    ids=["not_json", "unknown_command", "missing_field", "bad_level"],
)
async def test_admin_rejects_bad_request(running: RunningServer, line: bytes, error: str) -> None:
    reply = await request_raw(running, line)

    assert reply["ok"] is False
    assert reply["error"].startswith(error)


async def test_admin_answers_several_lines(running: RunningServer, connect: ClientFactory) -> None:
    await connect("several")
    reader, writer = await asyncio.open_unix_connection(str(running.server.admin.path))
    writer.write(b'{"command": "status"}\n{"command": "player", "player": "several"}\n')
    first = json.loads(await reader.readline())
    second = json.loads(await reader.readline())
    writer.close()
    await writer.wait_closed()

    assert first["result"]["sessions"] == 1
    assert second["result"]["place"] == "idle"


async def test_admin_socket_removed_on_stop(running: RunningServer) -> None:
    path = running.server.admin.path
    assert path.exists()

    await running.stop()

    assert not path.exists()


def test_bind_replaces_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))

    sock, inode = _bind_private(path)
    sock.close()

    assert path.stat().st_ino == inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_bind_rejects_live_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()

        with pytest.raises(StartupError, match="is in use by another lobbyd"):
            _bind_private(path)


def test_bind_rejects_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    path.write_text("keep me")

    with pytest.raises(StartupError, match="exists and is not a socket"):
        _bind_private(path)

    assert path.read_text() == "keep me"


def test_bind_rejects_long_path(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 120) / "admin.sock"

    with pytest.raises(StartupError, match="is longer than 107 bytes"):
        _bind_private(path)


def test_send_reports_refused_socket(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as closed:
        closed.bind(str(path))

    with pytest.raises(AdminUnavailable, match="cannot talk to"):
        send(path, {"command": "status"})


def test_render_queue_table() -> None:
    rows = [{"queue": "1v1", "team_count": 2, "team_size": 1, "players": 3, "oldest_wait_s": 4.5, "ready_checks": 0}]

    text = render("queues", rows)

    assert text.splitlines() == [
        "QUEUE  TEAMS  SIZE  PLAYERS  OLDEST WAIT  READY CHECKS",
        "1v1    2      1     3        4.5 s        0",
    ]


def test_render_status_flattens() -> None:
    text = render("status", {"sessions": 2, "sessions_by_framing": {"json": 2}, "draining": False, "metrics": None})

    assert text.splitlines() == [
        "SETTING                   VALUE",
        "sessions                  2",
        "sessions_by_framing.json  2",
        "draining                  no",
        "metrics                   -",
    ]


def test_render_player_times_in_utc() -> None:
    text = render("player", {"player": "p1", "first_seen": 1_735_689_600.75, "last_seen": None, "rating": 1500})

    assert text.splitlines() == [
        "FIELD       VALUE",
        "player      p1",
        "first_seen  2025-01-01T00:00:00Z",
        "last_seen   -",
        "rating      1500",
    ]


def test_socket_mode_survives_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        sock, _ = _bind_private(tmp_path / "admin.sock")
        sock.close()
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "admin.sock").stat().st_mode) == 0o600
