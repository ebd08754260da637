"""The daemon's life: start, serve, shut down.

``start`` opens the store and binds the listener. ``serve`` runs the long-lived
tasks (matchmaker, flusher, cleanup) in one ``TaskGroup`` until ``request_stop``.
Shutdown then stops accepting, stops taking queue entries, tells every client
``kicked`` {reason ``shutdown``}, waits a bounded time for sessions and match starts
to finish, cancels stragglers and logs how many, and flushes the store last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from lobbyd.auth import TokenVerifier
from lobbyd.config import Config
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, PlayerRecord
from lobbyd.errors import StoreError
from lobbyd.server import logs
from lobbyd.server.cluster_leader import TermSettings
from lobbyd.server.cluster_node import ClusterNode, NodeSettings, default_node_id
from lobbyd.server.matchmaker import MatchmakerLoop
from lobbyd.server.persistence import Persistence
from lobbyd.server.player_loader import PlayerLoader
from lobbyd.server.refusal import refuse_connection
from lobbyd.server.registry import Registry
from lobbyd.server.requests import Request
from lobbyd.server.session import Session, SessionLimits
from lobbyd.store.base import Store
from lobbyd.store.memory import MemoryStore
from lobbyd.store.postgres import PostgresStore
from lobbyd.store.redis_state import RedisState
from lobbyd.store.shared import SharedState
from lobbyd.store.sqlite import SqliteStore

log = logs.get(__name__)

DATABASE_FILE = "lobbyd.sqlite3"

# A login storm of 10,000 clients overflowed a backlog of 1,024; the kernel caps the
# value at net.core.somaxconn (4,096 by default since Linux 5.4).
LISTEN_BACKLOG = 4096


def new_match_id() -> str:
    """Return a match id that sorts by creation time: milliseconds in hex, then 24 random bits."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(3)}"


def open_store(config: Config) -> Store:
    if config.store == "memory":
        return MemoryStore()
    if config.store == "postgres":
        return PostgresStore(config.postgres_dsn, schema=config.postgres_schema, pool_size=config.postgres_pool_size)
    return SqliteStore(Path(config.data_dir) / DATABASE_FILE, synchronous=config.sqlite_synchronous)


def open_cluster(
    config: Config,
    settings: LobbySettings,
    registry: Registry,
    persistence: Persistence,
    state: SharedState | None = None,
) -> ClusterNode:
    """Build this daemon's node of the cluster that shares ``state``, by default the Redis of ``config``."""
    node = config.node_id or default_node_id()
    if state is None:
        state = RedisState(config.redis_url, config.redis_prefix, timeout=config.redis_timeout_ms / 1000)
    term = TermSettings(
        node=node,
        rules=config.queue_rules(),
        lobby=settings,
        tick_interval=config.tick_interval_ms / 1000,
        lease_ms=config.leader_lease_ms,
        node_ttl=config.node_ttl_ms / 1000,
        cleanup_interval=config.cleanup_interval_ms / 1000,
        player_ttl=config.player_idle_ttl_ms / 1000,
    )
    node_settings = NodeSettings(
        node=node,
        lease_ms=config.leader_lease_ms,
        node_ttl_ms=config.node_ttl_ms,
        heartbeat_ms=settings.heartbeat_ms,
        retry_after_ms=config.unavailable_retry_ms,
        dev_mode=settings.dev_mode,
    )
    return ClusterNode(state, node_settings, term, registry, persistence, new_match_id)


class Server:
    def __init__(self, config: Config, store: Store | None = None, shared_state: SharedState | None = None) -> None:
        self.config = config
        self.limits = SessionLimits(
            max_frame=config.max_frame_bytes,
            max_outgoing=config.max_outgoing_bytes,
            hello_timeout=config.hello_timeout_ms / 1000,
            heartbeat_timeout=config.heartbeat_timeout_ms / 1000,
            frame_timeout=config.frame_timeout_ms / 1000,
            rate_per_s=config.rate_limit_per_s,
            rate_burst=config.rate_limit_burst,
        )
        self.verifier = TokenVerifier(config.auth_settings())
        self.store = store if store is not None else open_store(config)
        self.registry = Registry()
        settings = dataclasses.replace(config.lobby_settings(), dev_mode=self.verifier.dev_mode)
        self.lobby = Lobby(config.queue_rules(), settings, new_match_id)
        self.persistence = Persistence(self.store, config.flush_interval_ms / 1000)
        self.players = PlayerLoader(self.store)
        self.matchmaker = MatchmakerLoop(
            self.lobby,
            self.registry,
            self.persistence,
            tick_interval=config.tick_interval_ms / 1000,
            send_timeout=config.send_timeout_ms / 1000,
        )
        self.cluster: ClusterNode | None = None
        if config.cluster == "redis":
            self.cluster = open_cluster(config, settings, self.registry, self.persistence, shared_state)
        self.address: tuple[str, int] | None = None
        self._listener: asyncio.Server | None = None
        self._per_address: Counter[str] = Counter()
        self._stop = asyncio.Event()

    # What sessions need (the SessionHost protocol).

    def submit(self, request: Request) -> None:
        if self.cluster is not None:
            self.cluster.submit(request)
        else:
            self.matchmaker.submit(request)

    def register(self, session: Session) -> None:
        self.registry.add(session)
        self._per_address[session.address] += 1

    def unregister(self, session: Session) -> None:
        self.registry.remove(session)
        self._per_address[session.address] -= 1
        if self._per_address[session.address] <= 0:
            del self._per_address[session.address]

    async def load_player(self, player_id: str) -> PlayerRecord | None:
        """Return the freshest record: lobby memory, then unwritten changes, then the store."""
        record = self.lobby.known_record(player_id) or self.persistence.pending_player(player_id)
        if record is not None:
            return record
        return await self.players.load(player_id)

    # Life cycle.

    async def run(self) -> None:
        await self.start()
        await self.serve()

    async def start(self) -> None:
        """Open the store and bind the listener; raises OSError if the port is taken."""
        await self.store.open()
        host, port = self.config.host_port
        try:
            self._listener = await asyncio.start_server(
                self._accept, host, port, reuse_address=True, backlog=LISTEN_BACKLOG
            )
        except OSError:
            await self.store.close()
            raise
        self.address = self._listener.sockets[0].getsockname()[:2]
        if self.verifier.dev_mode:
            detail = "no auth key is configured: any player id is accepted (development mode)"
            log.warning("auth_disabled", detail=detail)
        log.info(
            "server_started",
            listen=f"{self.address[0]}:{self.address[1]}",
            store=self.config.store,
            data_dir=self.config.data_dir,
            queues=sorted(self.lobby.rules),
        )

    def request_stop(self) -> None:
        """Begin a graceful shutdown; safe to call from a signal handler or twice."""
        self._stop.set()

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as group:
            lobby_loop = self.cluster.run() if self.cluster is not None else self.matchmaker.run()
            tasks = [
                group.create_task(lobby_loop),
                group.create_task(self.persistence.run()),
                group.create_task(self._cleanup_loop()),
            ]
            await self._stop.wait()
            await self._shut_down()
            if self.cluster is not None:
                await self.cluster.stop(self.config.shutdown_timeout_ms / 1000)
            for task in tasks:
                task.cancel()
        await self._final_flush()
        await self.store.close()
        if self.cluster is not None:
            await self.cluster.state.close()
        log.info("server_stopped")

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Coroutine[Any, Any, None]:
        # A plain function returning the session's coroutine, so that the task
        # start_server makes runs Session.run directly, one coroutine level less per read.
        refusal = self._over_limit(writer)
        if refusal is None:
            return Session(reader, writer, self).run()
        return refuse_connection(reader, writer, refusal, self.config.server_full_retry_ms)

    def _over_limit(self, writer: asyncio.StreamWriter) -> str | None:
        """Return why a new connection must be refused, or None to serve it."""
        if len(self.registry) >= self.config.max_connections:
            return f"the server is at its limit of {self.config.max_connections} connections"
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if self._per_address[address] >= self.config.max_connections_per_address:
            limit = self.config.max_connections_per_address
            return f"address {address} is at its limit of {limit} connections"
        return None

    async def _shut_down(self) -> None:
        started = time.monotonic()
        timeout = self.config.shutdown_timeout_ms / 1000
        log.info("shutdown_started", sessions=len(self.registry))
        if self._listener is not None:
            self._listener.close()
        self.matchmaker.draining = True
        if self.cluster is not None:
            self.cluster.draining = True
        for session in self.registry:
            session.kick("shutdown")

        stragglers = await _wait_bounded({s.task for s in self.registry if s.task is not None}, timeout)
        for task in stragglers:
            task.cancel()
        self.matchmaker.drain_requests()
        remaining = max(timeout - (time.monotonic() - started), 0.1)
        unfinished = await _wait_bounded(self.matchmaker.starts, remaining)
        for task in unfinished:
            task.cancel()
        log.info(
            "shutdown_sessions_closed",
            cancelled_sessions=len(stragglers),
            cancelled_starts=len(unfinished),
            ms=round((time.monotonic() - started) * 1000),
        )

    async def _final_flush(self) -> None:
        try:
            written = await self.persistence.flush()
        except StoreError as exc:
            log.error("final_flush_failed", error=str(exc), lost=self.persistence.dirty)
            return
        log.info("final_flush_done", records=written)

    async def _cleanup_loop(self) -> None:
        interval = self.config.cleanup_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self.cleanup()

    def cleanup(self) -> None:
        """Drop finished and idle records, and repair any session the lobby outlived."""
        now = time.time()
        # Sessions that closed a moment ago have their Gone still queued: apply it first.
        self.matchmaker.drain_requests()
        for session_id in [s for s in self.lobby.sessions if self.registry.get(s) is None]:
            # Every closed session sends Gone, so this is a bug of ours: repair and say so.
            log.error("stale_session_removed", session=session_id, player=self.lobby.sessions[session_id])
            self.matchmaker.apply(self.lobby.disconnect(session_id, now))
        dropped = self.lobby.forget(now, self.config.player_idle_ttl_ms / 1000)
        log.info("cleanup_done", dropped=dropped, players=len(self.lobby.players), sessions=len(self.registry))


async def _wait_bounded(tasks: set[asyncio.Task[None]], seconds: float) -> set[asyncio.Task[None]]:
    """Wait up to ``seconds`` for ``tasks``; return those still running."""
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return set()
    _, still_running = await asyncio.wait(pending, timeout=seconds)
    return still_running
