"""Split a matched group of players into teams that are as even as possible.

Two teams are split so that the predicted chance of either winning is as close to
one half as possible; more teams are split greedily by rating.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from math import comb
from typing import Final

from lobbyd.core.model import Ticket

# Two-team splits are searched exhaustively up to this many candidate splits
# (5v5 has 126, 8v8 has 6,435); larger teams fall back to the greedy split.
MAX_EXHAUSTIVE_SPLITS: Final = 10_000


def split_teams(
    tickets: Sequence[Ticket], team_count: int, team_size: int, max_premade_gap: int | None = None
) -> list[list[Ticket]]:
    """Return ``team_count`` teams of ``team_size`` players, as evenly matched as possible.

    Two teams are split exhaustively when the search is small enough, else greedily:
    strongest player first, each to the weakest team that still has room. Party
    tickets stay whole (see ``split_parties``); raises ValueError when they cannot.
    """
    if any(ticket.size > 1 for ticket in tickets):
        teams = split_parties(tickets, team_count, team_size, max_premade_gap)
        if teams is None:
            msg = f"cannot split parties of sizes {[t.size for t in tickets]} into {team_count} teams of {team_size}"
            raise ValueError(msg)
        return teams
    if len(tickets) != team_count * team_size:
        msg = f"cannot split {len(tickets)} tickets into {team_count} teams of {team_size}"
        raise ValueError(msg)
    if team_count == 2 and comb(2 * team_size - 1, team_size - 1) <= MAX_EXHAUSTIVE_SPLITS:
        return _best_two_team_split(tickets, team_size)
    return _greedy_split(tickets, team_count, team_size)


def _best_two_team_split(tickets: Sequence[Ticket], team_size: int) -> list[list[Ticket]]:
    """Return the split whose predicted win probability is closest to 0.5; the first such wins ties.

    The probability is Phi(mu gap / sqrt(2 beta^2 + the sum of every player's sigma^2))
    (``win_probability``), and that root is the same for every split of the same players.
    So the split closest to 0.5 is the one with the smallest gap between the teams' mu
    sums, which costs additions only.
    """
    # Fixing the first ticket in team 0 visits each split once instead of twice. The
    # sums of every choice of teammates are computed by map(sum, ...) in C, about three
    # times cheaper for a 5v5 than a Python loop over the combinations.
    mus = [ticket.current_skill.mu for ticket in tickets]
    offset = sum(mus) - 2 * mus[0]
    gaps = [abs(offset - 2 * teammates) for teammates in map(sum, itertools.combinations(mus[1:], team_size - 1))]
    # The first minimum wins, as in a plain loop over the combinations.
    index = gaps.index(min(gaps))
    rest = next(itertools.islice(itertools.combinations(range(1, len(tickets)), team_size - 1), index, None))
    best = (0, *rest)

    in_best = set(best)
    first_team = [tickets[i] for i in best]
    second_team = [ticket for i, ticket in enumerate(tickets) if i not in in_best]
    return [first_team, second_team]


def _greedy_split(tickets: Sequence[Ticket], team_count: int, team_size: int) -> list[list[Ticket]]:
    teams: list[list[Ticket]] = [[] for _ in range(team_count)]
    sums = [0] * team_count
    for ticket in sorted(tickets, key=lambda t: (-t.rating, t.seq)):
        open_teams = [i for i in range(team_count) if len(teams[i]) < team_size]
        weakest = min(open_teams, key=lambda i: (sums[i], i))
        teams[weakest].append(ticket)
        sums[weakest] += ticket.rating
    return teams


def split_parties(
    tickets: Sequence[Ticket], team_count: int, team_size: int, max_premade_gap: int | None = None
) -> list[list[Ticket]] | None:
    """Split tickets of any party size into teams of ``team_size`` players, each party on one team.

    Returns None when no split fits. ``max_premade_gap`` caps the difference between the
    largest party on any two teams (0: a premade of K only meets a premade of K).
    Two teams are searched exhaustively for the smallest gap between the teams' mu sums.
    More teams are filled greedily, largest party first, each to the weakest team with room.
    """
    if sum(ticket.size for ticket in tickets) != team_count * team_size:
        return None
    if team_count == 2 and len(tickets) <= MAX_EXHAUSTIVE_UNITS:
        return _best_two_team_party_split(tickets, team_size, max_premade_gap)
    teams = _greedy_party_split(tickets, team_count, team_size)
    if teams is None or not _premades_balanced(teams, max_premade_gap):
        return None
    return teams


# Two-team party splits try every subset of the tickets but the first, so 16 tickets
# cost up to 2^15 subsets. More tickets fall back to the greedy split.
MAX_EXHAUSTIVE_UNITS: Final = 16


def _mu_sum(tickets: Sequence[Ticket]) -> float:
    return sum(skill.mu for ticket in tickets for skill in ticket.skills)


def _premades_balanced(teams: Sequence[Sequence[Ticket]], max_premade_gap: int | None) -> bool:
    if max_premade_gap is None:
        return True
    largest = [max(ticket.size for ticket in team) for team in teams]
    return max(largest) - min(largest) <= max_premade_gap


def _best_two_team_party_split(
    tickets: Sequence[Ticket], team_size: int, max_premade_gap: int | None
) -> list[list[Ticket]] | None:
    best = min(two_team_splits(tickets, team_size, max_premade_gap), key=lambda split: split[0], default=None)
    return None if best is None else [best[1], best[2]]


def ranked_two_team_splits(
    tickets: Sequence[Ticket], team_size: int, max_premade_gap: int | None
) -> Iterator[tuple[float, list[Ticket], list[Ticket]]]:
    """Yield the splits of ``two_team_splits`` by ascending mu gap; equal gaps keep its order.

    Solo tickets take the shortcut of ``_best_two_team_split``: the gaps of all splits
    come from sums of mu alone, and teams are built only for the splits the caller takes.
    """
    if any(ticket.size > 1 for ticket in tickets):
        yield from sorted(two_team_splits(tickets, team_size, max_premade_gap), key=lambda split: split[0])
        return
    mus = [ticket.current_skill.mu for ticket in tickets]
    offset = sum(mus) - 2 * mus[0]
    gaps = [abs(offset - 2 * teammates) for teammates in map(sum, itertools.combinations(mus[1:], team_size - 1))]
    choices = list(itertools.combinations(range(1, len(tickets)), team_size - 1))
    for index in sorted(range(len(gaps)), key=gaps.__getitem__):
        taken = {0, *choices[index]}
        first = [tickets[i] for i in sorted(taken)]
        second = [ticket for i, ticket in enumerate(tickets) if i not in taken]
        yield gaps[index], first, second


def two_team_splits(
    tickets: Sequence[Ticket], team_size: int, max_premade_gap: int | None
) -> Iterator[tuple[float, list[Ticket], list[Ticket]]]:
    """Yield every split of whole tickets into two teams of ``team_size`` as (mu gap, first, second).

    The first ticket stays in team 0, so each split comes once. The order is fixed:
    by how many other tickets join the first, then lexicographic, so the first of
    equal gaps is the same on every run.
    """
    total = _mu_sum(tickets)
    rest = range(1, len(tickets))
    # A team of team_size players holds at most team_size tickets.
    for count in range(min(len(tickets), team_size)):
        for chosen in itertools.combinations(rest, count):
            first = [tickets[0], *(tickets[i] for i in chosen)]
            if sum(ticket.size for ticket in first) != team_size:
                continue
            taken = {0, *chosen}
            second = [ticket for i, ticket in enumerate(tickets) if i not in taken]
            if not _premades_balanced([first, second], max_premade_gap):
                continue
            yield abs(total - 2 * _mu_sum(first)), first, second


def _greedy_party_split(tickets: Sequence[Ticket], team_count: int, team_size: int) -> list[list[Ticket]] | None:
    teams: list[list[Ticket]] = [[] for _ in range(team_count)]
    filled = [0] * team_count
    sums = [0.0] * team_count
    for ticket in sorted(tickets, key=lambda t: (-t.size, -_mu_sum([t]), t.seq)):
        open_teams = [i for i in range(team_count) if filled[i] + ticket.size <= team_size]
        if not open_teams:
            return None
        weakest = min(open_teams, key=lambda i: (sums[i], i))
        teams[weakest].append(ticket)
        filled[weakest] += ticket.size
        sums[weakest] += _mu_sum([ticket])
    return teams
