"""A synthetic player population: who arrives when, how good they are, how they behave.

Players arrive as a Poisson process of tickets: a solo player, or with probability
``party_share`` a party whose size is drawn from ``party_sizes``. Each player has a
hidden skill drawn from Normal(``skill_mean``, ``skill_sd``) in OpenSkill mu units,
and the matchmaker sees an estimate of it: mu off by Normal(0, ``rating_error_sd``)
with uncertainty ``rating_sigma``, shown as the usual display rating. Players list
``roles_per_player`` roles in order of preference and measure a latency to every
region: around ``latency_ms`` to their home region, ``cross_region_ms`` more to the
others. Every answer to a match is a decline with probability ``decline_rate``, a
disconnect with probability ``disconnect_rate``, and otherwise an accept, after a
delay drawn uniformly from the accept delay range.

Everything is drawn from ``random.Random`` seeded with ``seed``, so a population is
the same on every run and every machine with the same Python.
"""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path
from typing import Annotated, Final

import msgspec

from lobbyd.core.ratings import DEFAULT_ORDINAL_K, Skill, display_rating
from lobbyd.tuning.events import Join, Member

Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]

# Latencies are drawn from a normal distribution and clamped here, in milliseconds:
# no real round trip to a game server is shorter.
MIN_LATENCY_MS: Final = 1.0


class RegionSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One region: the share of players who live there and their latency to it."""

    share: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    latency_ms: NonNegative = 30.0
    latency_sd_ms: NonNegative = 10.0


def _default_regions() -> dict[str, RegionSpec]:
    return {"default": RegionSpec()}


MAX_PLAYERS: Final = 10_000_000
"""Maximum players in one population, so that a typo cannot start a run that never ends."""


class Population(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The population model; every field has a default, so an empty file is valid."""

    players: Annotated[int, msgspec.Meta(ge=1, le=MAX_PLAYERS)] = 1000
    queue: str = "5v5"
    arrival_rate: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Players arriving per second, on average."""
    skill_mean: float = 25.0
    skill_sd: NonNegative = 4.0
    rating_error_sd: NonNegative = 1.0
    """Standard deviation, in mu units, of the matchmaker's estimate around the hidden skill."""
    rating_sigma: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """Uncertainty of every estimate, in mu units; a new player's is 25/3."""
    party_share: Share = 0.0
    """Share of arriving tickets that are parties."""
    party_sizes: list[Annotated[int, msgspec.Meta(ge=2, le=64)]] = msgspec.field(default_factory=lambda: [2])
    """Sizes a party is drawn from, each equally likely."""
    party_skill_sd: NonNegative | None = None
    """Members' hidden skill is Normal(leader's skill, this); None draws it like anyone's."""
    roles: list[str] = msgspec.field(default_factory=list)
    """Role names; empty when the queue has no roles."""
    role_weights: list[NonNegative] = msgspec.field(default_factory=list)
    """Popularity of each role, parallel to ``roles``; empty: all equally popular."""
    roles_per_player: Annotated[int, msgspec.Meta(ge=1)] = 2
    regions: dict[str, RegionSpec] = msgspec.field(default_factory=_default_regions)
    cross_region_ms: NonNegative = 80.0
    """Extra round-trip time to every region but the player's home, in milliseconds."""
    decline_rate: Share = 0.02
    disconnect_rate: Share = 0.01
    accept_delay_min_s: NonNegative = 0.5
    accept_delay_max_s: NonNegative = 3.0
    rejoin_delay_s: NonNegative = 5.0
    """Seconds after a cancelled match that a player who was not requeued queues again."""
    reconnect_delay_s: NonNegative = 15.0
    """Seconds a player who disconnected stays away before queueing again."""
    seed: int = 1

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(problem)


def _problem(population: Population) -> str | None:
    if population.decline_rate + population.disconnect_rate > 1:
        return "decline_rate plus disconnect_rate must be at most 1"
    if population.accept_delay_max_s < population.accept_delay_min_s:
        return "accept_delay_max_s must be at least accept_delay_min_s"
    if population.role_weights and len(population.role_weights) != len(population.roles):
        return f"role_weights has {len(population.role_weights)} entries for {len(population.roles)} roles"
    if population.roles and population.roles_per_player > len(population.roles):
        return f"roles_per_player {population.roles_per_player} is more than the {len(population.roles)} roles"
    if not population.party_sizes:
        return "party_sizes needs at least one size"
    return None


class PopulationError(ValueError):
    """A population file that cannot be used; the message names the file and the field."""


def override_problem(players: int | None, arrival_rate: float | None) -> str | None:
    """Return what is wrong with the ``--players`` or ``--arrival-rate`` override, or None.

    Checked apart from the file so that the message blames the option, not the file.
    """
    if players is not None and not 1 <= players <= MAX_PLAYERS:
        return f"--players must be between 1 and {MAX_PLAYERS}, got {players}"
    if arrival_rate is not None and not (math.isfinite(arrival_rate) and arrival_rate > 0):
        return f"--arrival-rate must be a finite number greater than 0, got {arrival_rate:g}"
    return None


def load(path: Path, **overrides: object) -> Population:
    """Read a population from a TOML or JSON file, with ``overrides`` (None values skipped) on top."""
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix != ".json" else msgspec.json.decode(path.read_bytes())
    except (OSError, tomllib.TOMLDecodeError, msgspec.DecodeError) as exc:
        msg = f"{path}: cannot read the population: {exc}"
        raise PopulationError(msg) from None
    return build(raw, str(path), **overrides)


def build(raw: dict[str, object], source: str = "population", **overrides: object) -> Population:
    """Make a population from parsed settings; raises ``PopulationError`` on a bad value."""
    merged = {**raw, **{key: value for key, value in overrides.items() if value is not None}}
    try:
        return msgspec.convert(merged, Population)
    except (msgspec.ValidationError, ValueError) as exc:
        msg = f"{source}: {exc}"
        raise PopulationError(msg) from None


def generate(population: Population, rating_k: float = DEFAULT_ORDINAL_K) -> list[Join]:
    """Return every arrival of the population as a ``join`` event, in time order.

    ``rating_k`` is the config's ``rating_ordinal_k``, so that display ratings match
    what the daemon would show for the same skill estimate.
    """
    rng = random.Random(population.seed)
    mean_size = 1 + population.party_share * (sum(population.party_sizes) / len(population.party_sizes) - 1)
    ticket_rate = population.arrival_rate / mean_size

    joins: list[Join] = []
    t = 0.0
    made = 0
    while made < population.players:
        t += rng.expovariate(ticket_rate)
        size = _ticket_size(population, rng, population.players - made)
        names = [f"p{made + index + 1:07d}" for index in range(size)]
        made += size
        leader_skill = rng.gauss(population.skill_mean, population.skill_sd)
        people = [
            _member(population, rng, name, _skill(population, rng, leader_skill, index), rating_k)
            for index, name in enumerate(names)
        ]
        leader = people[0]
        joins.append(
            Join(
                t=round(t, 3),
                player=leader.player,
                queue=population.queue,
                rating=leader.rating,
                mu=leader.mu,
                sigma=leader.sigma,
                skill=leader.skill,
                members=people[1:],
                roles=leader.roles,
                latency=leader.latency,
            )
        )
    return joins


def _ticket_size(population: Population, rng: random.Random, remaining: int) -> int:
    if rng.random() >= population.party_share:
        return 1
    size = rng.choice(population.party_sizes)
    # The last arrival is cut to the players left; a cut party too small to be one queues solo.
    return size if size <= remaining else 1


def _skill(population: Population, rng: random.Random, leader_skill: float, index: int) -> float:
    """Return the hidden skill of the ticket's player ``index``; the leader is 0."""
    if index == 0:
        return leader_skill
    if population.party_skill_sd is not None:
        return rng.gauss(leader_skill, population.party_skill_sd)
    return rng.gauss(population.skill_mean, population.skill_sd)


def _member(population: Population, rng: random.Random, name: str, hidden: float, rating_k: float) -> Member:
    estimate = Skill(hidden + rng.gauss(0.0, population.rating_error_sd), population.rating_sigma)
    return Member(
        player=name,
        rating=display_rating(estimate, rating_k),
        mu=round(estimate.mu, 4),
        sigma=estimate.sigma,
        skill=round(hidden, 4),
        roles=_roles(population, rng),
        latency=_latency(population, rng),
    )


def _roles(population: Population, rng: random.Random) -> list[str]:
    """Draw the player's roles without repeats, most wanted first, by popularity."""
    left = list(population.roles)
    weights = list(population.role_weights) or [1.0] * len(left)
    chosen: list[str] = []
    while left and len(chosen) < population.roles_per_player:
        if sum(weights) <= 0:
            weights = [1.0] * len(left)
        index = rng.choices(range(len(left)), weights=weights)[0]
        chosen.append(left.pop(index))
        weights.pop(index)
    return chosen


def _latency(population: Population, rng: random.Random) -> dict[str, float]:
    names = sorted(population.regions)
    home = rng.choices(names, weights=[population.regions[name].share for name in names])[0]
    spec = population.regions[home]
    base = max(rng.gauss(spec.latency_ms, spec.latency_sd_ms), MIN_LATENCY_MS)
    return {name: round(base if name == home else base + population.cross_region_ms, 1) for name in names}


class PopulationBehaviour:
    """Answers to ready checks and returns after a cancel, drawn from the population's rates.

    Each player's draws come from their own generator, seeded with the population's
    seed, the player id and the number of the answer, so one player's answers do not
    depend on how many others answered first.
    """

    def __init__(self, population: Population) -> None:
        self.population = population
        self._answers: dict[str, int] = {}

    def answer(self, player: str, match: str) -> tuple[str, float]:
        """Return the player's answer to ``match``: accept, decline or disconnect, and its delay in seconds."""
        count = self._answers.get(player, 0)
        self._answers[player] = count + 1
        rng = random.Random(f"{self.population.seed}:{player}:{count}")
        low, high = self.population.accept_delay_min_s, self.population.accept_delay_max_s
        delay = round(rng.uniform(low, high), 3)
        roll = rng.random()
        if roll < self.population.decline_rate:
            return "decline", delay
        if roll < self.population.decline_rate + self.population.disconnect_rate:
            return "disconnect", delay
        return "accept", delay

    def return_after(self, reason: str) -> float | None:
        """Return the seconds until a player whose match was cancelled for ``reason`` queues again."""
        if reason == "disconnected":
            return self.population.reconnect_delay_s
        return self.population.rejoin_delay_s
