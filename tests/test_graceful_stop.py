"""Graceful stop on SIGTERM: ready checks finish, clients get spread retry hints, exit 0 in time."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lobbyd.client import ClientError, LobbyClient
from tests.conftest import ClientFactory, ServerFactory
from tests.daemon import running_daemon

pytestmark = pytest.mark.timeout(60)

RETRY_WINDOW_MS = 10_000


async def queue_pair(address: str, first: str, second: str) -> tuple[LobbyClient, LobbyClient, str]:
    """Log in two players, queue them for 1v1 and return them once both saw match_found."""
    a = await LobbyClient.connect(address)
    b = await LobbyClient.connect(address)
    for client, player in ((a, first), (b, second)):
        await client.hello(player)
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await a.recv_type("match_found"))["match"]
    await b.recv_type("match_found")
    return a, b, str(match)


async def read_until_closed(client: LobbyClient) -> list[dict[str, Any]]:
    messages = []
    while True:
        try:
            messages.append(await client.recv(timeout=20))
        except (ClientError, ConnectionError):
            return messages


@pytest.mark.slow
def test_sigterm_finishes_ready_check_and_kicks(tmp_path: Path) -> None:
    env = {"LOBBYD_TICK_INTERVAL_MS": "50", "LOBBYD_SHUTDOWN_RETRY_WINDOW_MS": str(RETRY_WINDOW_MS)}

    with running_daemon(tmp_path / "data", env=env) as daemon:

        async def scenario() -> tuple[list[list[dict[str, Any]]], dict[str, Any], float]:
            a, b, match = await queue_pair(daemon.address, "ann", "ben")
            await a.request("accept", match=match)
            await a.recv_type("accepted")
            idle = [await LobbyClient.connect(daemon.address) for _ in range(6)]
            for index, client in enumerate(idle):
                await client.hello(f"idle{index}")

            signalled = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # The stop is under way: no new queue entries, but the running check goes on.
            await idle[0].request("join_queue", queue="5v5")
            rejected = await idle[0].recv_type("error")
            await b.request("accept", match=match)

            everyone = [a, b, *idle]
            seen = await asyncio.gather(*(read_until_closed(client) for client in everyone))
            exit_code = await asyncio.to_thread(daemon.process.wait, 20)
            for client in everyone:
                await client.close()
            return list(seen), {**rejected, "exit_code": exit_code}, time.monotonic() - signalled

        seen, rejected, elapsed = asyncio.run(scenario())

    assert rejected["code"] == "shutting_down"
    assert rejected["exit_code"] == 0, daemon.output()
    assert elapsed < 15.0
    for messages in seen[:2]:
        types = [message["type"] for message in messages]
        assert "match_start" in types
        assert types.index("match_start") < types.index("kicked")
    kicks = [messages[-1] for messages in seen]
    assert all(kick["type"] == "kicked" for kick in kicks)
    assert all(kick["reason"] == "shutdown" for kick in kicks)
    hints = [kick["retry_after_ms"] for kick in kicks]
    assert all(0 <= hint <= RETRY_WINDOW_MS for hint in hints)
    assert len(set(hints)) > 1
    started = [event for event in daemon.log_events() if event["event"] == "match_started"]
    assert len(started) == 1
    assert [event for event in daemon.log_events() if event["event"] == "shutdown_ready_checks_finished"]


async def test_stop_bounds_unanswered_ready_check(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(shutdown_ready_check_wait_ms=300, ready_check_timeout_ms=60_000)
    a, b = await connect("slow1"), await connect("slow2")
    for client in (a, b):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    await a.recv_type("match_found")

    started = time.monotonic()
    stopping = asyncio.create_task(server.stop())
    kicked = await a.recv_type("kicked", timeout=5)
    await stopping

    assert kicked["reason"] == "shutdown"
    assert 0.3 <= time.monotonic() - started < 3.0


async def test_stop_forms_no_new_match(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(shutdown_ready_check_wait_ms=2_000)
    a, b = await connect("late1"), await connect("late2")
    await a.request("join_queue", queue="1v1")
    await a.recv_type("queued")
    server.server.matchmaker.forming = False
    await b.request("join_queue", queue="1v1")
    await b.recv_type("queued")

    await asyncio.sleep(0.2)

    assert server.server.lobby.checks == {}
    assert len(server.server.lobby.queues["1v1"]) == 2
