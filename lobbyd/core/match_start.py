"""The ``match_start`` message a player of a started match receives."""

from __future__ import annotations

from lobbyd.core.model import MatchRecord
from lobbyd.protocol import messages as m


def match_start(record: MatchRecord, player: str, server: str | None = None, ticket: str | None = None) -> m.MatchStart:
    """Return the ``match_start`` of ``record`` for ``player``: their team, role and the region."""
    team = next(index for index, members in enumerate(record.teams) if player in members)
    given = record.roles.get(player) if record.roles is not None else None
    return m.MatchStart(
        match=record.id,
        queue=record.queue,
        team=team,
        teams=[list(members) for members in record.teams],
        ratings=[list(ratings) for ratings in record.ratings],
        server=server,
        ticket=ticket,
        region=record.region,
        role=given.role if given is not None else None,
        autofilled=given is not None and given.autofilled,
    )
