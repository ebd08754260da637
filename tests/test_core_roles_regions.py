"""Unit tests of role and region queues through ``Lobby``: grouping, messages, records and allocation.

Every test drives the lobby with literal times and match ids m1, m2, ...
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import pytest

from lobbyd.core import effects as fx
from lobbyd.core.expansion import Expansion
from lobbyd.core.hosting import HostingSettings
from lobbyd.core.lobby import Lobby
from lobbyd.core.model import LobbySettings, Place, PlayerRecord, QueueRules
from lobbyd.core.roles import RoleAssignment
from lobbyd.errors import InvalidField
from lobbyd.protocol import messages as m

FIVE = ("top", "jungle", "mid", "bot", "support")
TRIO = ("tank", "healer", "damage")
LATENCY = Expansion.of((0, 60), (20, 100), (60, 150))
QUEUES = {
    "ranked": QueueRules("ranked", team_size=5, window_start=1000.0, roles=FIVE),
    "trio": QueueRules("trio", team_size=3, window_start=1000.0, roles=TRIO, autofill_after=30.0),
    "trio3": QueueRules("trio3", team_count=3, team_size=3, window_start=1000.0, roles=TRIO),
    "near": QueueRules("near", team_size=1, window_start=1000.0, latency_steps=LATENCY),
    "near_eu": QueueRules("near_eu", team_size=1, latency_steps=LATENCY, regions=("eu",)),
    "squad": QueueRules("squad", team_size=3, window_start=1000.0, roles=TRIO, party_sizes=(1, 2)),
    "plain": QueueRules("plain", team_size=1),
}
SETTINGS = LobbySettings(ready_timeout=10.0, heartbeat_ms=10_000, finished_ttl=300.0)


def new_lobby(hosting: HostingSettings | None = None) -> Lobby:
    counter = itertools.count(1)
    return Lobby(QUEUES, SETTINGS, lambda: f"m{next(counter)}", hosting)


def login(lobby: Lobby, player: str, rating: int = 1500) -> str:
    lobby.connect(f"s-{player}", PlayerRecord(player, player.upper(), rating, 0.0, 0.0), player, None, 0.0)
    return f"s-{player}"


def join(
    lobby: Lobby,
    player: str,
    queue: str,
    now: float = 0.0,
    roles: Sequence[str] = (),
    latency: Mapping[str, float] | None = None,
) -> None:
    lobby.join_queue(login(lobby, player), queue, now, roles=roles, latency=latency)


def offers(effects: Iterable[fx.Effect]) -> list[fx.OfferMatch]:
    return [effect for effect in effects if isinstance(effect, fx.OfferMatch)]


def found_by_player(offer: fx.OfferMatch) -> dict[str, m.MatchFound]:
    found: dict[str, m.MatchFound] = {}
    for send in offer.sends:
        assert isinstance(send.message, m.MatchFound)
        found[send.session.removeprefix("s-")] = send.message
    return found


def start(lobby: Lobby, match: str, now: float) -> list[fx.Effect]:
    effects: list[fx.Effect] = []
    for player in lobby.checks[match].players:
        effects = lobby.accept(f"s-{player}", match, now)
    return effects


# Roles.


def test_each_team_gets_every_role() -> None:
    lobby = new_lobby()
    # Two players want each role, in an order that does not group them by team.
    for index, role in enumerate(FIVE * 2):
        join(lobby, f"p{index}", "ranked", roles=[role], now=index / 100)

    (offer,) = offers(lobby.tick(1.0))

    check = lobby.checks[offer.match]
    for team in check.teams:
        assert sorted(check.roles[player].role for player in team) == sorted(FIVE)
    for player, given in check.roles.items():
        assert given == RoleAssignment(FIVE[int(player[1:]) % 5], False)


def test_preference_order_respected() -> None:
    lobby = new_lobby()
    join(lobby, "a", "trio", roles=["tank", "healer"])
    join(lobby, "b", "trio", roles=["healer", "tank"])
    join(lobby, "c", "trio", roles=["damage"])
    for player, roles in (("d", ["tank"]), ("e", ["healer"]), ("f", ["damage"])):
        join(lobby, player, "trio", roles=roles)

    (offer,) = offers(lobby.tick(1.0))

    roles = lobby.checks[offer.match].roles
    assert roles["a"] == RoleAssignment("tank", False)
    assert roles["b"] == RoleAssignment("healer", False)


def test_no_match_without_every_role() -> None:
    lobby = new_lobby()
    for player in "abcdef":
        join(lobby, player, "trio", roles=["tank"])

    assert offers(lobby.tick(1.0)) == []
    assert lobby.players["a"].place is Place.QUEUED


def test_autofill_only_after_wait() -> None:
    # autofill_after is 30 s: four tanks wait until the two youngest may be autofilled.
    lobby = new_lobby()
    for player in ("t1", "t2", "t3", "t4"):
        join(lobby, player, "trio", roles=["tank"])
    join(lobby, "d1", "trio", roles=["damage"])
    join(lobby, "d2", "trio", roles=["damage"])

    assert offers(lobby.tick(29.9)) == []
    (offer,) = offers(lobby.tick(30.0))

    roles = lobby.checks[offer.match].roles
    assert sorted(given.role for given in roles.values()) == sorted(TRIO * 2)
    autofilled = sorted(player for player, given in roles.items() if given.autofilled)
    assert len(autofilled) == 2
    assert all(roles[player].role == "healer" for player in autofilled)


def test_match_found_and_start_carry_role() -> None:
    lobby = new_lobby()
    for index, role in enumerate(TRIO * 2):
        join(lobby, f"p{index}", "trio", roles=[role])
    (offer,) = offers(lobby.tick(1.0))

    found = found_by_player(offer)
    effects = start(lobby, offer.match, 2.0)

    (started,) = [effect for effect in effects if isinstance(effect, fx.StartMatch)]
    assert started.record.roles is not None
    for send in started.sends:
        message = send.message
        assert isinstance(message, m.MatchStart)
        player = send.session.removeprefix("s-")
        assert message.role == TRIO[int(player[1:]) % 3]
        assert message.autofilled is False
        assert message.region == "default"
        assert found[player].role == message.role
        assert started.record.roles[player].role == message.role


def test_explanation_lists_roles() -> None:
    lobby = new_lobby()
    for index, role in enumerate(TRIO * 2):
        join(lobby, f"p{index}", "trio", roles=[role])
    (offer,) = offers(lobby.tick(1.0))

    effects = start(lobby, offer.match, 2.0)

    (started,) = [effect for effect in effects if isinstance(effect, fx.StartMatch)]
    explanation = started.record.explanation
    assert explanation is not None
    assert explanation["region"] == "default"
    assert explanation["roles"] == {f"p{i}": {"role": TRIO[i % 3], "autofilled": False} for i in range(6)}
    assert "rating_spread" in explanation


def test_three_teams_get_every_role() -> None:
    lobby = new_lobby()
    # The greedy split deals p0, p3 and p6, all tanks, to one team, so the split built
    # from the role slots has to take over.
    for index, role in enumerate(TRIO * 3):
        join(lobby, f"p{index}", "trio3", roles=[role])

    (offer,) = offers(lobby.tick(1.0))

    check = lobby.checks[offer.match]
    assert len(check.teams) == 3
    for team in check.teams:
        assert sorted(check.roles[player].role for player in team) == sorted(TRIO)


def test_empty_roles_take_any_role() -> None:
    lobby = new_lobby()
    join(lobby, "a", "trio", roles=["tank"])
    for player in "bcdef":
        join(lobby, player, "trio")

    (offer,) = offers(lobby.tick(1.0))

    roles = lobby.checks[offer.match].roles
    assert roles["a"] == RoleAssignment("tank", False)
    assert not any(given.autofilled for given in roles.values())


def test_party_members_cover_distinct_roles() -> None:
    lobby = new_lobby()
    leader = login(lobby, "a")
    login(lobby, "b")
    lobby.parties.create(leader, 0.0)
    lobby.parties.invite(leader, "b", 0.0)
    lobby.parties.join("s-b", "party1", 0.0)
    lobby.join_queue(leader, "squad", 0.0, roles=["tank", "healer"], party_roles={"b": ["tank", "damage"]})
    for player, roles in (("c", ["damage"]), ("d", ["tank"]), ("e", ["healer"]), ("f", ["damage"])):
        join(lobby, player, "squad", roles=roles)

    (offer,) = offers(lobby.tick(1.0))

    check = lobby.checks[offer.match]
    party_team = next(team for team in check.teams if "a" in team)
    assert "b" in party_team
    assert check.roles["a"].role != check.roles["b"].role
    for team in check.teams:
        assert sorted(check.roles[player].role for player in team) == sorted(TRIO)


@pytest.mark.parametrize(
    ("roles", "fragment"),
    [
        (["tank", "wizard"], "roles: 'wizard' is not a role of queue 'trio'"),
        (["tank", "tank"], "roles: 'tank' is listed more than once"),
    ],
)
def test_bad_roles_rejected(roles: list[str], fragment: str) -> None:
    lobby = new_lobby()
    session = login(lobby, "a")

    with pytest.raises(InvalidField, match=fragment) as raised:
        lobby.join_queue(session, "trio", 0.0, rid=7, roles=roles)

    assert raised.value.rid == 7
    assert lobby.players["a"].place is Place.IDLE


def test_roles_rejected_in_queue_without_roles() -> None:
    lobby = new_lobby()

    with pytest.raises(InvalidField, match="roles: queue 'plain' assigns no roles"):
        lobby.join_queue(login(lobby, "a"), "plain", 0.0, roles=["tank"])


def test_party_roles_must_name_members() -> None:
    lobby = new_lobby()
    leader = login(lobby, "a")
    lobby.parties.create(leader, 0.0)

    with pytest.raises(InvalidField, match="party_roles: 'z' is not another member"):
        lobby.join_queue(leader, "squad", 0.0, party_roles={"z": ["tank"]})


# Regions.

EU_AND_US = {"a": {"eu": 20.0, "us": 95.0}, "b": {"eu": 90.0, "us": 30.0}}


def test_no_region_under_limit_no_match() -> None:
    lobby = new_lobby()
    for player, latency in EU_AND_US.items():
        join(lobby, player, "near", latency=latency)

    assert offers(lobby.tick(0.0)) == []
    assert offers(lobby.tick(19.9)) == []


def test_match_forms_after_limit_widens() -> None:
    lobby = new_lobby()
    for player, latency in EU_AND_US.items():
        join(lobby, player, "near", latency=latency)

    (offer,) = offers(lobby.tick(20.0))

    # Worst latency: eu 90 ms, us 95 ms.
    assert lobby.checks[offer.match].region == "eu"
    assert lobby.checks[offer.match].explanation["region"] == "eu"
    assert {found.region for found in found_by_player(offer).values()} == {"eu"}


def test_region_only_where_everyone_reported() -> None:
    lobby = new_lobby()
    join(lobby, "a", "near", latency={"eu": 10.0, "asia": 5.0})
    join(lobby, "b", "near", latency={"eu": 50.0})

    (offer,) = offers(lobby.tick(0.0))

    assert lobby.checks[offer.match].region == "eu"


def test_latency_required_in_latency_queue() -> None:
    lobby = new_lobby()

    with pytest.raises(InvalidField, match="latency: queue 'near' hosts each match"):
        lobby.join_queue(login(lobby, "a"), "near", 0.0)


def test_latency_outside_queue_regions_rejected() -> None:
    lobby = new_lobby()

    with pytest.raises(InvalidField, match=r"latency: .* report one of eu"):
        lobby.join_queue(login(lobby, "a"), "near_eu", 0.0, latency={"us": 10.0})


def test_negative_latency_rejected() -> None:
    lobby = new_lobby()

    with pytest.raises(InvalidField, match=r"latency\.eu: expected milliseconds"):
        lobby.join_queue(login(lobby, "a"), "near", 0.0, latency={"eu": -1.0})


def test_latency_ignored_without_limit() -> None:
    lobby = new_lobby()
    join(lobby, "a", "plain", latency={"eu": 500.0})
    join(lobby, "b", "plain", latency={"us": 500.0})

    (offer,) = offers(lobby.tick(0.0))

    assert lobby.checks[offer.match].region == "default"


def test_chosen_region_goes_to_allocation() -> None:
    lobby = new_lobby(HostingSettings(ticket_key=b"t" * 32))
    assert lobby.hosting is not None
    for server, region in (("gs-eu", "eu"), ("gs-us", "us")):
        register = m.Register(
            v=1, server=server, secret="x", address=f"{server}:7777", capacity=1, queues=["near"], region=region
        )
        lobby.hosting.register(f"g-{server}", register, 0.0)
    join(lobby, "a", "near", latency={"eu": 90.0, "us": 20.0})
    join(lobby, "b", "near", latency={"eu": 90.0, "us": 40.0})
    (offer,) = offers(lobby.tick(20.0))

    effects = start(lobby, offer.match, 21.0)

    allocates = [send for send in effects if isinstance(send, fx.Send) and isinstance(send.message, m.Allocate)]
    assert [send.session for send in allocates] == ["g-gs-us"]
    assert isinstance(allocates[0].message, m.Allocate)
    assert allocates[0].message.region == "us"
