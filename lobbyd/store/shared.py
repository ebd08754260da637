"""The cluster's shared state: the interface, and an in-memory implementation.

``SharedState`` is what cluster nodes need from the place they share. It has a leader
lease with a fencing token, the presence map, and the leader's tickets, ready checks,
parties, starting matches, game servers, hosted matches, ended hosted matches and finishing
results. It also has a request stream, which the leader reads, and an inbox stream
per node.
``RedisState`` (``lobbyd.store.redis_state``) is the implementation that nodes on
several hosts use. ``MemoryState`` keeps the same state in one process, for nodes
that run in one process, such as in tests; it never loses a connection.

The rules every implementation keeps:

* ``acquire_lease`` hands out a token larger than every earlier one, and only when
  nobody holds the lease.
* ``commit`` writes all of a ``Commit`` or, when ``owner`` does not hold the lease at
  that instant, nothing, and raises ``Fenced``.
* ``claim_presence`` keeps the entry with the later ``since``.
* Stream entries have increasing ids ``MILLISECONDS-SEQUENCE``, and reads return the
  entries after a given id, in order.
* A failure to reach the state raises ``SharedStateError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lobbyd.errors import SharedStateError
from lobbyd.protocol import cluster as c


class Fenced(SharedStateError):
    """A leader's write was rejected because it no longer holds the lease."""


@dataclass(slots=True)
class Commit:
    """One atomic write of a leader: state changes, the request cursor and deliveries."""

    cursor: str | None = None
    tickets: dict[str, bytes] = field(default_factory=dict)
    ticket_deletes: set[str] = field(default_factory=set)
    checks: dict[str, bytes] = field(default_factory=dict)
    check_deletes: set[str] = field(default_factory=set)
    parties: dict[str, bytes] = field(default_factory=dict)
    party_deletes: set[str] = field(default_factory=set)
    starting: dict[str, bytes] = field(default_factory=dict)
    starting_deletes: set[str] = field(default_factory=set)
    servers: dict[str, bytes] = field(default_factory=dict)
    server_deletes: set[str] = field(default_factory=set)
    hosted: dict[str, bytes] = field(default_factory=dict)
    hosted_deletes: set[str] = field(default_factory=set)
    ended: dict[str, bytes] = field(default_factory=dict)
    ended_deletes: set[str] = field(default_factory=set)
    finishing: dict[str, bytes] = field(default_factory=dict)
    finishing_deletes: set[str] = field(default_factory=set)
    presence_deletes: list[tuple[str, str]] = field(default_factory=list)
    """(player, session key) pairs: delete the presence if it still names that session."""
    deliveries: dict[str, list[bytes]] = field(default_factory=dict)
    """Node id to encoded ``Delivery`` entries for its inbox, in order."""

    def hashes(self) -> list[tuple[str, dict[str, bytes], set[str]]]:
        """Return (hash name, fields to set, fields to delete) for every hash a commit writes."""
        return [
            ("tickets", self.tickets, self.ticket_deletes),
            ("checks", self.checks, self.check_deletes),
            ("starting", self.starting, self.starting_deletes),
            ("servers", self.servers, self.server_deletes),
            ("hosted", self.hosted, self.hosted_deletes),
            ("ended", self.ended, self.ended_deletes),
            ("finishing", self.finishing, self.finishing_deletes),
            ("parties", self.parties, self.party_deletes),
        ]

    def __bool__(self) -> bool:
        written = any(sets or deletes for _, sets, deletes in self.hashes())
        return written or bool(self.cursor or self.presence_deletes or self.deliveries)


@dataclass(slots=True)
class Snapshot:
    """Everything a new leader rebuilds its lobby from."""

    presence: dict[str, c.Presence]
    tickets: list[c.TicketState]
    checks: list[c.CheckSnapshot]
    starting: list[c.StartingMatch]
    cursor: str
    servers: list[c.ServerState] = field(default_factory=list)
    hosted: list[c.HostedState] = field(default_factory=list)
    ended: list[c.EndedState] = field(default_factory=list)
    finishing: list[c.FinishingMatch] = field(default_factory=list)
    parties: list[c.PartyRecord] = field(default_factory=list)


class SharedState(Protocol):
    prefix: str
    timeout: float
    """Seconds one call may take before it fails with ``SharedStateError``."""

    async def close(self) -> None: ...
    async def acquire_lease(self, node: str, lease_ms: int) -> int | None:
        """Take the lease if nobody holds it; return the new fencing token, or ``None``."""
    async def renew_lease(self, owner: str, lease_ms: int) -> bool:
        """Extend the lease of ``owner`` (``NODE:TOKEN``); return False when it is not held by them."""
    async def release_lease(self, owner: str) -> None: ...
    async def leader(self) -> str | None:
        """Return ``NODE:TOKEN`` of the lease holder, or ``None``."""
    async def commit(self, owner: str, commit: Commit) -> None:
        """Write ``commit`` atomically if ``owner`` holds the lease; raise ``Fenced`` if not."""
    async def snapshot(self) -> Snapshot:
        """Read the presence map, every hash a commit writes, and the cursor at one instant."""
    async def refresh_node(self, node: str, ttl_ms: int) -> bool:
        """Mark ``node`` alive for ``ttl_ms``; return whether its earlier mark was still there."""
    async def live_nodes(self, nodes: Iterable[str]) -> set[str]: ...
    async def claim_presence(self, presence: c.Presence) -> tuple[bool, c.Presence | None]:
        """Record ``presence`` unless a later login holds the entry; see ``RedisState``."""
    async def release_presence(self, player: str, node: str, session: str) -> None: ...
    async def presence(self, player: str) -> c.Presence | None: ...
    async def forward(self, entries: Sequence[bytes]) -> None: ...
    async def deliver(self, node: str, entries: Sequence[bytes]) -> None: ...
    async def read_requests(self, after: str, block_ms: int, count: int = 1000) -> list[tuple[str, bytes]]: ...
    async def read_inbox(self, node: str, after: str, block_ms: int, count: int = 1000) -> list[tuple[str, bytes]]: ...
    async def last_inbox_id(self, node: str) -> str: ...


class MemoryState:
    """A ``SharedState`` in this process's memory; several nodes of one process may share it.

    Lease and liveness lifetimes use ``time.monotonic``. Calls on a closed state raise
    ``SharedStateError``, which lets tests stand for an unreachable Redis.
    """

    def __init__(self, prefix: str = "lobbyd", *, timeout: float = 1.0) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.reachable = True
        self._lease: tuple[str, float] | None = None
        self._epoch = 0
        self._nodes: dict[str, float] = {}
        self._presence: dict[str, c.Presence] = {}
        self._hashes: dict[str, dict[str, bytes]] = {name: {} for name, _, _ in Commit().hashes()}
        self._cursor = "0-0"
        self._streams: dict[str, list[tuple[tuple[int, int], bytes]]] = {}
        self._last_id = (0, 0)
        self._appended = asyncio.Condition()

    async def close(self) -> None:
        return None

    # Lease.

    async def acquire_lease(self, node: str, lease_ms: int) -> int | None:
        self._check()
        if self._holder() is not None:
            return None
        self._epoch += 1
        self._lease = (f"{node}:{self._epoch}", time.monotonic() + lease_ms / 1000)
        return self._epoch

    async def renew_lease(self, owner: str, lease_ms: int) -> bool:
        self._check()
        if self._holder() != owner:
            return False
        self._lease = (owner, time.monotonic() + lease_ms / 1000)
        return True

    async def release_lease(self, owner: str) -> None:
        self._check()
        if self._holder() == owner:
            self._lease = None

    async def leader(self) -> str | None:
        self._check()
        return self._holder()

    async def commit(self, owner: str, commit: Commit) -> None:
        self._check()
        if self._holder() != owner:
            msg = f"FENCED lease is not held by {owner}"
            raise Fenced(msg)
        if commit.cursor:
            self._cursor = commit.cursor
        for name, sets, deletes in commit.hashes():
            table = self._hashes[name]
            table.update(sets)
            for name in deletes:
                table.pop(name, None)
        for player, key in commit.presence_deletes:
            where = self._presence.get(player)
            if where is not None and c.session_key(where.node, where.session) == key:
                del self._presence[player]
        for node, entries in commit.deliveries.items():
            self._append(f"inbox:{node}", entries)
        await self._notify()

    async def snapshot(self) -> Snapshot:
        self._check()
        hashes = {name: list(table.values()) for name, table in self._hashes.items()}
        return decode_snapshot(dict(self._presence), hashes, self._cursor)

    # Nodes and presence.

    async def refresh_node(self, node: str, ttl_ms: int) -> bool:
        self._check()
        now = time.monotonic()
        existed = self._nodes.get(node, 0.0) > now
        self._nodes[node] = now + ttl_ms / 1000
        return existed

    async def live_nodes(self, nodes: Iterable[str]) -> set[str]:
        self._check()
        now = time.monotonic()
        return {node for node in nodes if self._nodes.get(node, 0.0) > now}

    async def claim_presence(self, presence: c.Presence) -> tuple[bool, c.Presence | None]:
        self._check()
        old = self._presence.get(presence.player.id)
        if old is not None and old.since > presence.since:
            return False, old
        self._presence[presence.player.id] = presence
        return True, old

    async def release_presence(self, player: str, node: str, session: str) -> None:
        self._check()
        where = self._presence.get(player)
        if where is not None and (where.node, where.session) == (node, session):
            del self._presence[player]

    async def presence(self, player: str) -> c.Presence | None:
        self._check()
        return self._presence.get(player)

    # Streams.

    async def forward(self, entries: Sequence[bytes]) -> None:
        self._check()
        self._append("requests", entries)
        await self._notify()

    async def deliver(self, node: str, entries: Sequence[bytes]) -> None:
        self._check()
        self._append(f"inbox:{node}", entries)
        await self._notify()

    async def read_requests(self, after: str, block_ms: int, count: int = 1000) -> list[tuple[str, bytes]]:
        return await self._read("requests", after, block_ms, count)

    async def read_inbox(self, node: str, after: str, block_ms: int, count: int = 1000) -> list[tuple[str, bytes]]:
        return await self._read(f"inbox:{node}", after, block_ms, count)

    async def last_inbox_id(self, node: str) -> str:
        self._check()
        entries = self._streams.get(f"inbox:{node}")
        return _format_id(entries[-1][0]) if entries else "0-0"

    # Internals.

    def _check(self) -> None:
        if not self.reachable:
            msg = "memory state is unreachable"
            raise SharedStateError(msg)

    def _holder(self) -> str | None:
        if self._lease is None or self._lease[1] <= time.monotonic():
            return None
        return self._lease[0]

    def _append(self, stream: str, entries: Sequence[bytes]) -> None:
        target = self._streams.setdefault(stream, [])
        for entry in entries:
            milliseconds = int(time.time() * 1000)
            last_ms, last_seq = self._last_id
            self._last_id = (milliseconds, 0) if milliseconds > last_ms else (last_ms, last_seq + 1)
            target.append((self._last_id, entry))

    async def _notify(self) -> None:
        async with self._appended:
            self._appended.notify_all()

    async def _read(self, stream: str, after: str, block_ms: int, count: int) -> list[tuple[str, bytes]]:
        self._check()
        start = _parse_id(after)
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        while True:
            found = [(_format_id(i), entry) for i, entry in self._streams.get(stream, []) if i > start][:count]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            async with self._appended:
                try:
                    async with asyncio.timeout(remaining):
                        await self._appended.wait()
                except TimeoutError:
                    return []
            self._check()


def decode_snapshot(presence: dict[str, c.Presence], hashes: dict[str, list[bytes]], cursor: str) -> Snapshot:
    """Build a ``Snapshot`` from the presence map, each hash's encoded values by name, and the cursor."""
    return Snapshot(
        presence=presence,
        tickets=[c.TICKET_DECODER.decode(value) for value in hashes["tickets"]],
        checks=[c.CHECK_DECODER.decode(value) for value in hashes["checks"]],
        starting=[c.STARTING_DECODER.decode(value) for value in hashes["starting"]],
        cursor=cursor,
        servers=[c.SERVER_DECODER.decode(value) for value in hashes["servers"]],
        hosted=[c.HOSTED_DECODER.decode(value) for value in hashes["hosted"]],
        ended=[c.ENDED_DECODER.decode(value) for value in hashes["ended"]],
        finishing=[c.FINISHING_DECODER.decode(value) for value in hashes["finishing"]],
        parties=[c.PARTY_DECODER.decode(value) for value in hashes["parties"]],
    )


def _parse_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def _format_id(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"
