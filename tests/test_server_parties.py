"""Parties over real loopback sockets: forming, queueing, and members leaving."""

from __future__ import annotations

from typing import Any

from lobbyd.client import LobbyClient
from tests.conftest import ClientFactory, ServerFactory

SQUAD_QUEUES: dict[str, Any] = {"queues": {"squad": {"team_count": 2, "team_size": 2, "party_sizes": [1, 2]}}}


async def _form_party(connect: ClientFactory, leader: str, member: str) -> tuple[LobbyClient, LobbyClient, str]:
    lead = await connect(leader)
    other = await connect(member)
    rid = await lead.request("create_party")
    created = await lead.recv_type("party")
    assert created["rid"] == rid
    party = created["party"]

    await lead.request("invite_to_party", player=member)
    invite = await other.recv_type("party_invite")
    assert invite == {"type": "party_invite", "party": party, "leader": leader, "members": [leader]}
    await lead.recv_type("party")

    rid = await other.request("join_party", party=party)
    joined = await other.recv_type("party")
    assert joined["rid"] == rid
    assert joined["members"] == [leader, member]
    assert (await lead.recv_type("party"))["reason"] == "joined"
    return lead, other, party


async def test_party_queues_and_plays_together(connect: ClientFactory, start_server: ServerFactory) -> None:
    await start_server(**SQUAD_QUEUES)
    lead, member, _ = await _form_party(connect, "pa", "pb")
    solos = [await connect(name) for name in ("sc", "sd")]

    await lead.request("join_queue", queue="squad")
    assert (await lead.recv_type("queued"))["queue"] == "squad"
    assert (await member.recv_type("queued"))["queue"] == "squad"
    for solo in solos:
        await solo.request("join_queue", queue="squad")
        await solo.recv_type("queued")

    everyone = [lead, member, *solos]
    match = (await lead.recv_type("match_found"))["match"]
    for client in everyone[1:]:
        assert (await client.recv_type("match_found"))["match"] == match
    for client in everyone:
        await client.request("accept", match=match)
    starts = [await client.recv_type("match_start") for client in everyone]

    teams = starts[0]["teams"]
    assert sorted(teams[starts[0]["team"]]) == ["pa", "pb"]
    assert starts[1]["team"] == starts[0]["team"]


async def test_member_leaving_queue_tells_party(connect: ClientFactory, start_server: ServerFactory) -> None:
    await start_server(**SQUAD_QUEUES)
    lead, member, party = await _form_party(connect, "qa", "qb")
    await lead.request("join_queue", queue="squad")
    await lead.recv_type("queued")
    await member.recv_type("queued")

    await member.request("leave_party")
    left = await member.recv_type("party_left")
    removed = await lead.recv_type("left_queue")
    roster = await lead.recv_type("party")

    assert left["party"] == party
    assert removed == {"type": "left_queue", "queue": "squad", "reason": "party_changed"}
    assert roster["members"] == ["qa"]
    assert roster["reason"] == "left"


async def test_member_leaving_ready_check(connect: ClientFactory, start_server: ServerFactory) -> None:
    await start_server(**SQUAD_QUEUES)
    lead, member, _ = await _form_party(connect, "ra", "rb")
    solos = [await connect(name) for name in ("rc", "rd")]
    await lead.request("join_queue", queue="squad")
    for solo in solos:
        await solo.request("join_queue", queue="squad")
    match = (await lead.recv_type("match_found"))["match"]
    for client in (member, *solos):
        await client.recv_type("match_found")
    await solos[0].request("accept", match=match)
    await solos[0].recv_type("accepted")

    await member.request("leave_party")

    for client in (lead, member):
        cancelled = await client.recv_type("match_cancelled")
        assert (cancelled["reason"], cancelled["requeued"]) == ("party_changed", False)
    accepted_solo = await solos[0].recv_type("match_cancelled")
    assert accepted_solo["requeued"] is True
    # The rest of the party may queue again, without the member who left.
    await lead.request("join_queue", queue="squad")
    assert (await lead.recv_type("queued"))["queue"] == "squad"


async def test_non_leader_join_queue_rejected(connect: ClientFactory, start_server: ServerFactory) -> None:
    await start_server(**SQUAD_QUEUES)
    _, member, _ = await _form_party(connect, "na", "nb")

    rid = await member.request("join_queue", queue="squad")
    error = await member.recv_type("error")

    assert error["code"] == "not_party_leader"
    assert error["rid"] == rid


async def test_default_queues_take_no_parties(connect: ClientFactory) -> None:
    leader = await connect("ann")
    await connect("ben")
    await leader.request("create_party")
    await leader.recv_type("party")

    rid = await leader.request("invite_to_party", player="ben")
    error = await leader.recv_type("error")

    assert (error["code"], error["rid"]) == ("party_full", rid)
    assert "has 1 member and cannot grow: no queue takes parties of 2 or more players" in error["message"]
