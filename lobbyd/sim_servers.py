"""Bot game servers for ``lobbyd sim --game-servers N``, and the rating convergence they show.

Each bot server is one ``LobbyClient`` that registers for the sim's queue, acknowledges
every ``allocate``, plays the match for ``--match-seconds`` and reports a result. The
result is random but not arbitrary: every bot player has a hidden skill, drawn once per
run, and teams place as the Plackett-Luce model says teams of those skills would. Each
team's performance is the sum of its hidden skills divided by ``c`` plus standard Gumbel
noise, which orders teams exactly by Plackett-Luce probabilities; ``c`` is
``sqrt(teams) * beta``, the value OpenSkill's own ``c`` reaches once sigmas are small.
If ratings work, ``sigma`` shrinks, the correlation of ``mu`` with the hidden skills
rises, and the spread of ``mu`` grows from zero and levels off. It levels off above the
hidden spread while sigmas are still large, because the model's scale ``c`` grows with
sigma: in a 400-player 1v1 run of 20 rounds it reached about twice the hidden spread
(measured with this module against a local daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from lobbyd.client import ClientError, LobbyClient

# OpenSkill's default beta, the performance spread per team, in mu units.
BETA: Final = 25.0 / 6.0
# Hidden skills are drawn around OpenSkill's starting mu with this standard deviation.
HIDDEN_SKILL_SD: Final = 5.0
# Seconds the bot game servers have to register before a run gives up.
REGISTER_TIMEOUT: Final = 10.0
# Convergence is sampled this many times over the expected number of results.
CONVERGENCE_SAMPLES: Final = 10


@dataclass(frozen=True, slots=True)
class ConvergencePoint:
    """The players' ratings after ``results`` results."""

    results: int
    mean_sigma: float
    mu_sd: float
    """Standard deviation of the players' mu, to compare with the hidden skills' spread."""
    rating_sd: float
    """Standard deviation of the players' display ratings."""
    correlation: float | None
    """Pearson correlation of mu with the hidden skill; None while every mu is equal."""


def hidden_skills(players: Sequence[str], seed: int | None) -> dict[str, float]:
    """Draw each player's hidden skill; the same seed draws the same skills."""
    rng = random.Random(f"hidden:{seed}" if seed is not None else None)
    return {player: rng.gauss(25.0, HIDDEN_SKILL_SD) for player in players}


def play(teams: Sequence[Sequence[str]], skills: dict[str, float], rng: random.Random) -> list[int]:
    """Return each team's place, 0 first, drawn from the Plackett-Luce model of the hidden skills."""
    scale = math.sqrt(len(teams)) * BETA
    performance = [sum(skills[player] for player in team) / scale + _gumbel(rng) for team in teams]
    order = sorted(range(len(teams)), key=lambda team: -performance[team])
    places = [0] * len(teams)
    for place, team in enumerate(order):
        places[team] = place
    return places


def _gumbel(rng: random.Random) -> float:
    # random() is in [0, 1); 1 - random() is in (0, 1], and the guard keeps log(1) = 0 out of log.
    uniform = min(1.0 - rng.random(), 1.0 - 1e-12)
    return -math.log(-math.log(uniform))


def convergence_point(
    results: int, ratings: dict[str, tuple[float, float, int]], skills: dict[str, float]
) -> ConvergencePoint:
    """Summarize ``ratings`` (mu, sigma, display rating per player) against the hidden skills."""
    players = sorted(ratings)
    mus = [ratings[player][0] for player in players]
    hidden = [skills[player] for player in players]
    correlation = None
    if len(players) > 1 and statistics.pstdev(mus) > 0:
        correlation = round(statistics.correlation(mus, hidden), 3)
    return ConvergencePoint(
        results=results,
        mean_sigma=round(statistics.fmean(ratings[player][1] for player in players), 3),
        mu_sd=round(statistics.pstdev(mus), 3),
        rating_sd=round(statistics.pstdev(ratings[player][2] for player in players), 1),
        correlation=correlation,
    )


class BotServer:
    """One bot game server: registers, hosts every match it is sent, reports a result."""

    def __init__(
        self,
        address: str,
        server_id: str,
        secret: str,
        queue: str,
        capacity: int,
        match_seconds: float,
        skills: dict[str, float],
        rng: random.Random,
        on_result: Callable[[], None],
        region: str = "default",
    ) -> None:
        self.address = address
        self.region = region
        self.server_id = server_id
        self.secret = secret
        self.queue = queue
        self.capacity = capacity
        self.match_seconds = match_seconds
        self.skills = skills
        self.rng = rng
        self.on_result = on_result
        self.errors: dict[str, int] = {}
        self.results_applied = 0
        self.reports_unanswered = 0
        """Results sent whose ``result_applied`` or ``error`` has not arrived yet."""
        self.registered = asyncio.Event()
        self._games: dict[str, asyncio.Task[None]] = {}
        self._write_lock = asyncio.Lock()

    async def run(self) -> None:
        """Serve until cancelled; raise ``ClientError`` if the lobby rejects or drops the server."""
        client = await LobbyClient.connect(self.address)
        try:
            # Bot players never dial the game server, so the address only has to be valid.
            address = f"{self.server_id}.sim.invalid:7777"
            registered = await client.register(
                self.server_id, self.secret, address, [self.queue], self.capacity, self.region
            )
            self.registered.set()
            heartbeat = asyncio.create_task(self._keep_alive(client, int(registered["heartbeat_ms"]) / 2000))
            try:
                await self._serve(client)
            finally:
                heartbeat.cancel()
                for game in self._games.values():
                    game.cancel()
        finally:
            await client.close()

    async def _serve(self, client: LobbyClient) -> None:
        while True:
            message = await client.recv(timeout=None)
            kind = message.get("type")
            if kind == "allocate":
                await self._send(client, {"type": "allocated", "match": message["match"]})
                game = asyncio.create_task(self._host(client, str(message["match"]), message["teams"]))
                self._games[str(message["match"])] = game
            elif kind == "deallocate":
                stopped = self._games.pop(str(message["match"]), None)
                if stopped is not None:
                    stopped.cancel()
            elif kind in ("result_applied", "error"):
                self.on_reply(message)
            elif kind == "kicked":
                msg = f"game server {self.server_id} was kicked: {message.get('reason')}"
                raise ClientError(msg)

    def stop_games(self) -> None:
        """Cancel every game still being played, so that it reports no result."""
        for game in self._games.values():
            game.cancel()
        self._games.clear()

    def on_reply(self, message: dict[str, Any]) -> None:
        """Count a ``result_applied`` or an ``error`` from the lobby."""
        self.reports_unanswered = max(self.reports_unanswered - 1, 0)
        if message["type"] == "result_applied":
            self.results_applied += 1
            self.on_result()
            return
        code = str(message.get("code"))
        self.errors[code] = self.errors.get(code, 0) + 1

    async def _host(self, client: LobbyClient, match: str, teams: list[list[str]]) -> None:
        await asyncio.sleep(self.match_seconds)
        places = play(teams, self.skills, self.rng)
        self._games.pop(match, None)
        await self.report(client, match, places)

    async def report(self, client: LobbyClient, match: str, places: list[int]) -> None:
        """Send the ``match_result`` of ``match``: ``places`` has one place per team, 0 first."""
        self.reports_unanswered += 1
        await self._send(client, {"type": "match_result", "match": match, "ranks": places})

    async def _send(self, client: LobbyClient, message: dict[str, Any]) -> None:
        # A closed connection is seen and reported by the read loop in ``run``, so a
        # game or heartbeat task that writes after it just stops.
        async with self._write_lock:
            if client.writer.is_closing():
                return
            with contextlib.suppress(ConnectionError):
                await client.send(message)

    async def _keep_alive(self, client: LobbyClient, interval: float) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await asyncio.sleep(interval)
                await self._send(client, {"type": "ping"})


def server_capacity(players: int, servers: int) -> int:
    """Return a per-server capacity that fits every player in a match at once, whatever the match size."""
    return max(1, math.ceil(players / servers))


Ratings = Callable[[], dict[str, tuple[float, float, int]]]


class LeagueFailed(Exception):
    """The bot game servers could not register with the lobby."""


class League:
    """The bot game servers of one run, the hidden skills, and convergence samples."""

    def __init__(
        self,
        address: str,
        run_id: str,
        queue: str,
        players: Sequence[str],
        servers: int,
        secret: str,
        match_seconds: float,
        seed: int | None,
        ratings: Ratings,
        skills: dict[str, float] | None = None,
        regions: Sequence[str] = ("default",),
    ) -> None:
        """Make ``servers`` bot game servers in each of ``regions``.

        ``skills`` are the players' hidden skills; None draws them with ``hidden_skills``.
        """
        self.skills = skills if skills is not None else hidden_skills(players, seed)
        self.ratings = ratings
        self.results = 0
        self.sample_every: int | None = None
        self.expected_results = 0
        self.convergence: list[ConvergencePoint] = []
        self.failure: str | None = None
        capacity = server_capacity(len(players), servers)
        self.servers = [
            BotServer(
                address,
                f"sim-{run_id}-gs-{number}",
                secret,
                queue,
                capacity,
                match_seconds,
                self.skills,
                random.Random(f"{seed}:gs{number}" if seed is not None else None),
                self.count_result,
                region,
            )
            for number, region in enumerate(region for region in regions for _ in range(servers))
        ]

    def start(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        return [group.create_task(self._run(server)) for server in self.servers]

    async def wait_registered(self) -> None:
        """Return once every server registered; raise ``ClientError`` if one failed."""
        while not all(server.registered.is_set() for server in self.servers):
            if self.failure is not None:
                raise ClientError(self.failure)
            await asyncio.sleep(0.01)

    async def start_registered(self, group: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """Start every server in ``group`` and wait up to ``REGISTER_TIMEOUT`` until all registered.

        Raises ``LeagueFailed`` after cancelling the servers' tasks if one failed or time ran out.
        """
        tasks = self.start(group)
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT):
                await self.wait_registered()
        except (ClientError, TimeoutError) as exc:
            for task in tasks:
                task.cancel()
            msg = f"the bot game servers could not register: {exc or 'timed out'}"
            raise LeagueFailed(msg) from None
        return tasks

    async def settle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the replies to every result already sent.

        A result is applied as soon as the lobby reads it, so stopping the servers
        before its reply arrives would count fewer results than the lobby applied.
        """
        # Games still being played end unreported, so no new result goes out meanwhile.
        for server in self.servers:
            server.stop_games()
        deadline = asyncio.get_running_loop().time() + seconds
        while any(server.reports_unanswered for server in self.servers):
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.01)

    def expect(self, players: int, rounds: int, match_size: int) -> None:
        """Set how many results a run should see, which spaces the convergence samples."""
        self.expected_results = max(1, players * rounds // match_size)
        self.sample_every = max(1, self.expected_results // CONVERGENCE_SAMPLES)

    def count_result(self) -> None:
        self.results += 1
        if self.sample_every is not None and self.results % self.sample_every == 0:
            self.sample()

    def sample(self) -> None:
        if self.convergence and self.convergence[-1].results == self.results:
            return
        self.convergence.append(convergence_point(self.results, self.ratings(), self.skills))

    def errors(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for server in self.servers:
            for code, count in server.errors.items():
                merged[code] = merged.get(code, 0) + count
        return dict(sorted(merged.items()))

    async def _run(self, server: BotServer) -> None:
        try:
            await server.run()
        except (ClientError, OSError) as exc:
            self.failure = self.failure or f"game server {server.server_id} failed: {exc}"
