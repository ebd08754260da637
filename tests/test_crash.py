"""kill -9 during a run loses no match that any client saw start."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from pathlib import Path

import msgspec
import pytest

from lobbyd.client import ClientError, LobbyClient
from lobbyd.server.app import DATABASE_FILE
from tests.daemon import DaemonProcess, running_daemon

pytestmark = pytest.mark.slow

BOTS = 40
KILLS = 3


async def bot(address: str, player: str, seen: dict[str, list[list[str]]], stop: asyncio.Event) -> None:
    """Queue, accept and requeue until the daemon dies; record every match_start seen."""
    try:
        client = await LobbyClient.connect(address)
    except OSError:
        return
    try:
        await client.hello(player)
        queue = "1v1" if player.endswith(("0", "5")) else "5v5"
        while not stop.is_set():
            await client.request("join_queue", queue=queue)
            while True:
                message = await client.recv(timeout=None)
                if message["type"] == "match_found":
                    await client.request("accept", match=message["match"])
                elif message["type"] == "match_start":
                    seen[message["match"]] = message["teams"]
                    break
                elif message["type"] == "match_cancelled" and not message["requeued"]:
                    break
    except (ClientError, ConnectionError, OSError):
        return
    finally:
        await client.close()


async def run_until_killed(address: str, pid_kill: asyncio.Future[None], generation: int) -> dict[str, list[list[str]]]:
    seen: dict[str, list[list[str]]] = {}
    stop = asyncio.Event()
    bots = [asyncio.create_task(bot(address, f"g{generation}p{i}", seen, stop)) for i in range(BOTS)]
    await pid_kill
    stop.set()
    await asyncio.wait(bots, timeout=10)
    return seen


async def kill_later(daemon: DaemonProcess, delay: float, killed: asyncio.Future[None]) -> None:
    await asyncio.sleep(delay)
    daemon.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(daemon.process.wait)
    killed.set_result(None)


def stored_matches(database: Path) -> dict[str, list[list[str]]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT id, teams FROM matches WHERE state = 'started'").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return {match: msgspec.json.decode(teams) for match, teams in rows}


def stored_players(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        return dict(db.execute("SELECT id, rating FROM players").fetchall())


async def test_kill_9_keeps_started_matches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"LOBBYD_TICK_INTERVAL_MS": "20", "LOBBYD_FLUSH_INTERVAL_MS": "200", "LOBBYD_LOG_LEVEL": "warning"}
    seen_all: dict[str, list[list[str]]] = {}
    rng = random.Random(7)

    for generation in range(KILLS):
        with running_daemon(data, env=env) as daemon:
            killed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # The kill lands at a random moment, sometimes inside a flush.
            killer = asyncio.create_task(kill_later(daemon, rng.uniform(0.8, 2.0), killed))
            seen = await run_until_killed(daemon.address, killed, generation)
            await killer
            assert daemon.process.returncode == -signal.SIGKILL
        assert seen, f"generation {generation} started no match before the kill"
        seen_all.update(seen)

    # A restart opens the same file and serves again.
    with running_daemon(data, env=env) as daemon:
        client = await LobbyClient.connect(daemon.address)
        welcome = await client.hello("g0p1")
        assert welcome["rating"] == 1500
        await client.close()
    assert daemon.exit_code == 0

    stored = stored_matches(data / DATABASE_FILE)
    missing = sorted(set(seen_all) - set(stored))
    assert missing == [], f"{len(missing)} of {len(seen_all)} started matches lost"
    for match, teams in seen_all.items():
        assert stored[match] == teams, match
    players = stored_players(data / DATABASE_FILE)
    in_matches = {player for teams in seen_all.values() for team in teams for player in team}
    assert in_matches <= set(players)
    assert all(players[player] == 1500 for player in in_matches)
