"""Role and latency queues over real loopback sockets, in both framings.

Ten players with roles fill a 5v5 role queue, and each team gets every role once in
``match_start``. Bad ``roles`` and ``latency`` fields get ``invalid_field`` naming the
field, and the session stays open. A latency queue allocates its match on the game
server of the region its players reach.
"""

from __future__ import annotations

from typing import Any

import pytest

from lobbyd.client import LobbyClient
from tests.conftest import ClientFactory, ServerFactory
from tests.test_game_servers import GS_ADDRESS, HOSTED, SERVER_SECRET

ROLES = ["top", "jungle", "mid", "bot", "support"]
QUEUES: dict[str, Any] = {
    "queues": {
        "ranked": {"team_size": 5, "window_start": 1000.0, "roles": ROLES},
        "near": {
            "team_size": 1,
            "window_start": 1000.0,
            "latency_steps": [{"after_s": 0, "limit": 60}, {"after_s": 30, "limit": 150}],
        },
    }
}


@pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])
async def test_role_queue_5v5(connect: ClientFactory, start_server: ServerFactory, json_lines: bool) -> None:
    server = await start_server(**QUEUES)
    clients: list[LobbyClient] = []
    # Two players want each role; the second of each pair also takes the next one.
    for index in range(10):
        client = await connect(f"p{index}", json_lines=json_lines)
        wanted = [ROLES[index % 5]] if index < 5 else [ROLES[index % 5], ROLES[(index + 1) % 5]]
        await client.request("join_queue", queue="ranked", roles=wanted)
        await client.recv_type("queued")
        clients.append(client)

    found = [await client.recv_type("match_found") for client in clients]
    match = found[0]["match"]
    for client in clients:
        await client.request("accept", match=match)
    starts = [await client.recv_type("match_start") for client in clients]

    teams = starts[0]["teams"]
    role_of = {f"p{index}": start["role"] for index, start in enumerate(starts)}
    for team in teams:
        assert sorted(role_of[player] for player in team) == sorted(ROLES)
    for index, start in enumerate(starts):
        assert start["role"] == ROLES[index % 5]
        assert "autofilled" not in start
        assert start["region"] == "default"
        assert found[index]["role"] == start["role"]

    stored = await server.server.store.load_match(match)
    assert stored is not None
    assert stored.explanation is not None
    expected = {player: {"role": role, "autofilled": False} for player, role in role_of.items()}
    assert stored.explanation["roles"] == expected


BAD_JOINS = [
    ({"roles": ["top", "wizard"]}, "roles"),
    ({"roles": ["top", "top"]}, "roles"),
    ({"roles": "top"}, "roles"),
    ({"roles": [1, 2]}, "roles"),
    ({"latency": {"eu": -5}}, "latency"),
    ({"latency": {"eu": "fast"}}, "latency"),
    ({"latency": ["eu", 20]}, "latency"),
    ({"party_roles": {"nobody": ["top"]}}, "party_roles"),
]


@pytest.mark.parametrize("json_lines", [False, True], ids=["binary", "json"])
@pytest.mark.parametrize(("fields", "name"), BAD_JOINS, ids=[f"{name}-{i}" for i, (_, name) in enumerate(BAD_JOINS)])
async def test_bad_join_fields_rejected(
    connect: ClientFactory, start_server: ServerFactory, json_lines: bool, fields: dict[str, Any], name: str
) -> None:
    await start_server(**QUEUES)
    client = await connect("alice", json_lines=json_lines)

    rid = await client.request("join_queue", queue="ranked", **fields)
    error = await client.recv_type("error")

    assert error["code"] == "invalid_field"
    assert error["rid"] == rid
    assert name in error["message"]
    # The session stays open and can still queue.
    await client.request("join_queue", queue="ranked", roles=["mid"])
    assert (await client.recv_type("queued"))["queue"] == "ranked"


async def test_latency_queue_allocates_in_chosen_region(connect: ClientFactory, start_server: ServerFactory) -> None:
    await start_server(**QUEUES, **HOSTED)
    servers = {}
    for server_id, region in (("gs-eu", "eu"), ("gs-us", "us")):
        game_server = await connect()
        await game_server.register(server_id, SERVER_SECRET, GS_ADDRESS, ["near"], region=region)
        servers[region] = game_server
    players = []
    for name, latency in (("alice", {"eu": 20, "us": 45}), ("bob", {"eu": 55, "us": 30})):
        player = await connect(name)
        await player.request("join_queue", queue="near", latency=latency)
        await player.recv_type("queued")
        players.append(player)

    match = (await players[0].recv_type("match_found"))["match"]
    await players[1].recv_type("match_found")
    for player in players:
        await player.request("accept", match=match)

    # Worst latency: eu 55 ms, us 45 ms, both under the first limit of 60 ms.
    allocate = await servers["us"].recv_type("allocate")
    assert allocate["region"] == "us"
    await servers["us"].request("allocated", match=allocate["match"])
    for player in players:
        start = await player.recv_type("match_start")
        assert start["region"] == "us"
        assert start["server"] == GS_ADDRESS
    with pytest.raises(TimeoutError):
        await servers["eu"].recv_type("allocate", timeout=0.3)
