"""Unit tests of role assignment with preferences and autofill."""

from __future__ import annotations

import pytest

from lobbyd.core.roles import RoleAssignment, RoleRequest, assign_roles

ROLES = ("tank", "healer", "damage")


def test_first_choices_when_they_fit() -> None:
    team = [
        RoleRequest("a", ("tank",), 0.0),
        RoleRequest("b", ("healer", "tank"), 0.0),
        RoleRequest("c", ("damage",), 0.0),
    ]

    assert assign_roles(team, ROLES, autofill_after=None) == {
        "a": RoleAssignment("tank", False),
        "b": RoleAssignment("healer", False),
        "c": RoleAssignment("damage", False),
    }


def test_second_choice_beats_autofill() -> None:
    team = [
        RoleRequest("a", ("tank",), 100.0),
        RoleRequest("b", ("tank", "damage"), 100.0),
        RoleRequest("c", ("tank", "healer"), 100.0),
    ]

    assert assign_roles(team, ROLES, autofill_after=30.0) == {
        "a": RoleAssignment("tank", False),
        "b": RoleAssignment("damage", False),
        "c": RoleAssignment("healer", False),
    }


def test_no_fit_before_autofill_wait() -> None:
    team = [
        RoleRequest("a", ("tank",), 10.0),
        RoleRequest("b", ("tank",), 10.0),
        RoleRequest("c", ("damage",), 10.0),
    ]

    assert assign_roles(team, ROLES, autofill_after=30.0) is None


def test_autofill_after_wait() -> None:
    team = [
        RoleRequest("a", ("tank",), 10.0),
        RoleRequest("b", ("tank",), 45.0),
        RoleRequest("c", ("damage",), 10.0),
    ]

    assert assign_roles(team, ROLES, autofill_after=30.0) == {
        "a": RoleAssignment("tank", False),
        "b": RoleAssignment("healer", True),
        "c": RoleAssignment("damage", False),
    }


def test_autofill_off_never_fills() -> None:
    team = [RoleRequest(p, ("tank",), 1e6) for p in "abc"]

    assert assign_roles(team, ROLES, autofill_after=None) is None


def test_team_size_must_match_roles() -> None:
    assert assign_roles([RoleRequest("a", ("tank",), 0.0)], ROLES, autofill_after=0.0) is None


def test_too_many_roles_rejected() -> None:
    roles = tuple(f"r{i}" for i in range(8))
    team = [RoleRequest(f"p{i}", (), 0.0) for i in range(8)]

    with pytest.raises(ValueError, match="8 roles is more than the 7"):
        assign_roles(team, roles, autofill_after=0.0)
