"""The admin commands, as plain data in and out.

A command is a msgspec Struct tagged by its ``command`` field. ``execute`` runs one
against the daemon and returns a JSON-ready result, or raises ``AdminError`` with a
message for the operator. Only ``player`` awaits (it may read the store); every
other command is one synchronous step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from lobbyd.core.model import Place
from lobbyd.server import logs

if TYPE_CHECKING:
    from lobbyd.server.app import Server

log = logs.get(__name__)


class AdminError(Exception):
    """A command that cannot be carried out; the message goes to the operator."""


class _Command(msgspec.Struct, tag_field="command", forbid_unknown_fields=True, frozen=True):
    pass


class Status(_Command, tag="status", frozen=True):
    pass


class Queues(_Command, tag="queues", frozen=True):
    pass


class ShowPlayer(_Command, tag="player", frozen=True):
    player: str


class Kick(_Command, tag="kick", frozen=True):
    player: str


class Drain(_Command, tag="drain", frozen=True):
    pass


class Resume(_Command, tag="resume", frozen=True):
    pass


class SetLogLevel(_Command, tag="log_level", frozen=True):
    level: Literal["debug", "info", "warning", "error"]


AdminCommand = Status | Queues | ShowPlayer | Kick | Drain | Resume | SetLogLevel


async def execute(server: Server, command: AdminCommand) -> Any:
    if isinstance(command, ShowPlayer):
        return await show_player(server, command.player)
    if isinstance(command, Status):
        return status(server)
    if isinstance(command, Queues):
        return queues(server)
    if isinstance(command, Kick):
        return kick(server, command.player)
    if isinstance(command, Drain | Resume):
        return set_draining(server, isinstance(command, Drain))
    return set_log_level(command.level)


def status(server: Server) -> dict[str, Any]:
    reload = server.reloader.last
    return {
        "version": version("lobbyd"),
        "pid": os.getpid(),
        "uptime_s": round(time.time() - server.metrics.started_at, 1),
        "listen": server.listen_addresses,
        "metrics": server.metrics_address,
        "sessions": len(server.registry),
        "sessions_by_framing": dict(sorted(server.registry.by_framing().items())),
        "queued_players": sum(len(tickets) for tickets in server.lobby.queues.values()),
        "ready_checks": len(server.lobby.checks),
        "matches_started": sum(server.metrics.matches_started.values()),
        "draining": server.draining,
        "log_level": logs.current_level(),
        "loop_lag_ms": round(server.metrics.last_loop_lag * 1000, 1),
        "last_reload": dataclasses.asdict(reload) if reload else None,
    }


def queues(server: Server) -> list[dict[str, Any]]:
    now = time.time()
    checks_by_queue: dict[str, int] = {}
    for check in server.lobby.checks.values():
        checks_by_queue[check.queue] = checks_by_queue.get(check.queue, 0) + 1
    rows = []
    for name, rules in sorted(server.lobby.rules.items()):
        tickets = server.lobby.queues[name]
        oldest = min((ticket.waiting_since for ticket in tickets.values()), default=None)
        rows.append(
            {
                "queue": name,
                "team_count": rules.team_count,
                "team_size": rules.team_size,
                "players": len(tickets),
                "oldest_wait_s": round(now - oldest, 1) if oldest is not None else None,
                "ready_checks": checks_by_queue.get(name, 0),
            }
        )
    return rows


async def show_player(server: Server, player_id: str) -> dict[str, Any]:
    player = server.lobby.players.get(player_id)
    if player is None:
        record = await server.load_player(player_id)
        if record is None:
            msg = f"player {player_id!r} not found: never seen by this server"
            raise AdminError(msg)
        return {
            "player": record.id,
            "name": record.name,
            "rating": record.rating,
            "online": False,
            "first_seen": record.first_seen,
            "last_seen": record.last_seen,
        }

    session = server.registry.get(player.session) if player.session else None
    ticket = server.lobby.queues[player.queue].get(player.id) if player.queue else None
    return {
        "player": player.id,
        "name": player.name,
        "rating": player.rating,
        "online": session is not None,
        "session": player.session,
        "peer": session.peer if session else None,
        "framing": session.framing.value if session else None,
        "place": player.place.value,
        "queue": player.queue if player.place is Place.QUEUED else None,
        "waiting_s": round(time.time() - ticket.waiting_since, 1) if ticket else None,
        "match": player.match,
        "first_seen": player.first_seen,
        "last_seen": player.last_seen,
    }


def kick(server: Server, player_id: str) -> dict[str, Any]:
    player = server.lobby.players.get(player_id)
    session = server.registry.get(player.session) if player and player.session else None
    if session is None:
        msg = f"player {player_id!r} is not connected"
        raise AdminError(msg)
    session.log.info("player_kicked", reason="admin")
    session.kick("admin")
    return {"player": player_id, "session": session.id, "kicked": True}


def set_draining(server: Server, draining: bool) -> dict[str, Any]:
    if not server.matchmaker.forming:
        msg = "the server is shutting down: it takes no new queue entries either way"
        raise AdminError(msg)
    server.matchmaker.draining = draining
    log.info("drain_started" if draining else "drain_ended")
    server.notifier.status(server.status_line())
    return {"draining": draining}


def set_log_level(level: str) -> dict[str, Any]:
    # Logged before the change, so that the line shows even when the new level hides it.
    log.warning("log_level_changed", old=logs.current_level(), new=level, source="admin")
    logs.set_level(level)
    return {"log_level": level}
