"""``lobbyd sim --population FILE``: bots that arrive, form parties and accept or decline at a population model's rates.

The population (``lobbyd.tuning.population``) generates its arrivals: a solo player
or a party at a time drawn from a Poisson process, with hidden skills, role
preferences and a latency per region. A ``Group`` plays one arrival over real
sockets. At its time it logs every member in and forms the party (``create_party``,
``invite_to_party``, ``join_party``), then the leader sends ``join_queue`` with
``roles``, ``party_roles`` and ``latency``. Each member answers its ``match_found``
after the population's accept delay with an accept, a decline or a disconnect, drawn
as the offline engine draws them. A ticket the server did not requeue queues again
after the population's ``rejoin_delay_s`` (``reconnect_delay_s`` when the cancel was
for a disconnect). A member who disconnected logs in again after
``reconnect_delay_s``, and the group forms its party again before it queues.

A group is done at its first ``match_start``. Its members stay connected and accept
any further match, so that a player matched twice shows in the report. The run ends
when every group is done or gave up, when the players left in the queue are too few
for one more match while nobody is arriving, returning or in a ready check, or at
``--timeout``. Players not started by then count as unmatched.

The sim cannot read the daemon's queue rules. It sends the population's roles, and
if the daemon rejects them because the queue has no roles, it sends none for the rest
of the run. A party whose role lists the queue rejects for another reason queues
without them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import enum
import itertools
import secrets
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import uvloop

from lobbyd import sim_population_report as live_report
from lobbyd.auth import AuthSettings
from lobbyd.client import LobbyClient
from lobbyd.core.ratings import DISPLAY_BASE, Skill
from lobbyd.sim import (
    CONNECTION_ERRORS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_UNEXPECTED_CLOSES,
    SETTLE_TIME,
    STALL_TIME,
    WATCH_INTERVAL,
    Pacer,
    SimAborted,
    bot_token,
    probe_daemon,
    send_hello,
    source_address,
)
from lobbyd.sim_population_report import Observations, PlayerFacts, Seat
from lobbyd.sim_servers import League, LeagueFailed
from lobbyd.tuning import population as population_model
from lobbyd.tuning import report
from lobbyd.tuning.events import Join, Member

# Seconds to wait for the reply to a request before the connection counts as broken.
REPLY_TIMEOUT: Final = 10.0
# Failed attempts in a row to log in, form the party and queue before a group gives up.
MAX_ATTEMPTS: Final = 5
# Seconds before a failed attempt is tried again.
RETRY_DELAY: Final = 0.5
# join_queue errors that mean the ticket exists: the server requeued it after a cancel.
STILL_QUEUED: Final = frozenset({"already_queued", "in_ready_check"})
# Part of the daemon's invalid_field message for roles sent to a queue without roles
# (lobbyd.core.preferences.check_roles): the whole run then stops sending roles.
NO_ROLES_MESSAGE: Final = "assigns no roles"
# join_queue and party errors that trying again cannot fix. party_full comes from an
# invite when no queue takes a party of the population's size.
FATAL_CODES: Final = frozenset({"unknown_queue", "invalid_party_size", "invalid_field", "party_full"})


@dataclass(frozen=True, slots=True)
class PopulationOptions:
    address: str
    population: population_model.Population
    timeout: float
    connect_rate: float
    game_servers: int = 0
    game_server_regions: tuple[str, ...] = ()
    """Regions of the bot game servers, ``game_servers`` in each; empty: the population's regions."""
    match_seconds: float = 3.0
    game_server_secret: str | None = None
    progress: bool = False
    auth: AuthSettings | None = None
    """Settings to mint each bot's token with; None for a daemon in development mode."""
    private_key: str | None = None
    """PEM private key file to sign tokens with instead of the HS256 secret of ``auth``."""


class Phase(enum.Enum):
    WAITING = "waiting"
    """Before the group's arrival time."""
    JOINING = "joining"
    """Logging in, forming the party or sending join_queue."""
    QUEUED = "queued"
    READY_CHECK = "ready_check"
    RETURNING = "returning"
    """Waiting to queue again after a cancel or a disconnect."""
    STARTED = "started"
    FAILED = "failed"


class Rejected(Exception):
    """The server rejected a request with an error that the group cannot work around."""

    def __init__(self, request: str, code: str, message: str) -> None:
        super().__init__(f"{request} was rejected with {code}: {message}")
        self.code = code


# Command line.


def run_cli(args: argparse.Namespace, game_server_secret: str | None, auth: AuthSettings | None = None) -> int:
    """Run ``lobbyd sim --population`` with checked arguments; print the report and return the exit code."""
    try:
        model = population_model.load(
            args.population, players=args.players, arrival_rate=args.arrival_rate, seed=args.seed, queue=args.queue
        )
    except population_model.PopulationError as exc:
        print(f"lobbyd sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    regions = tuple(name.strip() for name in (args.game_server_regions or "").split(",") if name.strip())
    options = PopulationOptions(
        address=args.connect,
        population=model,
        timeout=args.timeout,
        connect_rate=args.connect_rate,
        game_servers=args.game_servers,
        game_server_regions=regions,
        match_seconds=args.match_seconds,
        game_server_secret=game_server_secret,
        progress=not args.no_progress and sys.stderr.isatty(),
        auth=auth,
        private_key=args.private_key,
    )
    try:
        sim = uvloop.run(run_population(options))
    except KeyboardInterrupt:
        return 130
    except SimAborted as exc:
        print(f"lobbyd sim: {exc}", file=sys.stderr)
        return EXIT_FAILED

    band_by = args.band_by or report.BAND_BY_SKILL
    built, samples = live_report.build(
        sim.observations,
        sim.player_facts(),
        source=str(args.population),
        duration_s=sim.ended - sim.began,
        band_width=args.band_width or report.DEFAULT_BAND_WIDTH,
        band_by=band_by,
    )
    summary = sim.summary()
    print(report.format_report(built, clock="real"))
    print()
    print(live_report.format_summary(summary))
    if args.json is not None:
        document = report.Document(reports=[built])
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(document)) + b"\n")
    if args.plots is not None:
        from lobbyd.tuning import plots

        label = plots.SKILL_LABEL if band_by == report.BAND_BY_SKILL else plots.RATING_LABEL
        plots.write(args.plots, [(built.policy, samples)], label)
    return EXIT_OK if summary.ok else EXIT_FAILED


# The run.


async def run_population(options: PopulationOptions) -> PopulationSim:
    """Run the population against the daemon at ``options.address``; return the finished run."""
    await probe_daemon(options.address)
    sim = PopulationSim(options)
    await sim.run()
    return sim


class PopulationSim:
    """The groups and bots of one run and what they observed."""

    def __init__(self, options: PopulationOptions) -> None:
        self.options = options
        self.population = options.population
        self.run_id = secrets.token_hex(3)
        self.behaviour = population_model.PopulationBehaviour(options.population)
        self.pacer = Pacer(options.connect_rate)
        self.observations = Observations()
        self.send_roles = True
        self.roles_dropped = False
        self.match_size: int | None = None
        self.unexpected_closes = 0
        self.end_reason = ""
        self.began = 0.0
        self.ended = 0.0
        self._stalled_since: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task_group: asyncio.TaskGroup | None = None

        numbers = itertools.count()
        self.groups = [Group(self, join, numbers) for join in population_model.generate(options.population)]
        self.bots = {bot.id: bot for group in self.groups for bot in group.members}
        self.league: League | None = None
        if options.game_servers:
            assert options.game_server_secret is not None
            self.league = League(
                options.address,
                self.run_id,
                options.population.queue,
                list(self.bots),
                options.game_servers,
                options.game_server_secret,
                options.match_seconds,
                options.population.seed,
                self.ratings,
                skills={bot.id: bot.hidden_skill for bot in self.bots.values()},
                regions=options.game_server_regions or tuple(sorted(options.population.regions)),
            )

    # The run.

    async def run(self) -> None:
        """Run every group until the run ends, then close every connection."""
        loop = asyncio.get_running_loop()
        self.began = loop.time()
        # An exception raised in a TaskGroup's body leaves it wrapped in an ExceptionGroup.
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                if self.league is not None:
                    self._tasks.update(await self.league.start_registered(task_group))
                for group in self.groups:
                    self.spawn(group.run())
                self.end_reason = await self._watch()
                if self.finished:
                    await asyncio.sleep(SETTLE_TIME)
                if self.league is not None:
                    await self.league.settle(SETTLE_TIME)
                for task in list(self._tasks):
                    task.cancel()
        except* LeagueFailed as failed:
            raise SimAborted(str(failed.exceptions[0])) from None
        self.ended = loop.time()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` as a task of the run, cancelled when the run ends."""
        assert self._task_group is not None
        task = self._task_group.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, offset: float) -> None:
        """Sleep until ``offset`` seconds after the start of the run."""
        await asyncio.sleep(max(self.began + offset - self.now(), 0.0))

    def drop_roles(self) -> None:
        """Stop sending roles: the daemon's queue has none, or not the population's."""
        self.send_roles = False
        self.roles_dropped = True

    def skill_of(self, player: str) -> Skill | None:
        bot = self.bots.get(player)
        return bot.skill if bot is not None else None

    def ratings(self) -> dict[str, tuple[float, float, int]]:
        """Return every bot's mu, sigma and display rating on the server, for the league's samples."""
        known = {}
        for bot in self.bots.values():
            if bot.skill is not None:
                known[bot.id] = (bot.skill.mu, bot.skill.sigma, bot.rating)
        return known

    def summary(self) -> live_report.Summary:
        """Return the run's own figures: double matches, failures, disconnects and why it ended."""
        starts = live_report.starts_per_player(self.observations, self.bots)
        failed = [group for group in self.groups if group.failure is not None]
        league_failure = self.league.failure if self.league is not None else None
        return live_report.Summary(
            players=len(self.bots),
            groups=len(self.groups),
            started=starts[1] + starts[2],
            matched_more_than_once=starts[2],
            never_matched=starts[0],
            groups_failed=len(failed),
            first_failure=failed[0].failure if failed else league_failure,
            unexpected_closes=self.unexpected_closes,
            server_errors=dict(sorted(self.observations.server_errors.items())),
            roles_dropped=self.roles_dropped,
            results_applied=self.league.results if self.league is not None else None,
            game_server_errors=self.league.errors() if self.league is not None else {},
            end=self.end_reason,
            ok=not starts[2] and not failed and league_failure is None,
        )

    def player_facts(self) -> dict[str, PlayerFacts]:
        return {bot.id: PlayerFacts(self.population.queue, bot.hidden_skill, bot.rating) for bot in self.bots.values()}

    # The end.

    @property
    def finished(self) -> bool:
        """True when every group started a match or gave up."""
        return all(group.done for group in self.groups)

    async def _watch(self) -> str:
        """Wait until the run ends; return why it ended."""
        try:
            async with asyncio.timeout(self.options.timeout):
                while True:
                    reason = self._check_end()
                    if reason is not None:
                        return reason
                    if self.options.progress:
                        self._draw_progress()
                    await asyncio.sleep(WATCH_INTERVAL)
        except TimeoutError:
            return f"the deadline of {self.options.timeout:g} s passed"
        finally:
            if self.options.progress:
                sys.stderr.write("\n")

    def _draw_progress(self) -> None:
        """Redraw one status line on stderr: players per phase of their group."""
        players: collections.Counter[Phase] = collections.Counter()
        for group in self.groups:
            players[group.phase()] += len(group.members)
        counts = "  ".join(f"{phase.value} {players[phase]}" for phase in Phase if players[phase])
        sys.stderr.write(f"\r{counts}  {self.now() - self.began:.1f} s\x1b[K")
        sys.stderr.flush()

    def _check_end(self) -> str | None:
        """Return why the run ends now, or None while it goes on."""
        if self.finished:
            return "every group started a match or gave up"
        if self.league is not None and self.league.failure is not None:
            return self.league.failure
        phases = collections.Counter(group.phase() for group in self.groups)
        busy = phases[Phase.WAITING] + phases[Phase.JOINING] + phases[Phase.READY_CHECK] + phases[Phase.RETURNING]
        queued = sum(len(group.members) for group in self.groups if group.phase() is Phase.QUEUED)
        if busy or self.match_size is None or queued >= self.match_size:
            self._stalled_since = None
            return None
        self._stalled_since = self._stalled_since or self.now()
        if self.now() - self._stalled_since < STALL_TIME:
            return None
        return f"{queued} players are still queued, fewer than the {self.match_size} a match needs"


class Group:
    """One arrival of the population, a solo player or a party, from its arrival to its match_start."""

    def __init__(self, sim: PopulationSim, join: Join, numbers: Iterator[int]) -> None:
        self.sim = sim
        self.join = join
        leader = Member(
            player=join.player,
            rating=join.rating,
            mu=join.mu,
            sigma=join.sigma,
            skill=join.skill,
            roles=join.roles,
            latency=join.latency,
        )
        self.members = [PlayerBot(self, person, next(numbers)) for person in [leader, *join.members]]
        self.arrived = False
        self.joining = False
        self.started = False
        self.failure: str | None = None
        self.joined_at: float | None = None
        """Loop time of the join_queue that made the current ticket."""
        self.return_at: float | None = None
        """Loop time to queue again; None while no return is due."""
        self.party_formed = len(self.members) == 1
        self.send_roles = True
        """False once the daemon rejected this group's role lists; it then queues for any role."""
        self._formed_before = False
        self._returns: set[str] = set()
        self._closes = 0
        self._attempts = 0
        self._wake = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.started or self.failure is not None

    def phase(self) -> Phase:
        if self.failure is not None:
            return Phase.FAILED
        if self.started:
            return Phase.STARTED
        if not self.arrived:
            return Phase.WAITING
        if self.joining:
            return Phase.JOINING
        # The server may have requeued the ticket and offered it again before a due return.
        if any(bot.open_checks for bot in self.members):
            return Phase.READY_CHECK
        if self.return_at is not None:
            return Phase.RETURNING
        return Phase.QUEUED

    async def run(self) -> None:
        await self.sim.sleep_until(self.join.t)
        self.arrived = True
        self.return_at = self.sim.now()
        while True:
            await self._wait_for_return()
            if self.done:
                return
            self.return_at = None
            retry = await self._enter_queue()
            if retry is not None and not self.done:
                self._schedule(self.sim.now() + retry)

    async def _wait_for_return(self) -> None:
        """Sleep until ``return_at``, which may move later meanwhile, or until the group is done."""
        while not self.done:
            self._wake.clear()
            if self.return_at is None:
                await self._wake.wait()
                continue
            delay = self.return_at - self.sim.now()
            if delay <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    # Events from the members.

    def schedule_return(self, key: str, reason: str) -> None:
        """Queue again after the population's delay for ``reason``, once per ``key`` (a match id or a close)."""
        if self.done or key in self._returns:
            return
        self._returns.add(key)
        delay = self.sim.behaviour.return_after(reason)
        if delay is not None:
            self._schedule(self.sim.now() + delay)

    def on_closed(self, bot: PlayerBot, deliberate: bool) -> None:
        """Handle a member's closed connection: the server took them out of the party and the queue."""
        if len(self.members) > 1:
            self.party_formed = False
        if self.done:
            return
        if not deliberate:
            bot.unexpected_closes += 1
            self.sim.unexpected_closes += 1
            if bot.unexpected_closes >= MAX_UNEXPECTED_CLOSES:
                self.give_up(f"{bot.id} lost the connection {MAX_UNEXPECTED_CLOSES} times")
                return
        self._closes += 1
        self.schedule_return(f"close {self._closes}", "disconnected")

    def on_started(self) -> None:
        self.started = True
        self._wake.set()

    def give_up(self, reason: str) -> None:
        self.failure = reason
        self._wake.set()

    def _schedule(self, at: float) -> None:
        self.return_at = at if self.return_at is None else max(self.return_at, at)
        self._wake.set()

    # Queueing.

    async def _enter_queue(self) -> float | None:
        """Log in, form the party and join the queue; return None when queued or given up, else seconds to retry."""
        self.joining = True
        try:
            for bot in self.members:
                if bot.client is None:
                    await bot.log_in()
            if not self.party_formed:
                await self._form_party()
            return await self._join()
        except Rejected as exc:
            self.sim.observations.rejected[exc.code] += 1
            if exc.code in FATAL_CODES:
                self.give_up(str(exc))
                return None
            return self._failed(str(exc))
        except CONNECTION_ERRORS as exc:
            return self._failed(f"a connection failed: {str(exc) or type(exc).__name__}")
        finally:
            self.joining = False

    def _failed(self, reason: str) -> float | None:
        self._attempts += 1
        if self._attempts >= MAX_ATTEMPTS:
            self.give_up(f"{MAX_ATTEMPTS} attempts to queue failed, the last because {reason}")
            return None
        return RETRY_DELAY

    async def _form_party(self) -> None:
        leader = self.members[0]
        if self._formed_before:
            # A member's disconnect changed the party on the server: build it again from scratch.
            for bot in self.members:
                await bot.request("leave_party", allowed={"not_in_party"})
        party = await leader.request("create_party")
        # From here on a retry must leave the half-built party first.
        self._formed_before = True
        for bot in self.members[1:]:
            await leader.request("invite_to_party", player=bot.id)
            await bot.request("join_party", party=party["party"])
        self.party_formed = True
        self._formed_before = True

    async def _join(self) -> float | None:
        previous = self.joined_at
        # Set before sending, because match_found can be read before this task resumes.
        self.joined_at = self.sim.now()
        fields = self._join_fields()
        reply = await self.members[0].call("join_queue", **fields)
        if reply.get("type") == "queued":
            self._attempts = 0
            return None

        self.joined_at = previous
        code = str(reply.get("code"))
        message = str(reply.get("message", ""))
        if code in STILL_QUEUED:
            return None
        if code == "queue_locked":
            return int(reply.get("retry_after_ms", 0)) / 1000
        sent_roles = "roles" in fields or "party_roles" in fields
        if code == "invalid_field" and sent_roles and message.startswith(("roles", "party_roles")):
            # Other groups may have sent roles before the first rejection arrived, so they
            # come here too. Lists that only this group's party cannot hold are its own problem.
            if NO_ROLES_MESSAGE in message:
                self.sim.drop_roles()
            else:
                self.send_roles = False
                self.sim.observations.rejected[code] += 1
            return 0.0
        self.sim.observations.rejected[code] += 1
        if code in FATAL_CODES:
            self.give_up(f"join_queue was rejected with {code}: {message}")
            return None
        return self._failed(f"join_queue was rejected with {code}: {message}")

    def _join_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"queue": self.join.queue}
        # The leader's latency stands for the whole party on the server.
        if self.join.latency:
            fields["latency"] = dict(self.join.latency)
        if not (self.sim.send_roles and self.send_roles):
            return fields
        if self.join.roles:
            fields["roles"] = list(self.join.roles)
        party_roles = {bot.id: list(bot.person.roles) for bot in self.members[1:] if bot.person.roles}
        if party_roles:
            fields["party_roles"] = party_roles
        return fields


class PlayerBot:
    """One population player's connection: logs in, answers ready checks and records its matches."""

    def __init__(self, group: Group, person: Member, number: int) -> None:
        self.group = group
        self.sim = group.sim
        self.person = person
        self.id = f"sim-{self.sim.run_id}-{person.player}"
        self.hidden_skill = person.skill if person.skill is not None else self.sim.population.skill_mean
        self.source = source_address(self.sim.options.address, number)
        self.client: LobbyClient | None = None
        self.skill: Skill | None = None
        """The server's skill estimate for this player, from get_profile and rating_changed."""
        self.rating = DISPLAY_BASE
        """The server's display rating for this player; a new player's until welcome says otherwise."""
        self.open_checks: set[str] = set()
        """Ready checks this player is in: match_found came, and neither match_start nor a cancel yet."""
        self.unexpected_closes = 0
        self._found_waits: dict[str, float] = {}
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._answers: set[int] = set()
        """Rids of this connection's accepts and declines, to recognize the error a late one gets."""
        self._rids = itertools.count(1)
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "match_found": self._on_match_found,
            "match_cancelled": self._on_match_cancelled,
            "match_start": self._on_match_start,
            "rating_changed": self._on_rating_changed,
            "error": self._on_error,
        }

    # Connection.

    async def log_in(self) -> None:
        """Connect, say hello and learn the server's skill for this player."""
        await self.sim.pacer.wait()
        client = await LobbyClient.connect(self.sim.options.address, source=self.source)
        try:
            options = self.sim.options
            token = bot_token(options.auth, options.private_key, self.id, options.timeout)
            welcome = await send_hello(client, self.id, token)
        except BaseException:
            await client.close()
            raise
        self.client = client
        self.rating = int(welcome.get("rating", self.rating))
        # Each connection numbers its rids afresh; hello's rid 1 is answered already.
        self._rids = itertools.count(2)
        self._answers.clear()
        keep_alive = self.sim.spawn(self._keep_alive(client, int(welcome["heartbeat_ms"]) / 2000))
        self._reader = self.sim.spawn(self._read(client, keep_alive))
        profile = await self.request("get_profile")
        self.skill = Skill(float(profile["mu"]), float(profile["sigma"]))

    def drop(self) -> None:
        """Disconnect on purpose, as the population's disconnect answer does."""
        client = self.client
        if client is None:
            return
        self._disconnected(client)
        if self._reader is not None:
            # The reader's cleanup closes the socket.
            self._reader.cancel()
        self.group.on_closed(self, deliberate=True)

    async def _read(self, client: LobbyClient, keep_alive: asyncio.Task[None]) -> None:
        try:
            while True:
                self._dispatch(await client.recv(timeout=None))
        except CONNECTION_ERRORS:
            pass
        finally:
            keep_alive.cancel()
            self._disconnected(client)
            await client.close()
        self.group.on_closed(self, deliberate=False)

    def _disconnected(self, client: LobbyClient) -> None:
        if self.client is not client:
            return
        self.client = None
        self.open_checks.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{self.id} lost the connection"))
        self._pending.clear()

    async def _keep_alive(self, client: LobbyClient, interval: float) -> None:
        # A failed ping ends the heartbeat; the reader then sees the closed connection.
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await asyncio.sleep(interval)
                await client.request("ping", rid=next(self._rids))

    # Requests.

    async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply or error; raise ``ConnectionError`` if the connection ends first."""
        client = self.client
        if client is None:
            msg = f"{self.id} is not connected"
            raise ConnectionError(msg)
        rid = next(self._rids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await client.request(type_, rid=rid, **fields)
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await future
        finally:
            self._pending.pop(rid, None)

    async def request(self, type_: str, allowed: set[str] | None = None, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply; raise ``Rejected`` on an error whose code is not in ``allowed``."""
        reply = await self.call(type_, **fields)
        code = str(reply.get("code"))
        if reply.get("type") == "error" and code not in (allowed or set()):
            raise Rejected(type_, code, str(reply.get("message")))
        return reply

    async def _answer(self, client: LobbyClient, match: str) -> None:
        """Answer ``match_found`` as the population says, after its delay."""
        if self.group.started:
            # A player matched again accepts at once, so that the report shows the second match.
            await self._send_answer(client, "accept", match)
            return
        action, delay = self.sim.behaviour.answer(self.person.player, match)
        await asyncio.sleep(delay)
        if match not in self.open_checks or self.client is not client:
            return
        if action == "disconnect":
            self.drop()
            return
        await self._send_answer(client, action, match)

    async def _send_answer(self, client: LobbyClient, action: str, match: str) -> None:
        rid = next(self._rids)
        self._answers.add(rid)
        with contextlib.suppress(ConnectionError, OSError):
            await client.request(action, rid=rid, match=match)

    # Messages.

    def _dispatch(self, message: dict[str, Any]) -> None:
        rid = message.get("rid")
        if isinstance(rid, int):
            future = self._pending.pop(rid, None)
            if future is not None:
                if not future.done():
                    future.set_result(message)
                return
            if message.get("type") == "error" and rid in self._answers:
                self.sim.observations.late_answers += 1
                return
        handler = self._handlers.get(str(message.get("type")))
        if handler is not None:
            handler(message)

    def _on_match_found(self, message: dict[str, Any]) -> None:
        match = str(message["match"])
        self.sim.match_size = int(message["players"])
        self.open_checks.add(match)
        joined = self.group.joined_at
        self._found_waits[match] = self.sim.now() - joined if joined is not None else 0.0
        if self.client is not None:
            self.sim.spawn(self._answer(self.client, match))

    def _on_match_cancelled(self, message: dict[str, Any]) -> None:
        match = str(message["match"])
        reason = str(message["reason"])
        self.open_checks.discard(match)
        self._found_waits.pop(match, None)
        self.sim.observations.cancelled.setdefault(match, reason)
        if "penalty_level" in message:
            self.sim.observations.penalties[self.id] += 1
        if not message.get("requeued"):
            self.group.schedule_return(match, reason)

    def _on_match_start(self, message: dict[str, Any]) -> None:
        match = str(message["match"])
        self.open_checks.discard(match)
        wait = self._found_waits.pop(match, None)
        if wait is None:
            wait = self.sim.now() - (self.group.joined_at or self.sim.now())
        role = message.get("role")
        autofilled = bool(message.get("autofilled", False)) if isinstance(role, str) else None
        seat = Seat(wait, role if isinstance(role, str) else None, autofilled)
        self.sim.observations.record_start(self.id, message, seat, self.sim.skill_of)
        self.group.on_started()

    def _on_rating_changed(self, message: dict[str, Any]) -> None:
        self.skill = Skill(float(message["mu"]), float(message["sigma"]))
        self.rating = int(message["rating"])

    def _on_error(self, message: dict[str, Any]) -> None:
        self.sim.observations.server_errors[str(message.get("code"))] += 1
