"""Match quality per queue and skill band: the table, the JSON and the samples behind both.

One sample is one player in one started match: their wait from joining the queue to
the match forming (the match record's ``waits``, which keeps a requeued player's
original wait), their rating in the match, the match's rating spread (highest minus
lowest rating) and how far its predicted win probability is from 0.5. A skill band is
a ``band_width``-point range of the rating the matchmaker matched the player with, or,
with ``band_by="skill"``, of the player's hidden skill on the same scale (see
``skill_rating``). Percentiles are nearest-rank.

``build`` summarises an offline engine's ``Outcome``; ``summarise`` takes samples and
run figures from any source, such as the matches that ``lobbyd sim --population``
observed on a live daemon.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from lobbyd.core.ratings import DISPLAY_BASE, DISPLAY_SCALE, INITIAL_MU, Skill, win_probability
from lobbyd.tuning.engine import Outcome

FORMAT: Final = "lobbyd-tuning-report"
VERSION: Final = 1
DEFAULT_BAND_WIDTH: Final = 200
# Values of ``band_by``: bands of the rating the matchmaker used, or of the hidden skill.
BAND_BY_RATING: Final = "rating"
BAND_BY_SKILL: Final = "skill"


@dataclass(frozen=True, slots=True)
class Sample:
    match: str
    queue: str
    player: str
    rating: int
    skill: float | None
    """The hidden skill, when a population model made the player."""
    wait: float
    spread: float
    win_gap: float | None
    """abs(predicted win probability - 0.5); None for matches of more than two teams."""
    autofilled: bool | None
    """True when the player got a role they did not list; None in a queue without roles."""
    band_rating: int
    """The rating the player is banded and plotted by: ``rating``, or ``skill_rating(skill)``."""
    region: str | None = None
    """The region the match was hosted in."""


class Percentiles(msgspec.Struct, frozen=True):
    """Nearest-rank percentiles and the mean; all None without samples."""

    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class Row(msgspec.Struct, frozen=True):
    band: str
    """"1400-1599", or "all" for the whole queue."""
    players: int
    """Distinct players whose last join was in this queue and band, matched or not."""
    matched: int
    """Player-matches: one per player per started match."""
    unmatched: int
    """Players who never started a match in this run."""
    wait_s: Percentiles
    rating_spread: Percentiles
    win_probability_gap: Percentiles
    autofill_share: float | None
    """Share of matched players put in a role they did not list; None until roles reach the core."""
    penalties: int


class QueueReport(msgspec.Struct, frozen=True):
    queue: str
    matches: int
    overall: Row
    bands: list[Row]
    regions: dict[str, int] = {}
    """Started matches by the region that hosted them."""


class Report(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    source: str
    """Source of the events: the recording's path or the population file."""
    players: int
    matches: int
    duration_s: float
    cancelled: dict[str, int]
    """Cancelled ready checks by reason."""
    late_answers: int
    unscripted_answers: int
    rejected: dict[str, int]
    band_width: int
    band_by: str = BAND_BY_RATING
    """"rating": bands of the rating in the match; "skill": bands of the hidden skill on the rating scale."""
    hidden_win_probability_gap: Percentiles
    """abs(win probability - 0.5) by the players' hidden skills, over two-team matches
    whose players all have one; all None for a recording from a daemon."""
    queues: list[QueueReport]


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON file: one report per policy that ran on the same events."""

    format: str = FORMAT
    version: int = VERSION
    reports: list[Report]


@dataclass(frozen=True, slots=True)
class Entrant:
    """A player who joined a queue, and the rating they are banded by until they start a match."""

    queue: str
    band_rating: int


@dataclass(frozen=True, slots=True)
class RunFacts:
    """The figures of a run that are not per sample: who joined, penalties, cancels and rejections."""

    policy: str
    source: str
    entrants: Mapping[str, Entrant]
    """Every player by id, matched or not."""
    penalties: Mapping[str, int]
    """Dodge penalties by player."""
    cancelled: Mapping[str, int]
    """Cancelled ready checks by reason."""
    rejected: Mapping[str, int]
    """Rejected requests by error code."""
    duration_s: float
    late_answers: int = 0
    unscripted_answers: int = 0


def skill_rating(skill: float) -> int:
    """Return a hidden skill on the display rating scale: 1500 + 50 * (skill - 25).

    That is the display rating of a player whose mu is ``skill`` and whose sigma is a
    new player's, whatever the server's ``rating_ordinal_k``.
    """
    return round(DISPLAY_BASE + DISPLAY_SCALE * (skill - INITIAL_MU))


def samples(outcome: Outcome, band_by: str = BAND_BY_RATING) -> list[Sample]:
    """Return one sample per player per started match, in match order."""
    found: list[Sample] = []
    for record in outcome.started:
        players = [player for team in record.teams for player in team]
        ratings = [rating for team in record.ratings for rating in team]
        explanation = record.explanation or {}
        spread = float(explanation.get("rating_spread", max(ratings) - min(ratings)))  # type: ignore[arg-type]
        probability = explanation.get("win_probability")
        win_gap = abs(float(probability) - 0.5) if isinstance(probability, float | int) else None
        region = explanation.get("region")
        roles = record.roles
        for index, player in enumerate(players):
            facts = outcome.players.get(player)
            skill = facts.skill if facts is not None else None
            autofilled = roles[player].autofilled if roles is not None and player in roles else None
            sample = Sample(
                record.id,
                record.queue,
                player,
                ratings[index],
                skill,
                record.waits[index],
                spread,
                win_gap,
                autofilled,
                band_rating=band_rating(ratings[index], skill, band_by),
                region=region if isinstance(region, str) else None,
            )
            found.append(sample)
    return found


def band_rating(rating: int, skill: float | None, band_by: str) -> int:
    """Return the rating a player is banded by; by skill, a player without one is banded by ``rating``."""
    if band_by == BAND_BY_SKILL and skill is not None:
        return skill_rating(skill)
    return rating


def hidden_win_gaps(
    teams_of_matches: Iterable[Sequence[Sequence[str]]], skills: Mapping[str, float | None]
) -> list[float]:
    """Return abs(win probability - 0.5) by hidden skill for each two-team match whose players all have one."""
    gaps = []
    for teams in teams_of_matches:
        if len(teams) != 2:
            continue
        hidden = [[skills.get(player) for player in team] for team in teams]
        if any(skill is None for team in hidden for skill in team):
            continue
        first, second = ([Skill(skill, 0.0) for skill in team if skill is not None] for team in hidden)
        gaps.append(abs(win_probability(first, second) - 0.5))
    return gaps


def build(
    outcome: Outcome, source: str, band_width: int = DEFAULT_BAND_WIDTH, band_by: str = BAND_BY_RATING
) -> Report:
    """Summarise an offline engine's ``outcome`` per queue and per skill band."""
    entrants = {
        player: Entrant(facts.queue, band_rating(facts.rating, facts.skill, band_by))
        for player, facts in outcome.players.items()
    }
    facts = RunFacts(
        policy=outcome.policy,
        source=source,
        entrants=entrants,
        penalties=outcome.penalties,
        cancelled=outcome.cancelled,
        rejected=outcome.rejected,
        duration_s=outcome.duration,
        late_answers=outcome.late_answers,
        unscripted_answers=outcome.unscripted_answers,
    )
    skills = {player: player_facts.skill for player, player_facts in outcome.players.items()}
    gaps = hidden_win_gaps((record.teams for record in outcome.started), skills)
    return summarise(facts, samples(outcome, band_by), gaps, band_width, band_by)


def summarise(
    facts: RunFacts, all_samples: list[Sample], hidden_gaps: list[float], band_width: int, band_by: str
) -> Report:
    """Summarise ``all_samples`` per queue and per skill band; ``hidden_gaps`` come from ``hidden_win_gaps``."""
    queues = sorted({entrant.queue for entrant in facts.entrants.values()} | {s.queue for s in all_samples})
    return Report(
        policy=facts.policy,
        source=facts.source,
        players=len(facts.entrants),
        matches=len({sample.match for sample in all_samples}),
        duration_s=facts.duration_s,
        cancelled=dict(sorted(facts.cancelled.items())),
        late_answers=facts.late_answers,
        unscripted_answers=facts.unscripted_answers,
        rejected=dict(sorted(facts.rejected.items())),
        band_width=band_width,
        band_by=band_by,
        hidden_win_probability_gap=percentiles(hidden_gaps, digits=3),
        queues=[_queue_report(facts, queue, all_samples, band_width) for queue in queues],
    )


def _queue_report(facts: RunFacts, queue: str, all_samples: list[Sample], width: int) -> QueueReport:
    mine = [sample for sample in all_samples if sample.queue == queue]
    matched = {sample.player for sample in mine}
    # Players are banded by their band rating in their last match, or at their last join if never matched.
    rating_of = {player: entrant.band_rating for player, entrant in facts.entrants.items() if entrant.queue == queue}
    rating_of.update({sample.player: sample.band_rating for sample in mine})

    by_band: dict[int, list[Sample]] = collections.defaultdict(list)
    for sample in mine:
        by_band[_band(sample.band_rating, width)].append(sample)
    players_by_band: dict[int, set[str]] = collections.defaultdict(set)
    for player, rating in rating_of.items():
        players_by_band[_band(rating, width)].add(player)

    bands = [
        _row(_band_label(low, width), by_band[low], players_by_band[low], matched, facts.penalties)
        for low in sorted(players_by_band)
    ]
    overall = _row("all", mine, set(rating_of), matched, facts.penalties)
    regions = collections.Counter(region for sample in _one_per_match(mine) if (region := sample.region) is not None)
    matches = len({sample.match for sample in mine})
    by_region = dict(sorted(regions.items()))
    return QueueReport(queue=queue, matches=matches, overall=overall, bands=bands, regions=by_region)


def _one_per_match(rows: list[Sample]) -> list[Sample]:
    return list({sample.match: sample for sample in rows}.values())


def _row(label: str, rows: list[Sample], players: set[str], matched: set[str], penalties: Mapping[str, int]) -> Row:
    return Row(
        band=label,
        players=len(players),
        matched=len(rows),
        unmatched=len(players - matched),
        wait_s=percentiles([sample.wait for sample in rows]),
        rating_spread=percentiles([sample.spread for sample in rows]),
        win_probability_gap=percentiles([s.win_gap for s in rows if s.win_gap is not None], digits=3),
        autofill_share=_autofill_share(rows),
        penalties=sum(penalties.get(player, 0) for player in players),
    )


def _autofill_share(rows: list[Sample]) -> float | None:
    """Return the share of role assignments that were autofills; None without roles."""
    assigned = [sample.autofilled for sample in rows if sample.autofilled is not None]
    return round(sum(assigned) / len(assigned), 4) if assigned else None


def _band(rating: int, width: int) -> int:
    return (rating // width) * width


def _band_label(low: int, width: int) -> str:
    return f"{low}-{low + width - 1}"


def percentiles(values: Iterable[float], digits: int = 1) -> Percentiles:
    ordered = sorted(values)
    if not ordered:
        return Percentiles(None, None, None, None)

    def rank(percent: float) -> float:
        index = max(math.ceil(percent / 100 * len(ordered)) - 1, 0)
        return round(ordered[index], digits)

    mean = round(sum(ordered) / len(ordered), digits)
    return Percentiles(mean, rank(50), rank(95), rank(99))


# Text.


def format_report(report: Report, clock: str = "simulated") -> str:
    """Return the report as a table per queue, one row per skill band and one for the whole queue.

    ``clock`` names the kind of seconds in ``duration_s``: "simulated" offline, "real" live.
    """
    cancelled = ", ".join(f"{reason} {count}" for reason, count in report.cancelled.items()) or "none"
    lines = [
        f"policy {report.policy}: {report.players} players, {report.matches} matches, "
        f"{report.duration_s:g} s {clock}, ready checks cancelled: {cancelled}",
    ]
    for queue in report.queues:
        lines += ["", f"queue {queue.queue}: {queue.matches} matches{_regions(queue)}, {_bands(report)}"]
        lines += _table([*queue.bands, queue.overall])
    return "\n".join(lines)


def _regions(queue: QueueReport) -> str:
    if len(queue.regions) < 2:
        return ""
    return " (" + ", ".join(f"{region} {count}" for region, count in queue.regions.items()) + ")"


def _bands(report: Report) -> str:
    if report.band_by == BAND_BY_SKILL:
        return f"bands of {report.band_width} points of hidden skill on the rating scale"
    return f"bands of {report.band_width} rating points"


_HEADER: Final = (
    "band", "players", "matched", "unmatched", "wait p50", "p95", "p99 s",
    "spread p50", "p95", "|p-0.5| p50", "p95", "autofill", "penalties",
)  # fmt: skip


def _table(rows: Sequence[Row]) -> list[str]:
    cells = [list(_HEADER)]
    for row in rows:
        cells.append(
            [
                row.band,
                str(row.players),
                str(row.matched),
                str(row.unmatched),
                _number(row.wait_s.p50),
                _number(row.wait_s.p95),
                _number(row.wait_s.p99),
                _number(row.rating_spread.p50),
                _number(row.rating_spread.p95),
                _number(row.win_probability_gap.p50),
                _number(row.win_probability_gap.p95),
                "n/a" if row.autofill_share is None else f"{row.autofill_share:.1%}",
                str(row.penalties),
            ]
        )
    return align(cells)


def format_comparison(reports: Sequence[Report]) -> str:
    """Return one row per policy and queue: waits, spread and win-probability gap side by side."""
    cells = [
        ["policy", "queue", "matches", "wait p50", "p95", "p99 s", "spread mean", "p50", "p95", "|p-0.5| mean",
         "penalties", "unmatched"],
    ]  # fmt: skip
    for report in reports:
        for queue in report.queues:
            row = queue.overall
            cells.append(
                [
                    report.policy,
                    queue.queue,
                    str(queue.matches),
                    _number(row.wait_s.p50),
                    _number(row.wait_s.p95),
                    _number(row.wait_s.p99),
                    _number(row.rating_spread.mean),
                    _number(row.rating_spread.p50),
                    _number(row.rating_spread.p95),
                    _number(row.win_probability_gap.mean),
                    str(row.penalties),
                    str(row.unmatched),
                ]
            )
    return "\n".join(align(cells, text_columns=2))


def align(cells: list[list[str]], text_columns: int = 1) -> list[str]:
    """Return rows of cells padded to a common width per column: the first ``text_columns`` left, the rest right."""
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    lines = []
    for row in cells:
        parts = [cell.ljust(widths[i]) if i < text_columns else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
