"""Run lobbyd nodes as processes on loopback ports, sharing one Redis and one PostgreSQL.

``Cluster`` starts ``lobbyd serve`` processes with cluster settings in their
environment (see ``tests/daemon.py``), each on its own port, and reads the shared
state in Redis for assertions. The ``cluster`` fixture gives each test a cluster of
its own key prefix and schema and stops every node afterwards, killed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lobbyd.client import LobbyClient
from lobbyd.protocol import cluster as c
from tests.daemon import DaemonProcess, running_daemon
from tests.services import Service

# Short enough for fast failovers in tests, long enough for a loaded CI machine.
LEASE_MS = 1000
NODE_TTL_MS = 1000
TICK_MS = 100


class Cluster:
    def __init__(self, tmp_path: Path, redis_url: str, pg_dsn: str, prefix: str, schema: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.pg_dsn = pg_dsn
        self.prefix = prefix
        self.schema = schema
        self.nodes: dict[str, DaemonProcess] = {}
        self._stack = contextlib.ExitStack()
        self._redis = redis.Redis.from_url(redis_url)

    def env(self, node_id: str, **settings: Any) -> dict[str, str]:
        env = {
            "LOBBYD_STORE": "postgres",
            "LOBBYD_POSTGRES_DSN": self.pg_dsn,
            "LOBBYD_POSTGRES_SCHEMA": self.schema,
            "LOBBYD_CLUSTER": "redis",
            "LOBBYD_REDIS_URL": self.redis_url,
            "LOBBYD_REDIS_PREFIX": self.prefix,
            "LOBBYD_NODE_ID": node_id,
            "LOBBYD_LEADER_LEASE_MS": str(LEASE_MS),
            "LOBBYD_NODE_TTL_MS": str(NODE_TTL_MS),
            "LOBBYD_TICK_INTERVAL_MS": str(TICK_MS),
            "LOBBYD_FLUSH_INTERVAL_MS": "100",
            "LOBBYD_LOG_LEVEL": "info",
            "LOBBYD_LOG_FORMAT": "json",
        }
        env.update({f"LOBBYD_{key.upper()}": str(value) for key, value in settings.items()})
        return env

    def start(self, node_id: str, *, config: str | None = None, **settings: Any) -> DaemonProcess:
        """Start node ``node_id``; ``config`` is TOML for settings the environment cannot set, such as queues."""
        data_dir = self.tmp_path / node_id
        args: list[str] = []
        if config is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / "lobbyd.toml"
            path.write_text(config)
            args = ["--config", str(path)]
        daemon = self._stack.enter_context(running_daemon(data_dir, *args, env=self.env(node_id, **settings)))
        self.nodes[node_id] = daemon
        return daemon

    def start_many(self, count: int, *, config: str | None = None, **settings: Any) -> list[DaemonProcess]:
        return [self.start(f"n{index}", config=config, **settings) for index in range(count)]

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._redis.close()

    # Shared state, read for assertions.

    def leader(self) -> tuple[str, int] | None:
        value = self._redis.get(f"{self.prefix}:leader")
        if value is None:
            return None
        node, _, token = value.decode().rpartition(":")
        return node, int(token)

    async def wait_for_leader(self, timeout: float = 10.0, *, not_node: str | None = None) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader[0] != not_node:
                return leader
            await asyncio.sleep(0.02)
        msg = f"no leader other than {not_node!r} within {timeout} s"
        raise AssertionError(msg)

    def tickets(self) -> dict[str, c.TicketState]:
        values = self._redis.hgetall(f"{self.prefix}:tickets")
        return {key.decode(): c.TICKET_DECODER.decode(value) for key, value in values.items()}

    def checks(self) -> dict[str, c.CheckSnapshot]:
        values = self._redis.hgetall(f"{self.prefix}:checks")
        return {key.decode(): c.CHECK_DECODER.decode(value) for key, value in values.items()}

    def redis_hash(self, name: str) -> dict[str, bytes]:
        """Return the raw fields of the cluster's hash ``name``, such as ``servers`` or ``hosted``."""
        values = self._redis.hgetall(f"{self.prefix}:{name}")
        return {key.decode(): value for key, value in values.items()}

    def presence(self) -> dict[str, c.Presence]:
        values = self._redis.hgetall(f"{self.prefix}:presence")
        return {key.decode(): c.PRESENCE_DECODER.decode(value) for key, value in values.items()}

    def events(self, node_id: str, name: str) -> list[dict[str, Any]]:
        return [event for event in self.nodes[node_id].log_events() if event.get("event") == name]


@pytest.fixture
def cluster(
    tmp_path: Path, redis_service: Service, postgres_service: Service, redis_prefix: str, pg_schema: str
) -> Iterator[Cluster]:
    running = Cluster(tmp_path, redis_service.url, postgres_service.url, redis_prefix, pg_schema)
    try:
        yield running
    finally:
        running.close()


async def login(daemon: DaemonProcess, player: str) -> LobbyClient:
    client = await LobbyClient.connect(daemon.address)
    await client.hello(player)
    return client


async def join(client: LobbyClient, queue: str) -> None:
    rid = await client.request("join_queue", queue=queue)
    reply = await client.recv_type("queued", "error")
    assert reply == {"type": "queued", "queue": queue, "rid": rid}, reply


async def wait_until(condition: Any, timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{message} not met within {timeout} s")
