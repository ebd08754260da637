"""``lobbyd replay``: run recorded or synthetic queue events through the matchmaker offline.

The events come from a recording (``lobbyd replay FILE``) or from a population model
(``lobbyd replay --population FILE``). The queue rules, tick interval, ready-check
timeout and dodge penalties come from ``--config`` (default: the built-in defaults),
so the same events can be run under a changed configuration before it is deployed.
``--policy all`` also runs the reference policies on the same events and prints them
side by side. Exit status: 0 after a report, 2 for invalid options or input files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from lobbyd import config as config_module
from lobbyd import output_paths
from lobbyd.errors import ConfigError
from lobbyd.tuning import events as ev
from lobbyd.tuning import policies, population, report
from lobbyd.tuning.engine import Behaviour, Engine, EngineConfig, ScriptedBehaviour

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
DEFAULT_INTERVAL_S: Final = 15.0
DEFAULT_WINDOW: Final = 200.0


class UsageError(Exception):
    """An option or input file that stops the run; the message is printed as is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="recording of queue events (JSON lines) to replay")
    source.add_argument("--population", type=Path, help="population model (TOML or JSON) to generate events from")
    parser.add_argument("--config", type=Path, help="lobbyd TOML configuration whose queues and timings to use")
    parser.add_argument(
        "--policy",
        choices=[*policies.NAMES, "all"],
        default=policies.LOBBYD,
        help="match-forming policy; all runs every policy on the same events (default lobbyd)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between cuts of the fixed-interval policy (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW,
        help=f"fixed rating window of the fixed-interval policy, in points (default {DEFAULT_WINDOW:g})",
    )
    parser.add_argument("--players", type=int, help="with --population: override its number of players")
    parser.add_argument("--arrival-rate", type=float, help="with --population: override its players per second")
    parser.add_argument("--seed", type=int, help="with --population: override its random seed")
    parser.add_argument("--queue", help="with --population: override the queue its players join")
    parser.add_argument(
        "--band-width",
        type=int,
        default=report.DEFAULT_BAND_WIDTH,
        help=f"rating points per skill band in the report (default {report.DEFAULT_BAND_WIDTH})",
    )
    parser.add_argument(
        "--band-by",
        choices=[report.BAND_BY_RATING, report.BAND_BY_SKILL],
        default=report.BAND_BY_RATING,
        help="band players by their rating in the match or, when a population made them, by hidden skill"
        " (default rating)",
    )
    parser.add_argument("--json", type=Path, help="also write the reports as JSON to this file")
    parser.add_argument("--plots", type=Path, help="also draw PNG plots into this directory")
    parser.add_argument("--record", type=Path, help="write the events the first policy applied as a recording")


def run_cli(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as exc:
        print(f"lobbyd replay: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    config = _load_config(args.config)
    engine_config = EngineConfig(config.queue_rules(), config.lobby_settings(), config.tick_interval_ms / 1000)
    events, make_behaviour, source = _events(args, config, engine_config)

    names = list(policies.NAMES) if args.policy == "all" else [args.policy]
    runs = []
    for index, name in enumerate(names):
        recorded: list[ev.Event] = []
        engine = Engine(
            engine_config,
            make_behaviour(),
            policy=policies.make(name, args.interval, args.window),
            policy_name=name,
            record=recorded.append if args.record is not None and index == 0 else None,
        )
        outcome = engine.run(events)
        runs.append((outcome, report.build(outcome, source, args.band_width, args.band_by)))
        if args.record is not None and index == 0:
            header = ev.Header(source="population", started_at=0.0, tick_interval_s=engine_config.tick_interval)
            ev.write(args.record, header, recorded)

    reports = [built for _, built in runs]
    print("\n\n".join(report.format_report(built) for built in reports))
    if len(reports) > 1:
        print(f"\nside by side (fixed-interval cuts every {args.interval:g} s within {args.window:g} points):")
        print(report.format_comparison(reports))
    if args.json is not None:
        document = report.Document(reports=reports)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(document)) + b"\n")
    if args.plots is not None:
        from lobbyd.tuning import plots

        label = plots.SKILL_LABEL if args.band_by == report.BAND_BY_SKILL else plots.RATING_LABEL
        plots.write(args.plots, [(outcome.policy, report.samples(outcome, args.band_by)) for outcome, _ in runs], label)
    return EXIT_OK


def _check_args(args: argparse.Namespace) -> None:
    if args.interval <= 0:
        msg = f"--interval must be greater than 0, got {args.interval:g}"
        raise UsageError(msg)
    if args.window <= 0:
        msg = f"--window must be greater than 0, got {args.window:g}"
        raise UsageError(msg)
    if args.band_width < 1:
        msg = f"--band-width must be at least 1, got {args.band_width}"
        raise UsageError(msg)
    overrides = [args.players, args.arrival_rate, args.seed, args.queue]
    if args.population is None and any(value is not None for value in overrides):
        msg = "--players, --arrival-rate, --seed and --queue apply to --population only"
        raise UsageError(msg)
    problem = population.override_problem(args.players, args.arrival_rate) or output_paths.problem(
        json=args.json, record=args.record, plots=args.plots
    )
    if problem:
        raise UsageError(problem)


def _load_config(path: Path | None) -> config_module.Config:
    try:
        return config_module.load(path, environ={})
    except ConfigError as exc:
        msg = f"invalid --config: {exc}"
        raise UsageError(msg) from None


def _events(
    args: argparse.Namespace, config: config_module.Config, engine_config: EngineConfig
) -> tuple[list[ev.Event], Callable[[], Behaviour], str]:
    """Return the events, a factory of fresh behaviours (one per policy run) and a name for the source."""
    if args.file is not None:
        try:
            recording = ev.read(args.file)
        except (OSError, ev.RecordingError) as exc:
            raise UsageError(str(exc)) from None
        return recording.events, lambda: ScriptedBehaviour(recording.events), str(args.file)

    try:
        model = population.load(
            args.population, players=args.players, arrival_rate=args.arrival_rate, seed=args.seed, queue=args.queue
        )
    except population.PopulationError as exc:
        raise UsageError(str(exc)) from None
    _check_population(model, engine_config)
    joins: list[ev.Event] = list(population.generate(model, config.rating_ordinal_k))
    return joins, lambda: population.PopulationBehaviour(model), str(args.population)


def _check_population(model: population.Population, engine_config: EngineConfig) -> None:
    rules = engine_config.rules.get(model.queue)
    if rules is None:
        known = ", ".join(sorted(engine_config.rules))
        msg = f"the population's queue {model.queue!r} is not in the configuration, which has {known}"
        raise UsageError(msg)
    if model.party_share == 0:
        return
    unsupported = sorted(set(model.party_sizes) - set(rules.party_sizes))
    if unsupported:
        allowed = ", ".join(str(size) for size in rules.party_sizes)
        sizes = ", ".join(str(size) for size in unsupported)
        msg = f"queue {model.queue!r} takes parties of {allowed} players, but the population has parties of {sizes}"
        raise UsageError(msg)
