"""Record the queue events of a running daemon for ``lobbyd replay``.

The matchmaker loop hands every domain event (``fx.Event``) to ``observe``, which
turns the ones that matter for matchmaking into recording events and buffers them as
encoded lines. ``run`` appends the buffer to the file every flush interval through
``asyncio.to_thread``, so the event loop never waits on the disk, and ``close``
writes what is left at shutdown. The file is opened for appending: a restarted
daemon adds a new header and its events after the old ones.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

from lobbyd.core import effects as fx
from lobbyd.core.lobby import Lobby
from lobbyd.server import logs
from lobbyd.tuning import events as ev

# Lines held in memory while the disk is slower than the events. Past this the
# newest events are dropped and counted, so a stuck disk cannot exhaust memory.
MAX_BUFFERED_LINES: Final = 200_000

log = logs.get(__name__)


class EventRecorder:
    def __init__(self, path: Path, interval: float, tick_interval: float) -> None:
        self.path = path
        self.interval = interval
        self.dropped = 0
        header = ev.Header(source="daemon", started_at=round(time.time(), 3), tick_interval_s=tick_interval)
        self._lines: list[bytes] = [ev.encode(header)]

    def observe(self, effect: fx.Event, lobby: Lobby, now: float) -> None:
        """Buffer the recording event for ``effect``, if it has one; ``lobby`` supplies the ratings."""
        event = to_event(effect, lobby, round(now, 6))
        if event is None:
            return
        if len(self._lines) >= MAX_BUFFERED_LINES:
            if self.dropped == 0:
                log.warning("recording_buffer_full", path=str(self.path), lines=len(self._lines))
            self.dropped += 1
            return
        self._lines.append(ev.encode(event))

    async def run(self) -> None:
        """Append the buffered lines every ``interval`` seconds until cancelled."""
        log.info("recording_started", path=str(self.path))
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            await asyncio.to_thread(_append, self.path, b"".join(lines))
        except OSError as exc:
            # The lines are lost rather than retried: a recording with a gap is still
            # useful, and holding them could grow memory while the disk stays broken.
            log.error("recording_write_failed", path=str(self.path), error=str(exc), lines=len(lines))

    async def close(self) -> None:
        await self.flush()
        log.info("recording_stopped", path=str(self.path), dropped=self.dropped)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


def to_event(effect: fx.Event, lobby: Lobby, now: float) -> ev.Event | None:
    """Return the recording event for a lobby event, or None for events replays do not need."""
    fields = effect.fields
    player = str(fields.get("player") or "")
    match = str(fields.get("match") or "")
    reason = fields.get("reason")
    if effect.name == "queue_joined":
        return _join(lobby, player, str(fields["queue"]), now)
    if effect.name == "queue_left" and reason == "requested":
        return ev.Leave(t=now, player=player)
    if effect.name == "queue_left" and reason == "disconnected":
        return ev.Disconnect(t=now, player=player)
    if effect.name == "party_left" and reason == "disconnected":
        return ev.Disconnect(t=now, player=player)
    if effect.name == "match_found":
        players = fields.get("players")
        names = [str(name) for name in players] if isinstance(players, list) else []
        return ev.Offer(t=now, match=match, queue=str(fields["queue"]), players=names)
    if effect.name == "match_accepted":
        return ev.Accept(t=now, player=player, match=match)
    if effect.name == "match_cancelled" and reason == "declined" and player:
        return ev.Decline(t=now, player=player, match=match)
    if effect.name == "match_cancelled" and reason == "disconnected" and player:
        return ev.Disconnect(t=now, player=player, match=match)
    return None


def _join(lobby: Lobby, leader: str, queue: str, now: float) -> ev.Join:
    party_id = lobby.players[leader].party
    party = lobby.parties.parties.get(party_id) if party_id is not None else None
    ticket = lobby.queues[queue].get(leader)
    prefs: dict[str, tuple[str, ...]] = {}
    if ticket is not None and ticket.role_prefs:
        prefs = dict(zip(ticket.players, ticket.role_prefs, strict=True))
    members = [_member(lobby, member, prefs) for member in (party.members[1:] if party is not None else [])]
    first = _member(lobby, leader, prefs)
    # NOTE: a queue without a latency limit keeps no latency on its tickets, so its
    # recording cannot be replayed against rules that add one.
    latency = dict(ticket.latency) if ticket is not None and ticket.latency else {}
    return ev.Join(
        t=now,
        player=leader,
        queue=queue,
        rating=first.rating,
        mu=first.mu,
        sigma=first.sigma,
        members=members,
        roles=first.roles,
        latency=latency,
    )


def _member(lobby: Lobby, player_id: str, prefs: dict[str, tuple[str, ...]]) -> ev.Member:
    player = lobby.players[player_id]
    skill = player.skill
    return ev.Member(
        player=player_id,
        rating=player.rating,
        mu=skill.mu if skill is not None else None,
        sigma=skill.sigma if skill is not None else None,
        roles=list(prefs.get(player_id, ())),
    )
