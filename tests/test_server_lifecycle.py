"""Log events, periodic cleanup and graceful stop of an in-process daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lobbyd.client import ClientError
from lobbyd.server import logs as log_setup
from lobbyd.server import matchmaker as matchmaker_module
from lobbyd.server.app import DATABASE_FILE
from lobbyd.store.sqlite import SqliteStore
from tests.conftest import ClientFactory, ServerFactory


@pytest.fixture
def info_logs() -> Iterator[list[dict[str, Any]]]:
    # The suite logs at WARNING; these tests need the INFO lifecycle events.
    log_setup.configure("info", "json")
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        log_setup.configure("warning", "json")


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def play_1v1(connect: ClientFactory, first: str, second: str) -> str:
    a, b = await connect(first), await connect(second)
    for client in (a, b):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await a.recv_type("match_found"))["match"]
    await b.recv_type("match_found")
    for client in (a, b):
        await client.request("accept", match=match)
    for client in (a, b):
        await client.recv_type("match_start")
    await a.close()
    await b.close()
    return str(match)


async def test_lifecycle_events_logged(
    start_server: ServerFactory, connect: ClientFactory, info_logs: list[dict[str, Any]]
) -> None:
    logs = info_logs
    server = await start_server()
    match = await play_1v1(connect, "log1", "log2")
    await asyncio.sleep(0.2)
    await server.stop()

    assert events(logs, "server_started")
    joined = events(logs, "queue_joined")
    assert {entry["player"] for entry in joined} == {"log1", "log2"}
    assert events(logs, "match_found")[0]["match"] == match
    started = events(logs, "match_started")
    assert started[0]["match"] == match
    assert started[0]["teams"] in ([["log1"], ["log2"]], [["log2"], ["log1"]])
    closed = events(logs, "session_closed")
    assert {entry["player"] for entry in closed} == {"log1", "log2"}
    assert all(entry["reason"] == "peer_closed" for entry in closed)
    assert all(isinstance(entry["duration_ms"], int) for entry in closed)
    assert events(logs, "server_stopped")
    assert not [entry for entry in logs if entry["log_level"] == "error"]


async def test_mass_disconnect_releases_all(
    start_server: ServerFactory,
    connect: ClientFactory,
    info_logs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A zero-length output slice releases one closed session per loop iteration, so
    # the burst below is spread over many iterations.
    monkeypatch.setattr(matchmaker_module, "BURST_SLICE_S", 0.0)
    server = await start_server()
    clients = [await connect(f"mass{index}") for index in range(40)]
    for client in clients[:20]:
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")

    await asyncio.gather(*(client.close() for client in clients))
    assert await server.server.registry.wait_empty(10)
    # Every release queued a disconnect for the matchmaker; apply those still waiting.
    server.server.matchmaker.drain_requests()

    assert not server.server.lobby.sessions
    assert not any(server.server.lobby.queues.values())
    closed = events(info_logs, "session_closed")
    assert sorted(entry["player"] for entry in closed) == sorted(f"mass{index}" for index in range(40))
    assert all(entry["reason"] == "peer_closed" for entry in closed)


async def test_cleanup_forgets_idle_records(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(player_idle_ttl_ms=1)
    lobby = server.server.lobby
    lobby.settings = type(lobby.settings)(ready_timeout=10, heartbeat_ms=10_000, finished_ttl=0.0)
    for round_ in range(3):
        await play_1v1(connect, f"c{round_}a", f"c{round_}b")
    await asyncio.sleep(0.1)
    assert len(lobby.players) == 6
    assert len(lobby.finished) == 3

    server.server.cleanup()
    assert lobby.players == {}
    assert lobby.finished == {}
    assert lobby.sessions == {}
    assert all(queue == {} for queue in lobby.queues.values())
    assert await server.server.store.load_player("c0a") is not None


async def test_returning_player_keeps_record(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(player_idle_ttl_ms=1)
    first = await connect("returner")
    await first.close()
    await asyncio.sleep(0.1)
    server.server.cleanup()
    assert "returner" not in server.server.lobby.players

    stored = await server.server.store.load_player("returner")
    assert stored is not None
    again = await connect("returner")
    assert server.server.lobby.players["returner"].first_seen == stored.first_seen
    del again


async def test_stop_kicks_every_client(start_server: ServerFactory, connect: ClientFactory, tmp_path: Path) -> None:
    server = await start_server()
    clients = [await connect(f"k{i}", json_lines=i % 2 == 1) for i in range(4)]
    await clients[0].request("join_queue", queue="5v5")
    await clients[0].recv_type("queued")

    stopping = asyncio.create_task(server.stop())
    for client in clients:
        kicked = await client.recv()
        assert kicked["type"] == "kicked"
        assert kicked["reason"] == "shutdown"
        assert 0 <= kicked["retry_after_ms"] <= server.server.config.shutdown_retry_window_ms
        try:
            extra = await client.recv(timeout=3)
        except ClientError:
            extra = None
        assert extra is None
    await stopping

    store = SqliteStore(tmp_path / "data" / DATABASE_FILE)
    await store.open()
    stored = await store.load_player("k0")
    await store.close()
    assert stored is not None
