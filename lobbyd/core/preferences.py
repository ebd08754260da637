"""Check the role and latency fields of a ``join_queue`` against the queue they are for.

The codec has already checked their types and bounds for wire requests. These checks
need the queue's rules, and they run again on every call of ``Lobby.join_queue``, so a
driver that calls the core directly gets the same errors. Each error is
``InvalidField`` and names the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from lobbyd.core.model import QueueRules
from lobbyd.core.roles import SlotMatching, allowed_roles
from lobbyd.errors import InvalidField
from lobbyd.protocol.messages import MAX_LATENCY_MS, MAX_LATENCY_REGIONS


def check_roles(rules: QueueRules, roles: Sequence[str], field: str, rid: int | None) -> tuple[str, ...]:
    """Return ``roles`` as a tuple when each is one of the queue's roles and listed once."""
    if not roles:
        return ()
    if not rules.roles:
        msg = f"{field}: queue {rules.name!r} assigns no roles; omit {field}"
        raise InvalidField(msg, rid=rid)
    unknown = [role for role in roles if role not in rules.roles]
    if unknown:
        msg = f"{field}: {unknown[0]!r} is not a role of queue {rules.name!r}, which has {', '.join(rules.roles)}"
        raise InvalidField(msg, rid=rid)
    repeated = sorted({role for role in roles if roles.count(role) > 1})
    if repeated:
        msg = f"{field}: {repeated[0]!r} is listed more than once; list each role once, most wanted first"
        raise InvalidField(msg, rid=rid)
    return tuple(roles)


def check_latency(rules: QueueRules, latency: Mapping[str, float] | None, rid: int | None) -> dict[str, float] | None:
    """Return the report limited to the regions the queue may host in; None when the queue ignores it.

    A queue without a latency limit accepts any valid report and ignores it. A queue
    with one requires a report that names at least one region it may host in.
    """
    if latency is not None:
        _check_values(latency, rid)
    if rules.latency_steps is None:
        return None
    kept = {region: float(ms) for region, ms in (latency or {}).items() if not rules.regions or region in rules.regions}
    if kept:
        return kept
    where = f"one of {', '.join(rules.regions)}" if rules.regions else "at least one region"
    msg = f"latency: queue {rules.name!r} hosts each match where its players' latency is low; report {where}"
    raise InvalidField(msg, rid=rid)


def check_party_roles(
    rules: QueueRules,
    leader: str,
    members: Iterable[str],
    leader_roles: tuple[str, ...],
    party_roles: Mapping[str, Sequence[str]] | None,
    rid: int | None,
) -> tuple[tuple[str, ...], ...]:
    """Return every member's preferred roles in ``members`` order, the leader's from ``roles``.

    ``party_roles`` holds the other members' lists by player id. Without autofill, the
    members' lists must allow distinct roles, since a party plays on one team.
    """
    members = list(members)
    party_roles = party_roles or {}
    strangers = sorted(set(party_roles) - set(members[1:]))
    if strangers:
        msg = (
            f"party_roles: {strangers[0]!r} is not another member of the party of {leader!r}; "
            "the leader's roles go in roles"
        )
        raise InvalidField(msg, rid=rid)
    prefs = [leader_roles]
    for member in members[1:]:
        prefs.append(check_roles(rules, party_roles.get(member, ()), f"party_roles.{member}", rid))

    if rules.roles and rules.autofill_after is None:
        allowed = [allowed_roles(listed, rules.roles, 0.0, None) for listed in prefs]
        if SlotMatching(1).add(*allowed) is None:
            msg = "party_roles: the members' roles overlap so that no two can differ; a party plays on one team"
            raise InvalidField(msg, rid=rid)
    return tuple(prefs) if any(prefs) else ()


def _check_values(latency: Mapping[str, float], rid: int | None) -> None:
    """Check what the codec checks on the wire, for callers that skip it."""
    if len(latency) > MAX_LATENCY_REGIONS:
        msg = f"latency: {len(latency)} regions is more than the {MAX_LATENCY_REGIONS} a report may hold"
        raise InvalidField(msg, rid=rid)
    for region, ms in latency.items():
        # NaN fails the range test too, as every comparison with it is false.
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 <= ms <= MAX_LATENCY_MS:
            msg = f"latency.{region}: expected milliseconds from 0 to {MAX_LATENCY_MS:g}, got {ms!r}"
            raise InvalidField(msg, rid=rid)
