"""Mirror a lobby's game servers and hosted matches into records, and rebuild them.

After every batch of changes, the cluster leader writes the registered servers,
hosted matches and ended hosted matches that changed. A new leader rebuilds them,
so it goes on allocating and accepts the result of a match that runs across a
failover.
``track_hosting`` finds what changed without a scan: it gives ``Hosting`` dicts
that note every key set or deleted. A game server's requests change a hosted match
in place (acknowledge, release), so the caller marks that match itself.

Static servers are not mirrored: the configuration brings them back, and only the
slots they hold are lost (see ``restore_hosting``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import msgspec

from lobbyd.core.allocation import HostedMatch, MatchPhase
from lobbyd.core.game_servers import GameServer, registered_slot
from lobbyd.core.hosting import Hosting
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import MatchRecord, Place, PlayerRecord
from lobbyd.core.ratings import Skill
from lobbyd.core.snapshot import new_player, player_info, restored_ticket, stored_tickets
from lobbyd.protocol.cluster import EndedState, HostedState, ServerState

_V = TypeVar("_V")

RECORD_DECODER: Final = msgspec.msgpack.Decoder(MatchRecord)
_ENCODER: Final = msgspec.msgpack.Encoder()


@dataclass(slots=True)
class HostingChanges:
    """Server ids, hosted match ids and ended match ids changed since the last ``take``."""

    servers: set[str] = field(default_factory=set)
    hosted: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)

    def take(self) -> tuple[set[str], set[str], set[str]]:
        # Copied and cleared in place, because the noting dicts hold these very sets.
        taken = (set(self.servers), set(self.hosted), set(self.ended))
        for noted in (self.servers, self.hosted, self.ended):
            noted.clear()
        return taken


class NotingDict(dict[str, _V]):
    """A dict that adds every key set or deleted to ``noted``."""

    def __init__(self, noted: set[str], items: Iterable[tuple[str, _V]] = ()) -> None:
        super().__init__(items)
        self.noted = noted

    def __setitem__(self, key: str, value: _V) -> None:
        super().__setitem__(key, value)
        self.noted.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.noted.add(key)


def track_hosting(hosting: Hosting) -> HostingChanges:
    """Give ``hosting`` noting dicts for servers, matches and ended matches; return where changes are noted."""
    changes = HostingChanges()
    hosting.pool.servers = NotingDict(changes.servers, hosting.pool.servers.items())
    hosting.matches = NotingDict(changes.hosted, hosting.matches.items())
    hosting.ended = NotingDict(changes.ended, hosting.ended.items())
    return changes


def server_state(hosting: Hosting, server_id: str) -> ServerState | None:
    """Return the stored form of registered server ``server_id``, or ``None`` when it is gone or static."""
    server = hosting.pool.servers.get(server_id)
    if server is None or server.session is None:
        return None
    return ServerState(
        server.id, server.address, server.region, server.capacity, sorted(server.queues), server.session
    )


def hosted_state(lobby: Lobby, match: str) -> HostedState | None:
    """Return the stored form of the live hosted match ``match``, or ``None`` when it ended."""
    hosting = lobby.hosting
    hosted = hosting.matches.get(match) if hosting is not None else None
    if hosted is None:
        return None
    tickets = stored_tickets(lobby, hosted.tickets)
    roster = [lobby.players[player_id] for team in hosted.record.teams for player_id in team]
    return HostedState(
        record=_ENCODER.encode(hosted.record),
        tickets=tickets,
        server=hosted.server,
        session=hosted.session,
        deadline=hosted.deadline,
        phase=hosted.phase.value,
        bound=sorted(hosted.bound),
        players=[player_info(player) for player in roster],
    )


def ended_state(hosting: Hosting, match: str) -> EndedState | None:
    ended = hosting.ended.get(match)
    if ended is None:
        return None
    phase, at, server = ended
    return EndedState(match, phase.value, at, server)


def restore_hosting(
    lobby: Lobby, servers: Iterable[ServerState], hosted: Iterable[HostedState], ended: Iterable[EndedState]
) -> None:
    """Put registered servers, hosted matches and ended matches back into ``lobby``'s hosting.

    Call it after ``restore``, which adds the connected players. An offline player of
    a hosted match is added from the match's copy of their record. Static servers
    start with free slots.
    """
    hosting = lobby.hosting
    assert hosting is not None, "hosting state restored into a lobby that hosts no matches"
    for entry in servers:
        server = GameServer(entry.id, entry.address, entry.region, entry.capacity, frozenset(entry.queues))
        server.session = entry.session
        hosting.pool.add(server)

    for state in hosted:
        record = RECORD_DECODER.decode(state.record)
        for info in state.players:
            if info.id not in lobby.players:
                lobby.players[info.id] = new_player(info)
        tickets = {ticket.player.id: restored_ticket(ticket) for ticket in state.tickets}
        phase = MatchPhase(state.phase)
        match = HostedMatch(record, tickets, state.server, state.session, state.deadline, phase, set(state.bound))
        hosting.matches[record.id] = match
        owner = hosting.pool.servers.get(state.server)
        if owner is not None:
            owner.matches[record.id] = registered_slot()
        for player_id in state.bound:
            player = lobby.players[player_id]
            player.place, player.queue, player.match = Place.IN_MATCH, None, record.id

    for end in ended:
        hosting.ended[end.match] = (MatchPhase(end.phase), end.at, end.server)


PLAYER_RECORD_DECODER: Final = msgspec.msgpack.Decoder(PlayerRecord)


def refresh_ratings(lobby: Lobby, records: Iterable[PlayerRecord]) -> int:
    """Take the rated fields of each record that counts more rated games than the lobby's player.

    A new leader builds players from login-time records, which miss the results
    applied since; the store and unfinished results hold the newer ones. Returns
    how many players changed.
    """
    changed = 0
    for record in records:
        player = lobby.players.get(record.id)
        if player is None or record.games <= player.games:
            continue
        if record.mu is not None and record.sigma is not None:
            player.skill = Skill(record.mu, record.sigma)
        player.rating, player.games, player.wins = record.rating, record.games, record.wins
        changed += 1
    return changed
