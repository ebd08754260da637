"""The cluster's shared state in Redis: leader lease, presence, lobby state and streams.

Keys, all under one prefix P:

| key | type | contents |
| --- | --- | --- |
| ``P:leader`` | string with a TTL | ``NODE:TOKEN`` of the leader; the TTL is the lease |
| ``P:epoch`` | counter | the last fencing token handed out |
| ``P:node:NODE`` | string with a TTL | present while NODE is alive |
| ``P:presence`` | hash | player id to ``Presence`` (JSON): node, session, login time |
| ``P:tickets`` | hash | player id to ``TicketState`` (msgpack) |
| ``P:checks`` | hash | match id to ``CheckSnapshot`` (msgpack) |
| ``P:parties`` | hash | party id to ``PartyRecord`` (msgpack) |
| ``P:starting`` | hash | match id to ``StartingMatch`` (msgpack) |
| ``P:servers`` | hash | game server id to ``ServerState`` (msgpack) |
| ``P:hosted`` | hash | match id to ``HostedState`` (msgpack): allocating or running |
| ``P:ended`` | hash | match id to ``EndedState`` (msgpack): how a hosted match ended |
| ``P:finishing`` | hash | match id to ``FinishingMatch`` (msgpack): a result not yet stored or announced |
| ``P:requests`` | stream | ``Forward`` entries from every node to the leader |
| ``P:cursor`` | string | id of the last request entry the leader's state includes |
| ``P:inbox:NODE`` | stream | ``Delivery`` entries for NODE's sessions |

Fencing. Taking the lease increments ``P:epoch`` (which starts at Redis's clock in
milliseconds) and stores ``NODE:TOKEN`` in ``P:leader`` for the lease time. Every
write of the leader (``commit``) runs as one Lua script that first compares
``P:leader`` with the caller's ``NODE:TOKEN`` and writes nothing when they differ,
raising ``Fenced``. Redis runs scripts one at a time, so once another node holds the
lease, or the lease lapsed, no write of the old leader lands, however long it was
paused. A commit writes the state changes,
the request cursor and the deliveries they cause together, or none of them.

Every failure to reach Redis, or an answer later than ``timeout``, raises
``SharedStateError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from lobbyd.errors import SharedStateError
from lobbyd.protocol import cluster as c
from lobbyd.store.shared import Commit, Fenced, Snapshot, decode_snapshot

__all__ = ["Commit", "Fenced", "RedisState", "Snapshot"]

# Connections of one node for commands other than blocking reads. Redis runs
# commands one at a time, so more connections add no throughput, only memory.
POOL_CONNECTIONS: Final = 16

# Entries kept per stream. A node's inbox is read within milliseconds, so this only
# bounds what a stopped node leaves behind. Trimming is approximate (``~``).
INBOX_MAXLEN: Final = 100_000

# A missing epoch starts at Redis's clock in milliseconds rather than at 0, so that
# tokens keep growing when Redis comes back empty. Nodes drop a delivery whose id
# (token and sequence) they have seen, so a reused token would repeat old ids.
_ACQUIRE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000)))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""

_RENEW: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# The hashes a commit writes, in the order of their KEYS after the leader key.
COMMIT_HASHES: Final = tuple(name for name, _, _ in Commit().hashes())
_PRESENCE_KEY: Final = len(COMMIT_HASHES) + 2
_CURSOR_KEY: Final = _PRESENCE_KEY + 1
_REQUESTS_KEY: Final = _PRESENCE_KEY + 2
_FIRST_INBOX_KEY: Final = _PRESENCE_KEY + 3

# KEYS: leader, the COMMIT_HASHES, presence, cursor, requests, then one inbox per
# node. ARGV: owner, cursor ('' keeps it), then for each hash in turn a count of
# (field, value) sets and a count of deleted fields, then a count of
# (player, "NODE/SESSION") presence entries to delete if they still name that
# session, then per inbox a count of deliveries.
_COMMIT: Final = (
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('FENCED lease is not held by ' .. ARGV[1]) end
local i = 3
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[CURSOR], ARGV[2])
  redis.call('XTRIM', KEYS[REQUESTS], 'MINID', '~', ARGV[2])
end
for h = 2, PRESENCE - 1 do
  local n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HSET', KEYS[h], ARGV[i], ARGV[i + 1]); i = i + 2 end
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do redis.call('HDEL', KEYS[h], ARGV[i]); i = i + 1 end
end
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local value = redis.call('HGET', KEYS[PRESENCE], ARGV[i])
  if value then
    local where = cjson.decode(value)
    if where.node .. '/' .. where.session == ARGV[i + 1] then redis.call('HDEL', KEYS[PRESENCE], ARGV[i]) end
  end
  i = i + 2
end
for k = FIRST_INBOX, #KEYS do
  n = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n do
    redis.call('XADD', KEYS[k], 'MAXLEN', '~', 'INBOX_MAXLEN', '*', 'd', ARGV[i])
    i = i + 1
  end
end
return 1
"""
    .replace("FIRST_INBOX", str(_FIRST_INBOX_KEY))
    .replace("PRESENCE", str(_PRESENCE_KEY))
    .replace("CURSOR", str(_CURSOR_KEY))
    .replace("REQUESTS", str(_REQUESTS_KEY))
    .replace("INBOX_MAXLEN", str(INBOX_MAXLEN))
)

# KEYS: presence. ARGV: player, Presence JSON, its since. Returns {1, old} when the
# claim replaced an entry, {1} when there was none, {0, newer} when a later login holds it.
_CLAIM: Final = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and tonumber(cjson.decode(old).since) > tonumber(ARGV[3]) then return {0, old} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then return {1, old} end
return {1}
"""

# KEYS: presence. ARGV: player, node, session. Deletes the entry only if it names that session.
_RELEASE_PRESENCE: Final = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local where = cjson.decode(value)
if where.node == ARGV[2] and where.session == ARGV[3] then redis.call('HDEL', KEYS[1], ARGV[1]); return 1 end
return 0
"""


class RedisState:
    """The ``SharedState`` of one cluster, named by ``prefix``, in the Redis at ``url``."""

    def __init__(self, url: str, prefix: str, *, timeout: float = 1.0) -> None:
        self.prefix = prefix
        self.timeout = timeout
        no_retry = Retry(NoBackoff(), 0)
        # A bounded pool that makes callers wait for a free connection: a burst of
        # commits (every match of a tick starting at once) would otherwise open one
        # connection each, and redis-py fails calls past its pool size. A wait longer
        # than ``timeout`` fails like any slow command.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )
        self._pool = pool
        self._client = aioredis.Redis(connection_pool=pool)
        # Blocking stream reads wait longer than one command's deadline, so each
        # reader has a client without a socket timeout, bounded by an explicit deadline.
        # NOTE: with redis-py 8.2, cancelling an XREAD whose pool another blocked XREAD
        # shares was seen to hang, so the inbox and the request stream have one each.
        self._readers = {
            stream: aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout, retry=no_retry)
            for stream in ("inbox", "requests")
        }
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._commit = self._client.register_script(_COMMIT)
        self._claim = self._client.register_script(_CLAIM)
        self._release_presence = self._client.register_script(_RELEASE_PRESENCE)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self._client.aclose()
            # A client given its pool leaves it open on aclose, so the pool is closed here.
            await self._pool.aclose()
            for reader in self._readers.values():
                await reader.aclose()

    async def ping(self) -> None:
        async with self._call("ping"):
            await self._client.ping()

    # Leader lease.

    async def acquire_lease(self, node: str, lease_ms: int) -> int | None:
        """Take the lease if nobody holds it; return the new fencing token, or ``None``."""
        async with self._call("acquire_lease"):
            token = await self._acquire(keys=[self.key("leader"), self.key("epoch")], args=[node, lease_ms])
        return None if token is None else int(token)

    async def renew_lease(self, owner: str, lease_ms: int) -> bool:
        """Extend the lease of ``owner`` (``NODE:TOKEN``); return False when it is not held by them."""
        async with self._call("renew_lease"):
            renewed = await self._renew(keys=[self.key("leader")], args=[owner, lease_ms])
        return bool(renewed)

    async def release_lease(self, owner: str) -> None:
        async with self._call("release_lease"):
            await self._release(keys=[self.key("leader")], args=[owner])

    async def leader(self) -> str | None:
        async with self._call("leader"):
            value = await self._client.get(self.key("leader"))
        return None if value is None else _text(value)

    async def commit(self, owner: str, commit: Commit) -> None:
        """Write ``commit`` atomically if ``owner`` holds the lease; raise ``Fenced`` if not."""
        nodes = sorted(commit.deliveries)
        hashes = commit.hashes()
        keys = [
            self.key("leader"),
            *(self.key(name) for name, _, _ in hashes),
            self.key("presence"),
            self.key("cursor"),
            self.key("requests"),
            *(self.key("inbox", node) for node in nodes),
        ]
        args: list[Any] = [owner, commit.cursor or ""]
        for _, sets, deletes in hashes:
            args.append(len(sets))
            for name, value in sets.items():
                args += [name, value]
            args.append(len(deletes))
            args += sorted(deletes)
        args.append(len(commit.presence_deletes))
        for player, key in commit.presence_deletes:
            args += [player, key]
        for node in nodes:
            args.append(len(commit.deliveries[node]))
            args += commit.deliveries[node]
        try:
            async with self._call("commit"):
                await self._commit(keys=keys, args=args)
        except SharedStateError as exc:
            if "FENCED" in str(exc):
                raise Fenced(str(exc)) from exc.__cause__
            raise

    async def snapshot(self) -> Snapshot:
        """Read the presence map, every hash a commit writes, and the cursor, in one transaction."""
        async with self._call("snapshot"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(self.key("presence"))
            for name in COMMIT_HASHES:
                pipe.hvals(self.key(name))
            pipe.get(self.key("cursor"))
            presence, *values, cursor = await pipe.execute()
        return decode_snapshot(
            {player.decode(): c.PRESENCE_DECODER.decode(value) for player, value in presence.items()},
            dict(zip(COMMIT_HASHES, values, strict=True)),
            _text(cursor) if cursor else "0-0",
        )

    # Nodes and presence.

    async def refresh_node(self, node: str, ttl_ms: int) -> bool:
        # SET ... GET (Redis 6.2 and later) returns the old value in the same round
        # trip, which shows whether the mark expired or vanished since the last refresh.
        async with self._call("refresh_node"):
            earlier = await self._client.set(self.key("node", node), b"1", px=ttl_ms, get=True)
        return earlier is not None

    async def live_nodes(self, nodes: Iterable[str]) -> set[str]:
        wanted = sorted(nodes)
        if not wanted:
            return set()
        async with self._call("live_nodes"):
            values = await self._client.mget([self.key("node", node) for node in wanted])
        return {node for node, value in zip(wanted, values, strict=True) if value is not None}

    async def claim_presence(self, presence: c.Presence) -> tuple[bool, c.Presence | None]:
        """Record ``presence`` for its player unless a later login holds the entry.

        Returns (claimed, other): when claimed, ``other`` is the entry it replaced, if
        any; when not, ``other`` is the later login that keeps the entry.
        """
        value = c.PRESENCE_ENCODER.encode(presence)
        async with self._call("claim_presence"):
            reply = await self._claim(
                keys=[self.key("presence")], args=[presence.player.id, value, repr(presence.since)]
            )
        other = c.PRESENCE_DECODER.decode(reply[1]) if len(reply) > 1 else None
        return bool(reply[0]), other

    async def release_presence(self, player: str, node: str, session: str) -> None:
        async with self._call("release_presence"):
            await self._release_presence(keys=[self.key("presence")], args=[player, node, session])

    async def presence(self, player: str) -> c.Presence | None:
        async with self._call("presence"):
            value = await self._client.hget(self.key("presence"), player)
        return None if value is None else c.PRESENCE_DECODER.decode(value)

    # Streams.

    async def forward(self, entries: Sequence[bytes]) -> None:
        """Append encoded ``Forward`` entries to the request stream, in order."""
        if not entries:
            return
        async with self._call("forward"):
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                pipe.xadd(self.key("requests"), {"d": entry})
            await pipe.execute()

    async def deliver(self, node: str, entries: Sequence[bytes]) -> None:
        """Append encoded ``Delivery`` entries to ``node``'s inbox outside a leader commit."""
        async with self._call("deliver"):
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                pipe.xadd(self.key("inbox", node), {"d": entry}, maxlen=INBOX_MAXLEN, approximate=True)
            await pipe.execute()

    async def read_requests(self, after: str, block_ms: int, count: int = 1000) -> list[tuple[str, bytes]]:
        return await self._read("requests", self.key("requests"), after, block_ms, count)

    async def read_inbox(self, node: str, after: str, block_ms: int, count: int = 1000) -> list[tuple[str, bytes]]:
        return await self._read("inbox", self.key("inbox", node), after, block_ms, count)

    async def last_inbox_id(self, node: str) -> str:
        """Return the id of the newest entry of ``node``'s inbox, or ``0-0`` when it is empty."""
        async with self._call("last_inbox_id"):
            newest = await self._client.xrevrange(self.key("inbox", node), count=1)
        return _text(newest[0][0]) if newest else "0-0"

    async def _read(self, reader: str, stream: str, after: str, block_ms: int, count: int) -> list[tuple[str, bytes]]:
        """Return up to ``count`` entries after ``after``, waiting up to ``block_ms`` for one.

        ``block_ms`` of 0 or less returns at once: XREAD's own BLOCK 0 would wait forever.
        """
        block = block_ms if block_ms > 0 else None
        try:
            async with asyncio.timeout(max(block_ms, 0) / 1000 + self.timeout):
                reply: Any = await self._readers[reader].xread({stream: after}, count=count, block=block)
        except TimeoutError as exc:
            msg = f"redis xread of {stream} timed out after {block_ms / 1000 + self.timeout:g} s"
            raise SharedStateError(msg) from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            msg = f"redis xread of {stream} failed: {type(exc).__name__}: {exc}"
            raise SharedStateError(msg) from exc
        if not reply:
            return []
        _, entries = reply[0]
        return [(entry_id.decode(), fields[b"d"]) for entry_id, fields in entries]

    @contextlib.asynccontextmanager
    async def _call(self, operation: str) -> AsyncIterator[None]:
        """Bound one operation by ``timeout`` and turn every failure into ``SharedStateError``."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError as exc:
            msg = f"redis {operation} timed out after {time.monotonic() - started:.3f} s"
            raise SharedStateError(msg) from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            msg = f"redis {operation} failed: {type(exc).__name__}: {exc}"
            raise SharedStateError(msg) from exc


def _text(value: Any) -> str:
    """Return a reply value as text; the client returns bytes, as it decodes nothing."""
    return value.decode() if isinstance(value, bytes) else str(value)
