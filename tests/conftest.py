"""Shared fixtures: a real daemon on a loopback port and clients that talk to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from lobbyd import config as config_module
from lobbyd.client import LobbyClient
from lobbyd.server import logs
from lobbyd.server.app import Server

# Redis, PostgreSQL and cluster fixtures, shared by every test module that needs them.
pytest_plugins = ["tests.services", "tests.cluster"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The daemon runs on uvloop in production, so the tests do too.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    logs.configure("warning", "json")


def make_config(tmp_path: Path, **overrides: Any) -> config_module.Config:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "tick_interval_ms": 20,
        "flush_interval_ms": 50,
    }
    settings.update(overrides)
    return config_module.load(environ={}, overrides=settings)


class RunningServer:
    """A Server serving in a background task, stopped by the fixture."""

    def __init__(self, server: Server, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    @property
    def address(self) -> str:
        assert self.server.address is not None
        host, port = self.server.address
        return f"{host}:{port}"

    async def stop(self) -> None:
        self.server.request_stop()
        await asyncio.wait_for(self.task, 10)


ServerFactory = Callable[..., Awaitable[RunningServer]]


class Servers:
    """The servers a test started; the last one is where clients connect by default."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[RunningServer] = []

    async def start(self, **overrides: Any) -> RunningServer:
        server = Server(make_config(self.tmp_path, **overrides))
        await server.start()
        handle = RunningServer(server, asyncio.create_task(server.serve()))
        self.running.append(handle)
        return handle

    async def current(self) -> RunningServer:
        return self.running[-1] if self.running else await self.start()

    async def stop_all(self) -> None:
        for handle in self.running:
            if not handle.task.done():
                await handle.stop()


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    started = Servers(tmp_path)
    yield started
    await started.stop_all()


@pytest.fixture
def start_server(servers: Servers) -> ServerFactory:
    return servers.start


@pytest.fixture
async def server(servers: Servers) -> RunningServer:
    return await servers.current()


ClientFactory = Callable[..., Awaitable[LobbyClient]]


@pytest.fixture
async def connect(servers: Servers) -> AsyncIterator[ClientFactory]:
    """Open a client to ``target`` or the last server started; say hello when given a player."""
    clients: list[LobbyClient] = []

    async def open_client(
        player: str | None = None, *, json_lines: bool = False, target: RunningServer | None = None
    ) -> LobbyClient:
        destination = target or await servers.current()
        client = await LobbyClient.connect(destination.address, json_lines=json_lines)
        clients.append(client)
        if player is not None:
            await client.hello(player)
        return client

    yield open_client
    for client in clients:
        await client.close()


def frame(message: dict[str, Any]) -> bytes:
    payload = msgspec.msgpack.encode(message)
    return len(payload).to_bytes(4, "big") + payload
