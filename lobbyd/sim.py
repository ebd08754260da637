"""``lobbyd sim``: N bot players over real TCP, then a report on how matchmaking went.

Each bot is one ``LobbyClient`` with binary framing and the player id
``sim-<run id>-<n>``, so that runs against the same daemon do not collide. A bot
logs in, joins the queue and responds to each ``match_found`` by accepting. With
probability ``--decline-rate`` it declines instead, and with probability
``--drop-rate`` it disconnects. A dropped bot reconnects after ``RECONNECT_DELAY`` and queues again.
After any ``match_cancelled`` with ``requeued`` false a bot sends ``join_queue``
again; with ``requeued`` true the server has already put it back in the queue.

A bot's goal is its ``match_start``. It then stays connected, and keeps accepting,
until every bot is done, so that a player the server matches twice shows up in the
report. Every bot pings every ``heartbeat_ms / 2`` while connected. Against a
loopback daemon the bots connect from source addresses 127.0.0.2, 127.0.0.3 and so on,
``BOTS_PER_SOURCE`` each, so that the daemon's per-address connection limit (256 by
default) does not turn them away; against any other host they all connect from the
one address the system picks, and that host's limit must allow ``--players``. A bot
that the server rejects with ``server_full`` gives up at once, because waiting would
not help while the other bots hold their connections.

The run ends when every bot has started or given up, when the players left in the
queue are too few for a match, or at ``--timeout``. Exit status: 0 when every player
started exactly one match, 1 otherwise, 2 for invalid options.

With ``--game-servers N`` the run is a league: N bot game servers (``sim_servers``)
host every match and report results, and a bot's goal is ``--rounds`` rated matches
instead of one ``match_start``. After each ``match_ended`` a bot queues again, also
once it reached its goal, so that the last bots still find opponents. The report then
adds how the players' ratings converged towards their hidden skills. Exit status 0
means every bot played its rounds.

With ``--population FILE`` the bots follow a population model instead: arrivals over
time, parties, roles, latencies and decline and disconnect rates, and the report is the per-band
table of ``lobbyd replay``. ``sim_population`` runs that mode.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import enum
import math
import os
import random
import secrets
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import uvloop

from lobbyd import config as config_module
from lobbyd import output_paths
from lobbyd.auth import AuthSettings, mint
from lobbyd.client import ClientError, LobbyClient
from lobbyd.config import parse_listen
from lobbyd.core.ratings import INITIAL_MU, INITIAL_SIGMA
from lobbyd.errors import ConfigError
from lobbyd.protocol.messages import PROTOCOL_VERSION
from lobbyd.sim_servers import ConvergencePoint, League, LeagueFailed
from lobbyd.tuning import population

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

# Without --population: bots in a run and the queue they join.
DEFAULT_PLAYERS: Final = 100
DEFAULT_QUEUE: Final = "5v5"

# Seconds a dropped bot stays offline before it reconnects with a new session.
RECONNECT_DELAY: Final = 0.5

# Bots per loopback source address: below the daemon's default per-address limit
# of 256 connections, with room for a person's own clients from the same address.
BOTS_PER_SOURCE: Final = 200
# A bot that loses its connection this many times without having injected the drop
# itself gives up, so that a dying server ends the run instead of a reconnect loop.
MAX_UNEXPECTED_CLOSES: Final = 3
# Seconds every bot keeps listening after the last match_start, so that a second
# match_found or match_start for an already matched player is still counted.
SETTLE_TIME: Final = 0.5
# Seconds the leftover players must sit in the queue, too few for a match, before the
# run ends early. Longer than a few matchmaker ticks (200 ms by default).
STALL_TIME: Final = 3.0
# Progress redraws and end-of-run checks happen this often, in seconds.
WATCH_INTERVAL: Final = 0.1
PROGRESS_BAR_WIDTH: Final = 20

# Failures of one connection that end the bot's session, as opposed to bugs of ours.
# OSError covers refused and reset connections and TimeoutError.
CONNECTION_ERRORS: Final = (ClientError, msgspec.DecodeError, OSError)


class BotState(enum.Enum):
    OFFLINE = "offline"
    IDLE = "idle"
    QUEUED = "queued"
    READY_CHECK = "ready_check"
    PLAYING = "playing"
    """In a hosted match, in a league run."""
    STARTED = "started"
    """Reached the goal: its match_start, or in a league run its rated matches."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RunEnd:
    """Why the run ended: ``failure`` is None when every bot finished."""

    failure: str | None


@dataclass(frozen=True, slots=True)
class SimOptions:
    address: str
    players: int
    queue: str
    decline_rate: float
    drop_rate: float
    connect_rate: float
    timeout: float
    seed: int | None
    progress: bool
    game_servers: int = 0
    rounds: int = 1
    match_seconds: float = 3.0
    game_server_secret: str | None = None
    auth: AuthSettings | None = None
    """Auth settings of the daemon, to mint each bot a token; None sends no token."""
    private_key: str | None = None
    """PEM private key file to sign tokens with instead of the HS256 secret of ``auth``."""

    @property
    def league(self) -> bool:
        """True when bot game servers host the matches and bots play rated rounds."""
        return self.game_servers > 0


@dataclass(slots=True)
class BotResult:
    """Outcome of one bot's run. Times are event-loop seconds."""

    player: str
    matches: list[str] = field(default_factory=list)
    joined_at: float | None = None
    """When the bot sent its first join_queue."""
    started_at: float | None = None
    """When the bot received its first match_start."""
    declines: int = 0
    drops: int = 0
    unexpected_closes: int = 0
    late_responses: int = 0
    """Accepts and declines that reached the server after the check had ended."""
    rated: int = 0
    """Results that moved this bot's rating."""
    rating: tuple[float, float, int] | None = None
    """The latest mu, sigma and display rating from rating_changed."""
    failure: str | None = None
    """Reason the bot gave up, or None."""

    @property
    def wait_ms(self) -> float | None:
        if self.joined_at is None or self.started_at is None:
            return None
        return (self.started_at - self.joined_at) * 1000


@dataclass(frozen=True, slots=True)
class Distribution:
    """Nearest-rank percentiles of a sample. Every field is None for an empty sample."""

    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class SimReport:
    ok: bool
    result: str
    run_id: str
    queue: str
    players: int
    matches_started: int
    matched_once: int
    matched_more_than_once: int
    never_matched: int
    cancelled_by_reason: dict[str, int]
    declines_injected: int
    drops_injected: int
    unexpected_closes: int
    late_responses: int
    server_errors: dict[str, int]
    bots_failed: int
    wait_ms: Distribution
    """From a player's first join_queue sent to its first match_start received."""
    rating_gap: Distribution
    """Per match: abs(sum of team 0 ratings - sum of team 1 ratings)."""
    matches_per_second: float
    """Matches started per second, from the start of the run to the last match_start."""
    total_seconds: float
    league: LeagueReport | None = None
    """With --game-servers: results and rating convergence."""


@dataclass(frozen=True, slots=True)
class LeagueReport:
    game_servers: int
    rounds: int
    results_applied: int
    game_server_errors: dict[str, int]
    hidden_skill_sd: float
    """Standard deviation of the hidden skills, in mu units: where mu_sd should head."""
    convergence: list[ConvergencePoint]


# Command line.


def run_cli(args: argparse.Namespace) -> int:
    """Run ``lobbyd sim`` with parsed arguments and return the exit code."""
    problem = _check_args(args)
    if problem:
        print(f"lobbyd sim: {problem}", file=sys.stderr)
        return EXIT_USAGE
    secret, problem = _game_server_secret(args)
    if problem:
        print(f"lobbyd sim: {problem}", file=sys.stderr)
        return EXIT_USAGE
    auth, problem = _auth_settings(args)
    if problem:
        print(f"lobbyd sim: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.population is not None:
        from lobbyd import sim_population

        return sim_population.run_cli(args, secret, auth)
    options = SimOptions(
        address=args.connect,
        players=DEFAULT_PLAYERS if args.players is None else args.players,
        queue=args.queue or DEFAULT_QUEUE,
        decline_rate=args.decline_rate,
        drop_rate=args.drop_rate,
        connect_rate=args.connect_rate,
        timeout=args.timeout,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
        game_servers=args.game_servers,
        rounds=args.rounds,
        match_seconds=args.match_seconds,
        game_server_secret=secret,
        auth=auth,
        private_key=args.private_key,
    )
    try:
        report = uvloop.run(run_sim(options))
    except KeyboardInterrupt:
        return 130
    except SimAborted as exc:
        print(f"lobbyd sim: {exc}", file=sys.stderr)
        return EXIT_FAILED

    print(format_report(report))
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    return EXIT_OK if report.ok else EXIT_FAILED


def _check_args(args: argparse.Namespace) -> str | None:
    """Return the first problem with the options, or None when they are valid."""
    if args.players is not None and args.players < 1:
        return f"--players must be at least 1, got {args.players}"
    problem = _check_population_args(args)
    if problem:
        return problem
    for name in ("decline_rate", "drop_rate"):
        rate = getattr(args, name)
        if not 0.0 <= rate <= 1.0:
            return f"--{name.replace('_', '-')} must be between 0 and 1, got {rate}"
    if args.decline_rate + args.drop_rate > 1.0:
        return "--decline-rate plus --drop-rate must be at most 1"
    if args.connect_rate <= 0:
        return f"--connect-rate must be greater than 0, got {args.connect_rate}"
    if args.timeout <= 0:
        return f"--timeout must be greater than 0, got {args.timeout}"
    if args.game_servers < 0:
        return f"--game-servers must be 0 or more, got {args.game_servers}"
    if args.rounds < 1:
        return f"--rounds must be at least 1, got {args.rounds}"
    if args.match_seconds < 0:
        return f"--match-seconds must be 0 or more, got {args.match_seconds}"
    return output_paths.problem(json=args.json, plots=args.plots)


def _auth_settings(args: argparse.Namespace) -> tuple[AuthSettings | None, str | None]:
    """Return (the auth settings bots mint tokens with, None), or (None, the problem).

    Without --config and --private-key the bots send no token, as for a daemon in
    development mode.
    """
    if args.config is None and args.private_key is None:
        return None, None
    try:
        settings = config_module.load(args.config).auth_settings()
        # Minting one token up front reports a missing or unusable key before any bot starts.
        mint(settings, "sim-key-check", 1, args.private_key)
    except ConfigError as exc:
        return None, str(exc)
    return settings, None


def _check_population_args(args: argparse.Namespace) -> str | None:
    """Return the first option that does not fit with or without ``--population``, or None."""
    if args.population is None:
        population_only = {
            "--arrival-rate": args.arrival_rate,
            "--band-by": args.band_by,
            "--band-width": args.band_width,
            "--plots": args.plots,
            "--game-server-regions": args.game_server_regions,
        }
        given = [name for name, value in population_only.items() if value is not None]
        return f"{given[0]} applies to --population only" if given else None
    problem = population.override_problem(args.players, args.arrival_rate)
    if problem:
        return problem
    if args.decline_rate or args.drop_rate:
        return "--decline-rate and --drop-rate do not apply with --population: its decline and disconnect rates do"
    if args.rounds != 1:
        return "--rounds does not apply with --population: each player plays until one match starts"
    if args.band_width is not None and args.band_width < 1:
        return f"--band-width must be at least 1, got {args.band_width}"
    return None


def _game_server_secret(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Return (the game-server secret, None), or (None, the problem); no secret without --game-servers."""
    if args.game_servers == 0:
        return None, None
    if args.game_server_secret_file is not None:
        try:
            return args.game_server_secret_file.read_text().strip(), None
        except OSError as exc:
            return None, f"cannot read --game-server-secret-file {args.game_server_secret_file}: {exc.strerror}"
    secret = os.environ.get("LOBBYD_GAME_SERVER_SECRET")
    if not secret:
        return None, "--game-servers needs the daemon's secret: --game-server-secret-file or LOBBYD_GAME_SERVER_SECRET"
    return secret, None


class SimAborted(Exception):
    """The simulation could not start, for example because the daemon is unreachable."""


# The run.


async def run_sim(options: SimOptions) -> SimReport:
    """Run every bot against the daemon at ``options.address`` and return the report."""
    await probe_daemon(options.address)
    sim = Simulation(options)
    failure = await sim.run()
    return build_report(sim, failure)


def source_address(address: str, number: int) -> str | None:
    """Return the loopback source address of bot ``number``, or None off loopback."""
    host, _ = parse_listen(address)
    if not host.startswith("127."):
        return None
    index = 2 + number // BOTS_PER_SOURCE
    return f"127.0.{index // 256}.{index % 256}"


async def probe_daemon(address: str) -> None:
    """Open and close one connection, so that an unreachable daemon ends the run at once."""
    try:
        client = await LobbyClient.connect(address)
    except ConfigError as exc:
        msg = f"invalid --connect: {str(exc).removeprefix('listen: ')}"
        raise SimAborted(msg) from None
    except (OSError, TimeoutError) as exc:
        reason = (getattr(exc, "strerror", None) or "timed out").lower()
        msg = f"cannot connect to {address}: {reason}"
        raise SimAborted(msg) from None
    await client.close()


class Pacer:
    """Spacing of events to at most ``rate`` per second, in the order of the calls to ``wait``."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_slot = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.interval
        await asyncio.sleep(slot - now)


class Simulation:
    """The bots of one run and the tallies they share."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.run_id = secrets.token_hex(3)
        self.pacer = Pacer(options.connect_rate)
        self.bots = [Bot(self, n) for n in range(options.players)]
        self.states: collections.Counter[BotState] = collections.Counter({BotState.OFFLINE: options.players})
        # Keyed by match id, because every player of a match receives the same message.
        self.cancelled: dict[str, str] = {}
        self.rating_gaps: dict[str, int | None] = {}
        self.server_errors: collections.Counter[str] = collections.Counter()
        self.match_size: int | None = None
        self.began = 0.0
        self.ended = 0.0
        self.last_start_at: float | None = None
        self._stalled_since: float | None = None
        self.league: League | None = None
        if options.league:
            assert options.game_server_secret is not None
            players = [bot.result.player for bot in self.bots]
            self.league = League(
                options.address,
                self.run_id,
                options.queue,
                players,
                options.game_servers,
                options.game_server_secret,
                options.match_seconds,
                options.seed,
                self.ratings,
            )

    def ratings(self) -> dict[str, tuple[float, float, int]]:
        """Return every bot's latest mu, sigma and display rating; a new player's until rated."""
        start = (INITIAL_MU, INITIAL_SIGMA, 1500)
        return {bot.result.player: bot.result.rating or start for bot in self.bots}

    async def run(self) -> str | None:
        """Run the bots until the run ends. Return the reason it failed, or None when every bot is done."""
        loop = asyncio.get_running_loop()
        self.began = loop.time()
        # An exception raised in a TaskGroup's body leaves it wrapped in an ExceptionGroup.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = []
                if self.league is not None:
                    tasks += await self.league.start_registered(group)
                tasks += [group.create_task(bot.run()) for bot in self.bots]
                failure = await self._watch()
                if failure is None:
                    await asyncio.sleep(SETTLE_TIME)
                if self.league is not None:
                    await self.league.settle(SETTLE_TIME)
                for task in tasks:
                    task.cancel()
        except* LeagueFailed as failed:
            raise SimAborted(str(failed.exceptions[0])) from None
        self.ended = loop.time()
        return failure

    def move(self, old: BotState, new: BotState) -> None:
        self.states[old] -= 1
        self.states[new] += 1

    async def _watch(self) -> str | None:
        """Draw progress until the run ends. Return the reason it failed, or None."""
        progress = Progress(self) if self.options.progress else None
        try:
            async with asyncio.timeout(self.options.timeout):
                while (end := self._check_end()) is None:
                    if progress:
                        progress.draw()
                    await asyncio.sleep(WATCH_INTERVAL)
                return self._describe_failure(end.failure)
        except TimeoutError:
            waiting = self.options.players - self.states[BotState.STARTED] - self.states[BotState.FAILED]
            return self._describe_failure(f"timed out after {self.options.timeout:g} s with {waiting} players waiting")
        finally:
            if progress:
                progress.finish()

    def _check_end(self) -> RunEnd | None:
        """Return how the run ended, or None while it goes on."""
        done = self.states[BotState.STARTED] + self.states[BotState.FAILED]
        if done == self.options.players:
            return RunEnd(None)
        if self.league is not None:
            # Finished bots keep playing, so a league run never stalls for want of players.
            return RunEnd(self.league.failure) if self.league.failure else None
        return self._check_stall(self.options.players - done)

    def _describe_failure(self, cause: str | None) -> str | None:
        """Join ``cause`` with the reason bots gave up, if any did; None when nothing failed."""
        failed = [bot.result.failure for bot in self.bots if bot.result.failure]
        if not failed:
            return cause
        gave_up = f"{len(failed)} bots gave up, the first because {failed[0]}"
        return f"{gave_up}, and {cause}" if cause else gave_up

    def _check_stall(self, remaining: int) -> RunEnd | None:
        # Too few players are queued for one more match, and no bot is in a ready check.
        stuck = self.match_size is not None and remaining < self.match_size
        if not stuck or self.states[BotState.QUEUED] != remaining:
            self._stalled_since = None
            return None
        now = asyncio.get_running_loop().time()
        self._stalled_since = self._stalled_since or now
        if now - self._stalled_since < STALL_TIME:
            return None
        return RunEnd(f"{remaining} players are still queued, fewer than the {self.match_size} a match needs")


# One bot.


class Bot:
    """One simulated player; ``run`` reconnects after drops until it is done or gives up."""

    def __init__(self, sim: Simulation, number: int) -> None:
        self.sim = sim
        self.options = sim.options
        self.result = BotResult(player=f"sim-{sim.run_id}-{number}")
        self.state = BotState.OFFLINE
        # A seeded bot makes the same choices in every run, whatever the scheduling.
        seed = f"{self.options.seed}:{number}" if self.options.seed is not None else None
        self.rng = random.Random(seed)
        self.heartbeat = 0.0
        self.source = source_address(self.options.address, number)
        # Match ids by the rid of this session's accept or decline, to recognize the
        # error a late response gets. Each connection numbers its rids from 1, so a new
        # session clears this and join_rid.
        self.responses: dict[int, str] = {}
        self.join_rid: int | None = None

    async def run(self) -> None:
        while True:
            await self.sim.pacer.wait()
            try:
                client = await self._log_in()
            except HelloRejected as exc:
                self.sim.server_errors[exc.code] += 1
                self._give_up(f"login failed: {exc}")
                return
            except CONNECTION_ERRORS as exc:
                self._give_up(f"login failed: {str(exc) or type(exc).__name__}")
                return
            if await self._play_session(client):
                return
            self._set_state(BotState.OFFLINE)
            await asyncio.sleep(RECONNECT_DELAY)

    async def _log_in(self) -> LobbyClient:
        client = await LobbyClient.connect(self.options.address, source=self.source)
        try:
            welcome = await send_hello(client, self.result.player, self._token())
        except BaseException:
            await client.close()
            raise
        self.heartbeat = int(welcome["heartbeat_ms"]) / 1000
        self.responses.clear()
        self.join_rid = None
        self._set_state(BotState.IDLE)
        return client

    def _token(self) -> str | None:
        return bot_token(self.options.auth, self.options.private_key, self.result.player, self.options.timeout)

    async def _play_session(self, client: LobbyClient) -> bool:
        """Play one connection; return True when the bot is finished with the run."""
        heartbeat = asyncio.create_task(_keep_alive(client, self.heartbeat / 2))
        try:
            await self._join(client)
            await self._handle_messages(client)
        except CONNECTION_ERRORS as exc:
            return self._lost_connection(exc)
        except BotGaveUp as exc:
            self._give_up(str(exc))
            return True
        finally:
            heartbeat.cancel()
            await client.close()
        return False

    def _lost_connection(self, exc: BaseException) -> bool:
        if self.state is BotState.STARTED:
            return True
        self.result.unexpected_closes += 1
        if self.result.unexpected_closes >= MAX_UNEXPECTED_CLOSES:
            self._give_up(f"lost the connection {MAX_UNEXPECTED_CLOSES} times, last: {exc}")
            return True
        return False

    def _give_up(self, reason: str) -> None:
        self.result.failure = reason
        self._set_state(BotState.FAILED)

    def _set_state(self, state: BotState) -> None:
        self.sim.move(self.state, state)
        self.state = state

    # Messages.

    async def _join(self, client: LobbyClient) -> None:
        self.join_rid = await client.request("join_queue", queue=self.options.queue)
        if self.result.joined_at is None:
            self.result.joined_at = asyncio.get_running_loop().time()
        self._set_state(BotState.QUEUED)

    async def _handle_messages(self, client: LobbyClient) -> None:
        """Handle server messages until the bot drops the connection on purpose."""
        handlers: dict[str, Callable[[LobbyClient, dict[str, Any]], Awaitable[bool]]] = {
            "match_found": self._on_match_found,
            "match_cancelled": self._on_match_cancelled,
            "match_start": self._on_match_start,
            "match_ended": self._on_match_ended,
            "rating_changed": self._on_rating_changed,
            "error": self._on_error,
            "kicked": self._on_kicked,
        }
        while True:
            message = await client.recv(timeout=None)
            handler = handlers.get(message.get("type", ""))
            if handler is not None and await handler(client, message):
                return

    async def _on_match_found(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        """Accept, decline or drop; return True to drop the connection."""
        if self.sim.match_size is None and self.sim.league is not None:
            self.sim.league.expect(self.options.players, self.options.rounds, int(message["players"]))
        self.sim.match_size = int(message["players"])
        match = str(message["match"])
        if self.state is not BotState.STARTED:
            self._set_state(BotState.READY_CHECK)
            choice = self.rng.random()
            if choice < self.options.decline_rate:
                self.result.declines += 1
                self.responses[await client.request("decline", match=match)] = match
                return False
            if choice < self.options.decline_rate + self.options.drop_rate:
                self.result.drops += 1
                return True
        # An already started bot accepts too, so that a double match shows in the report.
        self.responses[await client.request("accept", match=match)] = match
        return False

    async def _on_match_cancelled(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        self.sim.cancelled[str(message["match"])] = str(message["reason"])
        if self.state is BotState.STARTED:
            # A finished league bot stays in play as an opponent for the others.
            if self.options.league and not message.get("requeued"):
                await self._requeue(client)
            return False
        if message.get("requeued"):
            self._set_state(BotState.QUEUED)
        else:
            await self._join(client)
        return False

    async def _on_match_start(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        match = str(message["match"])
        self.result.matches.append(match)
        self.sim.rating_gaps[match] = _rating_gap(message.get("ratings"))
        now = asyncio.get_running_loop().time()
        self.sim.last_start_at = now
        if self.result.started_at is None:
            self.result.started_at = now
        if self.options.league:
            if self.state is not BotState.STARTED:
                self._set_state(BotState.PLAYING)
        elif self.state is not BotState.STARTED:
            self._set_state(BotState.STARTED)
        return False

    async def _on_match_ended(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        """Queue again: rating_changed, if any, follows and counts the round."""
        await self._requeue(client)
        return False

    async def _on_rating_changed(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        self.result.rated += 1
        self.result.rating = (float(message["mu"]), float(message["sigma"]), int(message["rating"]))
        if self.result.rated >= self.options.rounds and self.state not in (BotState.STARTED, BotState.FAILED):
            self._set_state(BotState.STARTED)
        return False

    async def _requeue(self, client: LobbyClient) -> None:
        """Send join_queue; a bot that reached its goal keeps its state while it plays on."""
        self.join_rid = await client.request("join_queue", queue=self.options.queue)
        if self.state is not BotState.STARTED:
            self._set_state(BotState.QUEUED)

    async def _on_error(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        rid = message.get("rid")
        if rid == self.join_rid:
            msg = f"join_queue was rejected: {message.get('message')}"
            raise BotGaveUp(msg)
        match = self.responses.get(rid) if isinstance(rid, int) else None
        if match is not None and match in self.sim.cancelled:
            self.result.late_responses += 1
        else:
            self.sim.server_errors[str(message.get("code"))] += 1
        return False

    async def _on_kicked(self, client: LobbyClient, message: dict[str, Any]) -> bool:
        msg = f"kicked by the server: {message.get('reason')}"
        raise ClientError(msg)


class BotGaveUp(Exception):
    """The server rejected the bot's queue entry, so retrying cannot help."""


class HelloRejected(ClientError):
    """An error reply to hello; ``code`` is its wire error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def bot_token(auth: AuthSettings | None, private_key: str | None, player: str, timeout: float) -> str | None:
    """Return a token for ``player`` valid for a run of ``timeout`` seconds, or None without auth."""
    if auth is None:
        return None
    # Valid for the whole run, with a minute to spare for the last reconnect.
    return mint(auth, player, math.ceil(timeout) + 60, private_key)


async def send_hello(client: LobbyClient, player: str, token: str | None = None) -> dict[str, Any]:
    """Log in as ``player`` and return the welcome; raise ``HelloRejected`` with the server's error."""
    fields: dict[str, Any] = {"v": PROTOCOL_VERSION, "player": player}
    if token is not None:
        fields["token"] = token
    await client.request("hello", **fields)
    reply = await client.recv()
    if reply.get("type") != "welcome":
        code = str(reply.get("code") or reply.get("type"))
        msg = f"hello was rejected with {code}: {reply.get('message')}"
        raise HelloRejected(msg, code)
    return reply


async def _keep_alive(client: LobbyClient, interval: float) -> None:
    # A failed ping ends the heartbeat. The bot's read loop then gets the connection error.
    try:
        while True:
            await asyncio.sleep(interval)
            await client.request("ping")
    except (ConnectionError, OSError):
        return


def _rating_gap(ratings: object) -> int | None:
    if not isinstance(ratings, list) or len(ratings) != 2:
        return None
    return abs(sum(ratings[0]) - sum(ratings[1]))


# Progress bar.


class Progress:
    """One status line on stderr, redrawn in place."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.began = asyncio.get_running_loop().time()

    def draw(self) -> None:
        states = self.sim.states
        players = self.sim.options.players
        started = states[BotState.STARTED]
        filled = PROGRESS_BAR_WIDTH * started // players
        bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
        connected = players - states[BotState.OFFLINE] - states[BotState.FAILED]
        elapsed = asyncio.get_running_loop().time() - self.began
        line = (
            f"[{bar}] connected {connected}/{players}  queued {states[BotState.QUEUED]}"
            f"  ready check {states[BotState.READY_CHECK]}  started {started}  {elapsed:.1f} s"
        )
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        self.draw()
        sys.stderr.write("\n")
        sys.stderr.flush()


# Report.


def build_report(sim: Simulation, failure: str | None) -> SimReport:
    results = [bot.result for bot in sim.bots]
    counts = collections.Counter(min(len(r.matches), 2) for r in results)
    matched_once, more, never = counts[1], counts[2], counts[0]
    success = "every player started exactly one match"
    if sim.league is not None:
        short = sum(1 for r in results if r.rated < sim.options.rounds)
        if failure is None and short:
            failure = f"{short} players played fewer than {sim.options.rounds} rated matches"
        success = f"every player played {sim.options.rounds} rated matches or more"
    elif failure is None and matched_once != len(results):
        failure = f"{more} players matched more than once and {never} never"
    matches = len(sim.rating_gaps)
    matching_time = (sim.last_start_at or sim.began) - sim.began
    return SimReport(
        ok=failure is None,
        result=failure or success,
        run_id=sim.run_id,
        queue=sim.options.queue,
        players=len(results),
        matches_started=matches,
        matched_once=matched_once,
        matched_more_than_once=more,
        never_matched=never,
        cancelled_by_reason=dict(sorted(collections.Counter(sim.cancelled.values()).items())),
        declines_injected=sum(r.declines for r in results),
        drops_injected=sum(r.drops for r in results),
        unexpected_closes=sum(r.unexpected_closes for r in results),
        late_responses=sum(r.late_responses for r in results),
        server_errors=dict(sorted(sim.server_errors.items())),
        bots_failed=sum(1 for r in results if r.failure),
        wait_ms=distribution([w for r in results if (w := r.wait_ms) is not None]),
        rating_gap=distribution([g for g in sim.rating_gaps.values() if g is not None]),
        matches_per_second=round(matches / matching_time, 2) if matching_time > 0 else 0.0,
        total_seconds=round(sim.ended - sim.began, 3),
        league=_league_report(sim),
    )


def _league_report(sim: Simulation) -> LeagueReport | None:
    league = sim.league
    if league is None:
        return None
    league.sample()
    return LeagueReport(
        game_servers=len(league.servers),
        rounds=sim.options.rounds,
        results_applied=league.results,
        game_server_errors=league.errors(),
        hidden_skill_sd=round(statistics.pstdev(league.skills.values()), 3),
        convergence=league.convergence,
    )


def distribution(values: Sequence[float]) -> Distribution:
    ordered = sorted(values)

    def rank(percent: float) -> float | None:
        if not ordered:
            return None
        index = max(math.ceil(percent / 100 * len(ordered)) - 1, 0)
        return round(ordered[index], 1)

    return Distribution(p50=rank(50), p90=rank(90), p99=rank(99), max=rank(100))


def format_report(report: SimReport) -> str:
    cancelled = ", ".join(f"{reason} {count}" for reason, count in report.cancelled_by_reason.items())
    errors = ", ".join(f"{code} {count}" for code, count in report.server_errors.items())
    rows = [
        ("players", f"{report.players} in queue {report.queue} (run {report.run_id})"),
        ("matches started", f"{report.matches_started}"),
        ("players matched once", f"{report.matched_once}"),
        ("matched more than once", f"{report.matched_more_than_once}"),
        ("never matched", f"{report.never_matched}"),
        ("ready checks cancelled", f"{sum(report.cancelled_by_reason.values())} ({cancelled or 'none'})"),
        ("declines injected", f"{report.declines_injected}"),
        ("drops injected", f"{report.drops_injected}"),
        ("late accepts/declines", f"{report.late_responses}"),
        ("unexpected disconnects", f"{report.unexpected_closes}"),
        ("server errors", errors or "none"),
        ("bots that gave up", f"{report.bots_failed}"),
        ("wait ms (join to start)", _format_distribution(report.wait_ms)),
        ("team rating gap", _format_distribution(report.rating_gap)),
        ("matches per second", f"{report.matches_per_second:.2f}"),
        ("total time", f"{report.total_seconds:.2f} s"),
        ("result", f"{'ok' if report.ok else 'FAILED'}: {report.result}"),
    ]
    if report.league is not None:
        rows[-1:-1] = _league_rows(report.league)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    if report.league is not None:
        lines += ["", *_convergence_table(report.league)]
    return "\n".join(lines)


def _league_rows(league: LeagueReport) -> list[tuple[str, str]]:
    errors = ", ".join(f"{code} {count}" for code, count in league.game_server_errors.items())
    return [
        ("bot game servers", f"{league.game_servers}"),
        ("results applied", f"{league.results_applied} ({league.rounds} rounds per player)"),
        ("game server errors", errors or "none"),
        ("hidden skill sd", f"{league.hidden_skill_sd:g} mu"),
    ]


def _convergence_table(league: LeagueReport) -> list[str]:
    """Return the convergence samples as a table: sigma falls, mu spread and correlation rise."""
    lines = ["results  mean sigma  mu sd  rating sd  corr(mu, hidden skill)"]
    for point in league.convergence:
        correlation = "-" if point.correlation is None else f"{point.correlation:.3f}"
        spread = f"{point.mu_sd:>5.2f}  {point.rating_sd:>9.1f}"
        lines.append(f"{point.results:>7}  {point.mean_sigma:>10.3f}  {spread}  {correlation:>22}")
    return lines


def _format_distribution(dist: Distribution) -> str:
    if dist.max is None:
        return "no samples"
    return f"p50 {dist.p50:g}  p90 {dist.p90:g}  p99 {dist.p99:g}  max {dist.max:g}"
