"""Churning bot players for the crash test and the soak.

A bot logs in, joins a queue and responds to each ``match_found`` by accepting,
declining or disconnecting, with the shares in ``Behaviour``. After a match starts
it queues again or, with probability ``leave_after_match``, disconnects and logs
in again, under the same id or a new one. Every ``match_start`` a bot sees is
recorded with its teams, so that the caller can check the store against it.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from lobbyd.client import ClientError, LobbyClient

# Seconds a bot waits for a message before it pings, so that a bot waiting in a
# queue stays within the daemon's heartbeat timeout (30 s by default).
IDLE_PING: Final = 5.0
# Seconds a bot waits before it connects again after a refused connection.
RETRY_DELAY: Final = 0.2
# Bots per loopback source address, below the daemon's per-address limit of 256.
BOTS_PER_SOURCE: Final = 200
# Errors that end a bot's session from the outside: the daemon closed, reset or died.
CONNECTION_ERRORS: Final = (ClientError, OSError, TimeoutError, msgspec.DecodeError)


@dataclass(frozen=True, slots=True)
class Behaviour:
    queues: tuple[str, ...] = ("1v1", "5v5")
    decline_rate: float = 0.05
    drop_rate: float = 0.05
    """Share of match_found to which the bot responds by disconnecting."""
    leave_after_match: float = 0.0
    """Share of started matches after which the bot disconnects and logs in again."""
    think: tuple[float, float] = (0.0, 0.0)
    """Range of seconds a bot waits before it responds to match_found and before it queues again."""
    stop_when_lost: bool = False
    """End the bot when the daemon closes its connection, instead of reconnecting."""
    hosted: bool = False
    """Matches run on registered game servers: queue again after ``match_ended``, not after ``match_start``."""


@dataclass(slots=True)
class BotRecord:
    """Matches and events the bots saw, shared by all of them."""

    started: dict[str, list[list[str]]] = field(default_factory=dict)
    """Teams of every match whose match_start a bot received, by match id."""
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


def spawn_bots(
    count: int,
    address: str,
    source_prefix: str,
    next_player: Callable[[], str],
    behaviour: Behaviour,
    record: BotRecord,
    stop: asyncio.Event,
    rng: random.Random,
) -> list[asyncio.Task[None]]:
    """Start ``count`` bots from ``source_prefix``.1, .2 and on, BOTS_PER_SOURCE to an address."""
    return [
        asyncio.create_task(
            churn_bot(
                address,
                f"{source_prefix}.{n // BOTS_PER_SOURCE + 1}",
                next_player,
                behaviour,
                record,
                stop,
                random.Random(rng.random()),
            )
        )
        for n in range(count)
    ]


async def churn_bot(
    address: str,
    source: str | None,
    next_player: Callable[[], str],
    behaviour: Behaviour,
    record: BotRecord,
    stop: asyncio.Event,
    rng: random.Random,
) -> None:
    """Play sessions one after another until ``stop`` is set."""
    while not stop.is_set():
        try:
            client = await LobbyClient.connect(address, source=source)
        except CONNECTION_ERRORS:
            record.counts["connect_failed"] += 1
            if behaviour.stop_when_lost:
                return
            await asyncio.sleep(RETRY_DELAY)
            continue
        record.counts["sessions"] += 1
        try:
            await client.hello(next_player())
            await play_session(client, behaviour, record, stop, rng)
        except CONNECTION_ERRORS:
            record.counts["connection_lost"] += 1
            if behaviour.stop_when_lost:
                return
        finally:
            await client.close()


async def play_session(
    client: LobbyClient, behaviour: Behaviour, record: BotRecord, stop: asyncio.Event, rng: random.Random
) -> None:
    """Queue and play matches until the bot disconnects on purpose or ``stop`` is set."""
    await client.request("join_queue", queue=rng.choice(behaviour.queues))
    while not stop.is_set():
        try:
            message = await client.recv(timeout=IDLE_PING)
        except TimeoutError:
            await client.request("ping")
            continue
        if not await _handle(client, message, behaviour, record, rng):
            return


async def _handle(
    client: LobbyClient, message: dict[str, Any], behaviour: Behaviour, record: BotRecord, rng: random.Random
) -> bool:
    """Act on one server message; return False to disconnect."""
    kind = message.get("type")
    if kind in ("match_found", "match_start") and behaviour.think[1] > 0:
        await asyncio.sleep(rng.uniform(*behaviour.think))
    if kind == "match_found":
        choice = rng.random()
        if choice < behaviour.drop_rate:
            record.counts["dropped"] += 1
            return False
        verb = "decline" if choice < behaviour.drop_rate + behaviour.decline_rate else "accept"
        record.counts[verb] += 1
        await client.request(verb, match=message["match"])
    elif kind == "match_start":
        record.started[str(message["match"])] = message["teams"]
        if not behaviour.hosted:
            return await _after_match(client, behaviour, rng)
    elif kind == "match_ended":
        record.counts[f"ended_{message.get('reason')}"] += 1
        return await _after_match(client, behaviour, rng)
    elif kind == "match_cancelled":
        record.counts["cancelled"] += 1
        if not message.get("requeued"):
            await client.request("join_queue", queue=rng.choice(behaviour.queues))
    elif kind == "kicked":
        record.counts[f"kicked_{message.get('reason')}"] += 1
        return False
    elif kind == "error":
        record.counts[f"error_{message.get('code')}"] += 1
    return True


async def _after_match(client: LobbyClient, behaviour: Behaviour, rng: random.Random) -> bool:
    """Queue again, or return False to disconnect, as ``leave_after_match`` says."""
    if rng.random() < behaviour.leave_after_match:
        return False
    await client.request("join_queue", queue=rng.choice(behaviour.queues))
    return True
