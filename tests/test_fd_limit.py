"""A daemon that runs out of file descriptors logs it, keeps serving and recovers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from lobbyd.client import LobbyClient
from tests.daemon import HOST, DaemonProcess, running_daemon

pytestmark = pytest.mark.slow

MAX_OPEN_FILES = 64
# Silent connections, well past the limit: the first become sessions waiting for
# hello, the next are refused with server_full, and the rest find no descriptor.
FLOOD = 3 * MAX_OPEN_FILES
# A refusal waits up to a second for the client's first byte before it replies.
REFUSAL_WAIT = 1.5
# Seconds to wait for a log event or for the daemon to serve again.
EVENT_WAIT = 5.0


async def wait_for_event(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + EVENT_WAIT
    while time.monotonic() < deadline:
        found = [event for event in daemon.log_events() if event["event"] == name]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name} event within {EVENT_WAIT} s\n{daemon.output()}")


async def ping_ms(client: LobbyClient) -> float:
    began = time.perf_counter()
    rid = await client.request("ping")
    assert await client.recv(timeout=2) == {"type": "pong", "rid": rid}
    return (time.perf_counter() - began) * 1000


async def outcome(reader: asyncio.StreamReader) -> str:
    """Return how the daemon treated a silent connection: session, refused or dropped."""
    try:
        data = await asyncio.wait_for(reader.read(4096), 0.2)
    except TimeoutError:
        return "session"
    except ConnectionError:
        return "dropped"
    if not data:
        return "dropped"
    assert b"server_full" in data, data
    return "refused"


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def hello_when_served(address: str, player: str) -> LobbyClient:
    """Log in, retrying while the daemon still counts the closed flood against its limit."""
    deadline = time.monotonic() + EVENT_WAIT
    while True:
        client = await LobbyClient.connect(address)
        await client.request("hello", v=1, player=player)
        reply = await client.recv()
        if reply["type"] == "welcome":
            return client
        await client.close()
        assert reply["code"] == "server_full", reply
        assert time.monotonic() < deadline, f"still {reply} after {EVENT_WAIT} s"
        await asyncio.sleep(0.1)


async def test_fd_exhaustion_logged_and_survived(tmp_path: Path) -> None:
    env = {"LOBBYD_LOG_LEVEL": "info", "LOBBYD_HELLO_TIMEOUT_MS": "30000"}
    with running_daemon(tmp_path / "data", env=env, max_open_files=MAX_OPEN_FILES) as daemon:
        low = await wait_for_event(daemon, "fd_limit_low")
        assert low["limit"] == MAX_OPEN_FILES
        assert 1 <= low["capacity"] < MAX_OPEN_FILES

        healthy = await LobbyClient.connect(daemon.address)
        await healthy.hello("healthy")
        flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            await flood_and_check(daemon, healthy, flood, low["capacity"])
        finally:
            await close_all([writer for _, writer in flood])

        await wait_for_event(daemon, "fd_exhausted_ended")
        newcomer = await hello_when_served(daemon.address, "newcomer")
        await ping_ms(newcomer)
        await ping_ms(healthy)
        await newcomer.close()
        await healthy.close()

    assert daemon.exit_code == 0, daemon.output()
    errors = [event for event in daemon.log_events() if event["level"] in ("error", "critical")]
    assert errors == []
    assert "Traceback" not in daemon.stderr_path.read_text()


async def flood_and_check(
    daemon: DaemonProcess,
    healthy: LobbyClient,
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    capacity: int,
) -> None:
    for _ in range(FLOOD):
        flood.append(await asyncio.open_connection(HOST, daemon.port))
    exhausted = await wait_for_event(daemon, "fd_exhausted")
    assert exhausted["level"] == "warning"
    assert exhausted["limit"] == MAX_OPEN_FILES
    # The loop stays responsive while the descriptors are gone.
    assert await ping_ms(healthy) < 500

    await asyncio.sleep(REFUSAL_WAIT)
    outcomes = await asyncio.gather(*(outcome(reader) for reader, _ in flood))
    counts = {kind: outcomes.count(kind) for kind in ("session", "refused", "dropped")}
    # The healthy client is one of the sessions.
    assert counts["session"] == capacity - 1, counts
    assert counts["refused"] >= 1, counts
    assert counts["dropped"] >= 1, counts
