"""The game servers lobbyd may place matches on, and which of them has room.

A server is either registered (a connected game-server session that acknowledges
allocations and reports results) or static (an address from the configuration that
never talks to lobbyd). Each holds ``capacity`` concurrent matches. Allocation picks,
among the servers in the queue's region that host the queue and have a free slot, the
least loaded one: lowest share of capacity in use, then fewest matches, then id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StaticServer:
    """A game server from the configuration's static pool."""

    address: str
    capacity: int
    queues: frozenset[str]
    region: str = "default"


@dataclass(slots=True)
class GameServer:
    """A game server and the matches it holds a slot for.

    ``matches`` maps each match to when its slot frees by itself: infinity on a
    registered server, where the match ends by a result or the server's loss, and
    a fixed time on a static server, which cannot say when a match ends.
    """

    id: str
    address: str
    region: str
    capacity: int
    queues: frozenset[str]
    session: str | None = None
    """The registered server's session; None for a static server."""
    matches: dict[str, float] = field(default_factory=dict)
    resting_until: float = 0.0
    """Until this time (the lobby's clock) the server takes no new match: it refused or
    missed an allocation, and asking it again at once would fail the same way."""

    @property
    def static(self) -> bool:
        return self.session is None

    def load_key(self) -> tuple[float, int, str]:
        return (len(self.matches) / self.capacity, len(self.matches), self.id)

    def can_host(self, queue: str, region: str) -> bool:
        return self.has_room() and queue in self.queues and self.region == region

    def has_room(self) -> bool:
        """True when the server has a free slot and is not resting after a failed allocation."""
        return len(self.matches) < self.capacity and self.resting_until == 0.0


class GameServerPool:
    """Every known game server, by id and by session."""

    def __init__(self, static: Iterable[StaticServer] = ()) -> None:
        self.servers: dict[str, GameServer] = {}
        self.by_session: dict[str, str] = {}
        for entry in static:
            # A static server's id is its address, which the configuration keeps unique.
            self.servers[entry.address] = GameServer(
                entry.address, entry.address, entry.region, entry.capacity, entry.queues
            )

    def __iter__(self) -> Iterator[GameServer]:
        return iter(self.servers.values())

    def of_session(self, session: str) -> GameServer | None:
        server_id = self.by_session.get(session)
        return self.servers[server_id] if server_id is not None else None

    def add(self, server: GameServer) -> None:
        """Add a registered server; the caller has removed any earlier one of the same id."""
        assert server.session is not None
        self.servers[server.id] = server
        self.by_session[server.session] = server.id

    def remove(self, server: GameServer) -> None:
        del self.servers[server.id]
        if server.session is not None:
            del self.by_session[server.session]

    def pick(self, queue: str, region: str) -> GameServer | None:
        """Return the least loaded server that can host a match of ``queue`` in ``region``."""
        candidates = [server for server in self.servers.values() if server.can_host(queue, region)]
        return min(candidates, key=GameServer.load_key, default=None)

    def expire_static_slots(self, now: float) -> list[str]:
        """Free static-server slots whose time is up; return their match ids."""
        freed: list[str] = []
        for server in self.servers.values():
            for match in [match for match, until in server.matches.items() if until <= now]:
                del server.matches[match]
                freed.append(match)
        return freed


def registered_slot() -> float:
    """Return the free time of a registered server's slot: never by itself."""
    return math.inf
