"""Configuration reload: new rules apply to connected players, bad files change nothing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lobbyd import config as config_module
from lobbyd.client import LobbyClient
from lobbyd.server import logs as log_setup
from lobbyd.server.app import Server
from lobbyd.server.reload import ConfigSource
from tests.daemon import running_daemon
from tests.test_notify import NotifyListener

QUEUES_4 = """
[queues.duo]
team_count = 2
team_size = 2
"""

QUEUES_2 = """
[queues.duo]
team_count = 2
team_size = 1
"""


class Reloadable:
    """An in-process server whose configuration file the test rewrites."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "lobbyd.toml"
        self.overrides = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"), "tick_interval_ms": 20}
        self.server: Server | None = None
        self.clients: list[LobbyClient] = []

    def write(self, text: str) -> None:
        self.path.write_text(text)

    async def start(self, text: str) -> Server:
        self.write(text)
        config = config_module.load(self.path, environ={}, overrides=self.overrides)
        self.server = Server(config, source=ConfigSource(self.path, self.overrides))
        await self.server.start()
        self.task = asyncio.create_task(self.server.serve())
        return self.server

    async def connect(self, player: str) -> LobbyClient:
        assert self.server is not None
        host, port = self.server.address or ("", 0)
        client = await LobbyClient.connect(f"{host}:{port}")
        self.clients.append(client)
        await client.hello(player)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        if self.server is not None:
            self.server.request_stop()
            await asyncio.wait_for(self.task, 10)


@pytest.fixture
async def reloadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Reloadable]:
    # A reload reads LOBBYD_* variables as a start does; the test decides them all.
    for key in [key for key in os.environ if key.startswith("LOBBYD_")]:
        monkeypatch.delenv(key)
    handle = Reloadable(tmp_path)
    yield handle
    await handle.stop()
    # A reload sets the process-wide log level; the suite runs at WARNING.
    log_setup.configure("warning", "json")


async def join(client: LobbyClient, queue: str) -> None:
    await client.request("join_queue", queue=queue)
    await client.recv_type("queued")


async def test_reload_applies_queue_rule(reloadable: Reloadable) -> None:
    server = await reloadable.start(QUEUES_4)
    first = await reloadable.connect("r1")
    await join(first, "duo")

    reloadable.write(QUEUES_2)
    outcome = await server.reloader.reload()
    second = await reloadable.connect("r2")
    await join(second, "duo")

    assert outcome.result == "applied"
    assert "queues" in outcome.changed
    assert (await first.recv_type("match_found"))["players"] == 2
    assert (await second.recv_type("match_found"))["players"] == 2


async def test_reload_rejects_invalid_file(reloadable: Reloadable) -> None:
    server = await reloadable.start(QUEUES_4)
    client = await reloadable.connect("r1")
    await join(client, "duo")

    reloadable.write('tick_interval_ms = 0\nmax_connections = "many"\n' + QUEUES_2)
    outcome = await server.reloader.reload()
    rid = await client.request("ping")

    assert outcome.result == "rejected"
    assert len(outcome.problems) == 2
    assert outcome.problems[0].endswith("lobbyd.toml:tick_interval_ms: expected `int` >= 10, got 0")
    assert (await client.recv_type("pong"))["rid"] == rid
    assert server.lobby.rules["duo"].team_size == 2
    assert server.config.tick_interval_ms == 20
    assert "r1" in server.lobby.queues["duo"]
    assert server.metrics.reloads["rejected"] == 1


async def test_reload_keeps_restart_settings(reloadable: Reloadable) -> None:
    server = await reloadable.start(QUEUES_4)
    reloadable.overrides["listen"] = "127.0.0.1:1"
    reloadable.write('store = "memory"\nmax_connections = 7\n' + QUEUES_4)

    outcome = await server.reloader.reload()

    assert outcome.needs_restart == ("listen", "store")
    assert outcome.changed == ("max_connections",)
    assert server.config.listen == "127.0.0.1:0"
    assert server.config.store == "sqlite"
    assert server.config.max_connections == 7


async def test_reload_removing_queue_tells_player(reloadable: Reloadable) -> None:
    server = await reloadable.start(QUEUES_4 + "\n[queues.solo]\nteam_size = 1\n")
    client = await reloadable.connect("r1")
    await join(client, "duo")

    reloadable.write("[queues.solo]\nteam_size = 1\n")
    await server.reloader.reload()
    left = await client.recv_type("left_queue")
    await client.request("join_queue", queue="duo")
    error = await client.recv_type("error")

    assert left == {"type": "left_queue", "queue": "duo", "reason": "queue_removed"}
    assert error["code"] == "unknown_queue"


async def test_reload_keeps_running_ready_check(reloadable: Reloadable) -> None:
    server = await reloadable.start(QUEUES_2)
    a, b = await reloadable.connect("r1"), await reloadable.connect("r2")
    await join(a, "duo")
    await join(b, "duo")
    match = (await a.recv_type("match_found"))["match"]
    await b.recv_type("match_found")

    reloadable.write("ready_check_timeout_ms = 20000\n" + QUEUES_2)
    outcome = await server.reloader.reload()
    for client in (a, b):
        await client.request("accept", match=match)

    assert outcome.result == "applied"
    assert (await a.recv_type("match_start"))["match"] == match
    assert (await b.recv_type("match_start"))["match"] == match
    assert server.lobby.settings.ready_timeout == 20.0


async def test_reload_changes_bound_log_level(reloadable: Reloadable) -> None:
    output = io.StringIO()
    log_setup.configure("info", "json", stream=output)
    server = await reloadable.start(QUEUES_2)
    early = await reloadable.connect("r1")
    reloadable.write('log_level = "warning"\n' + QUEUES_2)

    await server.reloader.reload()
    await early.close()
    await asyncio.sleep(0.1)
    events = [json.loads(line)["event"] for line in output.getvalue().splitlines()]

    # The session's logger was bound at INFO, before the reload.
    assert "session_opened" in events
    assert "config_reload_started" in events
    assert "session_closed" not in events
    assert "config_reloaded" not in events


# The real process and its signal.


@pytest.fixture
def notify_listener() -> Iterator[NotifyListener]:
    # A Unix socket path has at most 107 bytes, so it lives in a short temporary directory.
    directory = tempfile.mkdtemp(prefix="lobbyd-")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(os.path.join(directory, "notify"))
        yield NotifyListener(sock, os.path.join(directory, "notify"))
    shutil.rmtree(directory)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sighup_reloads_while_client_queued(tmp_path: Path, notify_listener: NotifyListener) -> None:
    config = tmp_path / "lobbyd.toml"
    config.write_text(QUEUES_4)
    env = {"LOBBYD_TICK_INTERVAL_MS": "50", "NOTIFY_SOCKET": notify_listener.address}

    with running_daemon(tmp_path / "data", "--config", str(config), env=env) as daemon:
        notify_listener.wait_for(lambda message: "READY" in message)

        async def scenario() -> dict[str, Any]:
            first = await LobbyClient.connect(daemon.address)
            await first.hello("waiter")
            await join(first, "duo")

            config.write_text(QUEUES_2)
            daemon.process.send_signal(signal.SIGHUP)
            reloading = await asyncio.to_thread(notify_listener.wait_for, lambda message: "RELOADING" in message)
            await asyncio.to_thread(notify_listener.wait_for, lambda message: "READY" in message)
            await asyncio.to_thread(daemon.wait_for_event, "config_reloaded")

            second = await LobbyClient.connect(daemon.address)
            await second.hello("joiner")
            await join(second, "duo")
            found = [await client.recv_type("match_found") for client in (first, second)]

            config.write_text("tick_interval_ms = [")
            daemon.process.send_signal(signal.SIGHUP)
            rejected = await asyncio.to_thread(daemon.wait_for_event, "config_reload_rejected")
            rid = await first.request("ping")
            pong = await first.recv_type("pong")
            third = await LobbyClient.connect(daemon.address)
            welcome = await third.hello("late")
            for client in (first, second, third):
                await client.close()
            return {
                "reloading": reloading,
                "found": found,
                "rejected": rejected,
                "pong": pong,
                "rid": rid,
                "welcome": welcome,
            }

        result = asyncio.run(scenario())

    assert result["reloading"]["RELOADING"] == "1"
    assert int(result["reloading"]["MONOTONIC_USEC"]) > 0
    assert {found["match"] for found in result["found"]} == {result["found"][0]["match"]}
    assert all(found["players"] == 2 for found in result["found"])
    assert "invalid TOML" in result["rejected"]["problems"][0]
    assert result["pong"]["rid"] == result["rid"]
    assert result["welcome"]["type"] == "welcome"
    assert daemon.exit_code == 0, daemon.output()
