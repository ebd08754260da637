"""The daemon's life: start, serve, shut down.

``start`` opens the store and binds the listener, or takes over the sockets systemd
passed. ``serve`` tells systemd the daemon is ready and runs the long-lived tasks
(matchmaker, flusher, cleanup, reloader, loop-lag probe, watchdog) in one
``TaskGroup`` until ``request_stop``. Shutdown then stops accepting, stops taking queue entries and
forming matches, lets running ready checks finish for a bounded time, tells every
client ``kicked`` {reason ``shutdown``} with a randomly spread ``retry_after_ms``,
waits a bounded time for sessions and match starts to finish, cancels stragglers
and logs how many, and flushes the store last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lobbyd.auth import TokenVerifier
from lobbyd.config import Config, parse_listen
from lobbyd.core.hosting import HostingCounts
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import HistoryEntry, LobbySettings, PlayerRecord
from lobbyd.errors import ServerFull, StartupError, StoreError
from lobbyd.server import logs
from lobbyd.server.activation import describe
from lobbyd.server.admin import AdminServer, socket_path
from lobbyd.server.cluster_leader import TermSettings
from lobbyd.server.cluster_node import ClusterNode, NodeSettings, default_node_id
from lobbyd.server.fdlimit import FdBudget
from lobbyd.server.gc_policy import freeze_survivors, keep_frozen
from lobbyd.server.matchmaker import MatchmakerLoop
from lobbyd.server.metrics import Metrics
from lobbyd.server.metrics_http import start_metrics_server
from lobbyd.server.notify import Notifier, keep_alive
from lobbyd.server.pacing import PacedQueue
from lobbyd.server.persistence import Persistence
from lobbyd.server.player_loader import PlayerLoader
from lobbyd.server.recording import EventRecorder
from lobbyd.server.refusal import Refusal
from lobbyd.server.registry import Registry
from lobbyd.server.reload import ConfigSource, Reloader
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
        hosting=config.hosting_settings(),
    )
    node_settings = NodeSettings(
        node=node,
        lease_ms=config.leader_lease_ms,
        node_ttl_ms=config.node_ttl_ms,
        heartbeat_ms=settings.heartbeat_ms,
        retry_after_ms=config.unavailable_retry_ms,
        dev_mode=settings.dev_mode,
        max_queued=config.max_queued_requests,
    )
    results = persistence.store if isinstance(persistence.store, PostgresStore) else None
    return ClusterNode(state, node_settings, term, registry, persistence, new_match_id, results)


class Server:
    def __init__(
        self,
        config: Config,
        store: Store | None = None,
        *,
        sockets: Sequence[socket.socket] = (),
        notifier: Notifier | None = None,
        watchdog_s: float | None = None,
        source: ConfigSource | None = None,
        shared_state: SharedState | None = None,
    ) -> None:
        """Build the daemon; ``sockets`` are listening sockets passed by systemd, served instead of ``listen``.

        ``notifier`` reports to systemd, and ``watchdog_s`` is the interval at which
        it pings the watchdog; both come from the environment systemd sets.
        ``source`` is where ``config`` came from, read again by a reload.
        ``shared_state`` replaces the cluster's Redis state, for tests.
        """
        self.config = config
        self.limits = session_limits(config)
        self.verifier = TokenVerifier(config.auth_settings())
        self.game_server_key = config.game_server_key()
        self.store = store if store is not None else open_store(config)
        self.registry = Registry()
        self.metrics = Metrics()
        settings = dataclasses.replace(config.lobby_settings(), dev_mode=self.verifier.dev_mode)
        self.lobby = Lobby(config.queue_rules(), settings, new_match_id, config.hosting_settings())
        self.persistence = Persistence(self.store, config.flush_interval_ms / 1000, self.metrics)
        self.players = PlayerLoader(self.store)
        self.matchmaker = MatchmakerLoop(
            self.lobby,
            self.registry,
            self.persistence,
            tick_interval=config.tick_interval_ms / 1000,
            send_timeout=config.send_timeout_ms / 1000,
            max_queued=config.max_queued_requests,
            metrics=self.metrics,
        )
        self.burst_pacer = self.matchmaker.burst_pacer
        self._releases: PacedQueue[Session] = PacedQueue(self.burst_pacer, Session.release)
        self.recorder: EventRecorder | None = None
        if config.record_events_file:
            tick_interval = config.tick_interval_ms / 1000
            self.recorder = EventRecorder(
                Path(config.record_events_file), config.flush_interval_ms / 1000, tick_interval
            )
            self.matchmaker.recorder = self.recorder
        self.metrics.observe(self)
        self.reloader = Reloader(self, source or ConfigSource())
        self.notifier = notifier or Notifier()
        self.watchdog_s = watchdog_s
        self.fds = FdBudget(config.max_connections)
        self.cluster: ClusterNode | None = None
        if config.cluster == "redis":
            self.cluster = open_cluster(config, settings, self.registry, self.persistence, shared_state)
        self.address: tuple[str, int] | None = None
        self.listen_addresses: list[str] = []
        self._inherited = list(sockets)
        self._listeners: list[asyncio.Server] = []
        self._operations: list[asyncio.Server] = []
        self.metrics_address: str | None = None
        self.admin = AdminServer(self, socket_path(config))
        self._per_address: Counter[str] = Counter()
        self._stop = asyncio.Event()
        # Spreads the reconnect hints of a shutdown; not security-relevant.
        self._jitter = random.Random()

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
        self.metrics.add_closed(session)
        self._per_address[session.address] -= 1
        if self._per_address[session.address] <= 0:
            del self._per_address[session.address]

    def release_later(self, session: Session) -> None:
        self._releases.put(session)

    async def load_player(self, player_id: str) -> PlayerRecord | None:
        """Return the freshest record: lobby memory, then unwritten changes, then the store."""
        record = self.lobby.known_record(player_id) or self.persistence.pending_player(player_id)
        if record is not None:
            return record
        return await self.players.load(player_id)

    async def load_history(self, player_id: str, limit: int) -> list[HistoryEntry]:
        return await self.store.load_history(player_id, limit)

    @property
    def hosting_counts(self) -> HostingCounts | None:
        """Counts of allocations, results and abandoned matches; None without game servers.

        A cluster node counts only the matches it hosted while leading in its current term.
        """
        lobby = self.lobby
        if self.cluster is not None and self.cluster.term is not None:
            lobby = self.cluster.term.lobby
        return lobby.hosting.counts if lobby.hosting is not None else None

    # Life cycle.

    async def run(self) -> None:
        await self.start()
        await self.serve()

    @property
    def draining(self) -> bool:
        """True while ``join_queue`` is rejected: during a drain and a graceful stop."""
        return self.matchmaker.draining

    def status_line(self) -> str:
        """Summarize what the daemon serves, for systemd's STATUS= and the admin socket."""
        queued = sum(len(tickets) for tickets in self.lobby.queues.values())
        started = sum(self.metrics.matches_started.values())
        text = (
            f"sessions: {len(self.registry)}, queued players: {queued}, "
            f"ready checks: {len(self.lobby.checks)}, matches started: {started}"
        )
        return f"{text}, draining" if self.draining else text

    async def start(self) -> None:
        """Open the store and listen; raises OSError if the port is taken.

        Raises ``StartupError`` when the admin socket or the metrics endpoint cannot listen.
        """
        await self.store.open()
        try:
            await self._listen()
            await self._open_operations()
        except (OSError, StartupError):
            await self._close_listeners()
            self._close_operations()
            await self.store.close()
            raise
        self.fds.measure()
        freeze_survivors()
        if self.verifier.dev_mode:
            detail = "no auth key is configured: any player id is accepted (development mode)"
            log.warning("auth_disabled", detail=detail)
        log.info(
            "server_started",
            listen=self.listen_addresses,
            socket_activated=bool(self._inherited),
            store=self.config.store,
            data_dir=self.config.data_dir,
            queues=sorted(self.lobby.rules),
            game_servers=self._game_server_mode(),
        )

    def _game_server_mode(self) -> str:
        registered = "registered" if self.game_server_key is not None else ""
        static = "static" if self.config.static_game_servers else ""
        return "+".join(mode for mode in (registered, static) if mode) or "none"

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        if self._inherited:
            # Listening again on a listening socket only sets its backlog, here to
            # the Backlog= of the shipped lobbyd.socket.
            for sock in self._inherited:
                self._listeners.append(await loop.create_server(self._accept, sock=sock, backlog=LISTEN_BACKLOG))
            log.info("listen_ignored", listen=self.config.listen, reason="listening on sockets passed by systemd")
        else:
            host, port = self.config.host_port
            listener = await loop.create_server(self._accept, host, port, reuse_address=True, backlog=LISTEN_BACKLOG)
            self._listeners.append(listener)
        sockets = [sock for listener in self._listeners for sock in listener.sockets]
        self.address = sockets[0].getsockname()[:2]
        self.listen_addresses = [describe(sock) for sock in sockets]

    async def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()

    async def _open_operations(self) -> None:
        """Open the listeners for operators: the admin socket, and the metrics endpoint when configured."""
        await self.admin.open()
        if self.config.metrics_listen:
            host, port = parse_listen(self.config.metrics_listen)
            try:
                endpoint = await start_metrics_server(self.metrics.registry, host, port)
            except OSError as exc:
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                msg = f"cannot listen for metrics on {self.config.metrics_listen}: {reason}"
                raise StartupError(msg) from None
            self._operations.append(endpoint)
            self.metrics_address = describe(endpoint.sockets[0])
            log.info("metrics_listening", address=self.metrics_address)

    def _close_operations(self) -> None:
        self.admin.close()
        for endpoint in self._operations:
            endpoint.close()

    def request_stop(self) -> None:
        """Begin a graceful shutdown; safe to call from a signal handler or twice."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration soon; safe to call from a signal handler. Ignored once stopping."""
        if self._stop.is_set():
            log.info("config_reload_ignored", reason="the server is shutting down")
            return
        self.reloader.request()

    def apply_config(self, config: Config, verifier: TokenVerifier) -> None:
        """Switch every running part to ``config`` in one synchronous step.

        Sessions, tickets and ready checks stay. Limits apply to each session's next
        check; the frame size and rate limit apply to connections opened from now on.
        """
        self.config = config
        self.limits = session_limits(config)
        self.verifier = verifier
        self.lobby.settings = dataclasses.replace(
            self.lobby.settings,
            ready_timeout=config.ready_check_timeout_ms / 1000,
            heartbeat_ms=config.heartbeat_interval_ms,
            dev_mode=verifier.dev_mode,
            penalties=config.penalty_ladder(),
        )
        self.matchmaker.apply(self.lobby.replace_rules(config.queue_rules(), time.time()))
        self.matchmaker.tick_interval = config.tick_interval_ms / 1000
        self.matchmaker.send_timeout = config.send_timeout_ms / 1000
        self.matchmaker.max_queued = config.max_queued_requests
        self.persistence.interval = config.flush_interval_ms / 1000
        logs.set_level(config.log_level)
        if verifier.dev_mode:
            log.warning("auth_disabled", detail="no auth key is configured: any player id is accepted")

    async def serve(self) -> None:
        """Tell systemd the daemon is ready, then run until ``request_stop`` and shut down.

        READY=1 goes out here rather than at the end of ``start`` so that the caller
        can install its signal handlers in between: systemd sends SIGHUP for a reload
        as soon as the service is ready.
        """
        self.notifier.ready(self.status_line())
        async with asyncio.TaskGroup() as group:
            lobby_loop = self.cluster.run() if self.cluster is not None else self.matchmaker.run()
            tasks = [
                group.create_task(lobby_loop),
                group.create_task(self.persistence.run()),
                group.create_task(self._cleanup_loop()),
                group.create_task(keep_frozen()),
                group.create_task(self.metrics.watch_loop_lag()),
                group.create_task(self.fds.watch()),
            ]
            tasks.append(group.create_task(self.reloader.run()))
            if self.recorder is not None:
                tasks.append(group.create_task(self.recorder.run()))
            if self.notifier.enabled:
                tasks.append(group.create_task(keep_alive(self.notifier, self.watchdog_s, self.status_line)))
            await self._stop.wait()
            await self._shut_down()
            if self.cluster is not None:
                await self.cluster.stop(self.config.shutdown_timeout_ms / 1000)
            for task in tasks:
                task.cancel()
        await self._final_flush()
        if self.recorder is not None:
            await self.recorder.close()
        await self.store.close()
        self._close_operations()
        if self.cluster is not None:
            await self.cluster.state.close()
        log.info("server_stopped")
        self.notifier.close()

    def _accept(self) -> asyncio.Protocol:
        return _Admission(self)

    def admit(self, transport: asyncio.BaseTransport) -> asyncio.Protocol:
        """Return the protocol for a new connection: its session, or a refusal."""
        refusal = self._over_limit(transport)
        if refusal is None:
            return Session(self)
        self.metrics.errors_sent[ServerFull.code] += 1
        # Refusals come near the connection limit, where descriptors may run out too.
        self.fds.check()
        return Refusal(refusal, self.config.server_full_retry_ms)

    def _over_limit(self, transport: asyncio.BaseTransport) -> str | None:
        """Return why a new connection must be refused, or None to serve it."""
        if len(self.registry) >= self.fds.max_connections:
            return f"the server is at its limit of {self.fds.max_connections} connections"
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if self._per_address[address] >= self.config.max_connections_per_address:
            limit = self.config.max_connections_per_address
            return f"address {address} is at its limit of {limit} connections"
        return None

    async def _shut_down(self) -> None:
        log.info("shutdown_started", sessions=len(self.registry), ready_checks=len(self.lobby.checks))
        self.notifier.stopping(f"stopping: {self.status_line()}")
        await self._close_listeners()
        self.matchmaker.draining = True
        self.matchmaker.forming = False
        if self.cluster is not None:
            self.cluster.draining = True
        await self._finish_ready_checks(self.config.shutdown_ready_check_wait_ms / 1000)

        started = time.monotonic()
        timeout = self.config.shutdown_timeout_ms / 1000
        window = self.config.shutdown_retry_window_ms
        for session in self.registry:
            session.kick("shutdown", retry_after_ms=self._jitter.randint(0, window))

        stragglers = [] if await self.registry.wait_empty(timeout) else list(self.registry)
        for session in stragglers:
            session.close("shutdown", abort=True)
        self.matchmaker.drain_requests()
        remaining = max(timeout - (time.monotonic() - started), 0.1)
        unfinished = await _wait_bounded(self.matchmaker.starts, remaining)
        for task in unfinished:
            task.cancel()
        log.info(
            "shutdown_sessions_closed",
            aborted_sessions=len(stragglers),
            cancelled_starts=len(unfinished),
            ms=round((time.monotonic() - started) * 1000),
        )

    async def _finish_ready_checks(self, limit: float) -> None:
        """Wait up to ``limit`` seconds for running ready checks and match starts to end.

        No new matches form meanwhile, so each check ends by its players' answers or
        its deadline, and a started match reaches its players before they are kicked.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        waited_for = len(self.lobby.checks)
        # Checks end inside the lobby's synchronous calls, which signal nothing, so this
        # polls once per tick, the interval at which expiries are applied anyway.
        while (self.lobby.checks or self.matchmaker.starts) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(min(self.matchmaker.tick_interval, deadline - loop.time()))
        if self.lobby.checks or self.matchmaker.starts:
            log.warning(
                "shutdown_ready_checks_unfinished",
                ready_checks=len(self.lobby.checks),
                starts=len(self.matchmaker.starts),
                limit_ms=round(limit * 1000),
            )
        elif waited_for:
            log.info("shutdown_ready_checks_finished", ready_checks=waited_for)

    async def _final_flush(self) -> None:
        try:
            written = await self.persistence.flush()
        except StoreError as exc:
            log.error("final_flush_failed", error=str(exc), lost=self.persistence.dirty)
            return
        log.info("final_flush_done", records=written)

    async def _cleanup_loop(self) -> None:
        while True:
            # Read on every round, so that a reload's new interval applies.
            await asyncio.sleep(self.config.cleanup_interval_ms / 1000)
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
        servers = self.lobby.hosting.pool.by_session if self.lobby.hosting is not None else {}
        for session_id in [s for s in servers if self.registry.get(s) is None]:
            log.error("stale_game_server_removed", session=session_id, server=servers[session_id])
            self.matchmaker.apply(self.lobby.disconnect(session_id, now))
        dropped = self.lobby.forget(now, self.config.player_idle_ttl_ms / 1000)
        freeze_survivors()
        log.info(
            "cleanup_done",
            dropped=dropped,
            players=len(self.lobby.players),
            sessions=len(self.registry),
        )


def session_limits(config: Config) -> SessionLimits:
    return SessionLimits(
        max_frame=config.max_frame_bytes,
        max_outgoing=config.max_outgoing_bytes,
        hello_timeout=config.hello_timeout_ms / 1000,
        heartbeat_timeout=config.heartbeat_timeout_ms / 1000,
        frame_timeout=config.frame_timeout_ms / 1000,
        rate_per_s=config.rate_limit_per_s,
        rate_burst=config.rate_limit_burst,
        game_server_rate_per_s=config.game_server_rate_limit_per_s,
        game_server_rate_burst=config.game_server_rate_limit_burst,
        close_timeout=config.send_timeout_ms / 1000,
    )


async def _wait_bounded(tasks: set[asyncio.Future[None]], seconds: float) -> set[asyncio.Future[None]]:
    """Wait up to ``seconds`` for ``tasks``; return those still running."""
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return set()
    _, still_running = await asyncio.wait(pending, timeout=seconds)
    return still_running


class _Admission(asyncio.Protocol):
    """The protocol a connection starts with: it hands the transport on at once.

    The connection limits need the peer's address, which the protocol factory does
    not get. So ``connection_made`` gets the protocol from ``Server.admit`` and
    installs it before any byte is read.
    """

    __slots__ = ("_server",)

    def __init__(self, server: Server) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._server.admit(transport)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
