"""Dodge penalties over real loopback sockets: a lockout rejects join_queue and outlives a restart."""

from __future__ import annotations

import asyncio

from lobbyd.client import LobbyClient
from tests.conftest import ClientFactory, ServerFactory

LADDER = {"dodge_lockouts_s": [60, 600], "store": "sqlite"}


async def _duel(connect: ClientFactory, players: tuple[str, str]) -> tuple[LobbyClient, LobbyClient, str]:
    first, second = [await connect(player) for player in players]
    for client in (first, second):
        await client.request("join_queue", queue="1v1")
        await client.recv_type("queued")
    match = (await first.recv_type("match_found"))["match"]
    await second.recv_type("match_found")
    return first, second, match


async def test_decline_locks_out_join(connect: ClientFactory, start_server: ServerFactory) -> None:
    await start_server(**LADDER)
    dodger, other, match = await _duel(connect, ("dodger", "other"))

    await dodger.request("decline", match=match)
    cancelled = await dodger.recv_type("match_cancelled")
    rid = await dodger.request("join_queue", queue="1v1")
    error = await dodger.recv_type("error")

    assert cancelled["penalty_level"] == 1
    assert cancelled["lockout_ms"] == 60_000
    assert error["code"] == "queue_locked"
    assert error["rid"] == rid
    assert 59_000 < error["retry_after_ms"] <= 60_000
    other_cancelled = await other.recv_type("match_cancelled")
    assert "penalty_level" not in other_cancelled
    await other.request("join_queue", queue="1v1")
    assert (await other.recv_type("queued"))["queue"] == "1v1"


async def test_lockout_survives_restart(connect: ClientFactory, start_server: ServerFactory) -> None:
    first = await start_server(**LADDER)
    dodger, _, match = await _duel(connect, ("dodger2", "other2"))
    await dodger.request("decline", match=match)
    await dodger.recv_type("match_cancelled")
    await dodger.close()
    # Let the flusher store the penalty, then restart on the same database.
    await asyncio.sleep(0.3)
    await first.stop()

    second = await start_server(**LADDER)
    again = await connect("dodger2", target=second)
    await again.request("join_queue", queue="1v1")
    error = await again.recv_type("error")

    assert error["code"] == "queue_locked"
    assert error["retry_after_ms"] > 55_000
