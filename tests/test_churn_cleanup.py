"""Players churning through queues and ready checks leave no per-player state after cleanup."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time

from lobbyd.client import ClientError, LobbyClient
from tests.conftest import RunningServer, ServerFactory

PLAYERS = 60
ROUNDS = 4
# Seconds a churning player waits for match_found, and then for the match's outcome.
FOUND_WAIT = 0.6
OUTCOME_WAIT = 1.0


async def play_round(address: str, player: str, rng: random.Random, seen: collections.Counter[str]) -> None:
    """Log in, queue, then leave, drop, accept, decline or ignore the match, and disconnect."""
    client = await LobbyClient.connect(address)
    try:
        await client.hello(player)
        await client.request("join_queue", queue=rng.choice(["1v1", "1v1", "5v5"]))
        await client.recv_type("queued")
        choice = rng.random()
        if choice < 0.15:
            seen["dropped_in_queue"] += 1
            return
        if choice < 0.25:
            await client.request("leave_queue")
            await client.recv_type("left_queue")
            seen["left_queue"] += 1
            return
        if choice < 0.35:
            # A second login of the same player kicks this session mid-queue.
            second = await LobbyClient.connect(address)
            await second.hello(player)
            await client.recv_type("kicked")
            await second.close()
            seen["logged_in_elsewhere"] += 1
            return
        await answer_match(client, rng, seen)
    except (ClientError, TimeoutError):
        seen["cut_short"] += 1
    finally:
        await client.close()


async def answer_match(client: LobbyClient, rng: random.Random, seen: collections.Counter[str]) -> None:
    found = await client.recv_type("match_found", timeout=FOUND_WAIT)
    choice = rng.random()
    if choice < 0.1:
        seen["dropped_in_check"] += 1
        return
    if choice < 0.25:
        await client.request("decline", match=found["match"])
    elif choice < 0.35:
        seen["ignored_check"] += 1
    else:
        await client.request("accept", match=found["match"])
    outcome = await client.recv_type("match_start", "match_cancelled", timeout=OUTCOME_WAIT)
    seen[outcome["type"]] += 1


async def churn(address: str, index: int, seen: collections.Counter[str]) -> None:
    rng = random.Random(index)
    for _ in range(ROUNDS):
        await play_round(address, f"churn{index}", rng, seen)


async def wait_until_no_sessions(server: RunningServer) -> None:
    deadline = time.monotonic() + 5
    while len(server.server.registry):
        assert time.monotonic() < deadline, f"{len(server.server.registry)} sessions still open"
        await asyncio.sleep(0.02)


async def test_churn_leaves_no_state(start_server: ServerFactory) -> None:
    server = await start_server(
        ready_check_timeout_ms=300,
        player_idle_ttl_ms=1,
        cleanup_interval_ms=3_600_000,
        max_connections_per_address=1000,
    )
    seen: collections.Counter[str] = collections.Counter()
    await asyncio.gather(*(churn(server.address, index, seen) for index in range(PLAYERS)))
    # The churn reached every path it means to test.
    for outcome in ("match_start", "match_cancelled", "dropped_in_queue", "left_queue", "logged_in_elsewhere"):
        assert seen[outcome] > 0, (outcome, seen)
    assert seen["dropped_in_check"] + seen["ignored_check"] > 0, seen

    await wait_until_no_sessions(server)
    daemon = server.server
    daemon.lobby.settings = dataclasses.replace(daemon.lobby.settings, finished_ttl=0.0)
    await asyncio.sleep(0.01)
    daemon.cleanup()
    await daemon.persistence.flush()

    lobby = daemon.lobby
    assert lobby.players == {}
    assert lobby.sessions == {}
    assert {name: tickets for name, tickets in lobby.queues.items() if tickets} == {}
    assert lobby.checks == {}
    assert lobby.finished == {}
    assert len(daemon.registry) == 0
    assert daemon._per_address == {}
    assert [t for t in asyncio.all_tasks() if "Session.run" in repr(t.get_coro())] == []
    assert daemon.matchmaker.requests.empty()
    assert daemon.matchmaker.starts == set()
    assert daemon.persistence.dirty == 0
