"""Bot game servers for the crash test: they host matches, report results and try to apply them twice.

Each ``CrashServer`` is a ``BotServer`` (``lobbyd/sim_servers.py``) that registers for
one queue, acknowledges every ``allocate`` and reports a random result after
``MATCH_SECONDS``. On top of that it tries to get a result applied a second time:

- right after a share of its reports (``repeat_share``), it reports the same match
  again with the places reversed, which must get ``already_reported``;
- when it registers after a restart, it reports again every result that the server of
  the same id sent in the generation before, acknowledged or not. That must get an
  error too (``unknown_match``, because hosted matches live only in memory).

Every reply is matched to its report by ``rid`` and written to the ``ResultLedger``
that all generations share. A ``result_applied`` to a repeated report, or a second
one for the same match, is recorded in ``applied_twice``.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Final

from lobbyd.client import LobbyClient
from lobbyd.sim_servers import BotServer

# The daemon's game_server_secret in the crash test; 32 characters at least.
GAME_SERVER_SECRET: Final = "crash-test-game-server-secret-0123456789"
# Seconds a bot game server plays each match before it reports the result.
MATCH_SECONDS: Final = 0.15
# Matches each bot game server may host at once: more than the bots can fill.
CAPACITY: Final = 500


class ReportKind(enum.Enum):
    FIRST = "first"
    REPEAT = "repeat"
    """The same match again, right after the first report."""
    AFTER_RESTART = "after_restart"
    """A result of the generation before, sent again after the daemon restarted."""


@dataclass(slots=True)
class ResultLedger:
    """Every result the bot game servers reported and what the lobby replied, over all generations."""

    applied: dict[str, list[int]] = field(default_factory=dict)
    """Places of every match whose first report got ``result_applied``, by match id."""
    applied_twice: list[str] = field(default_factory=list)
    """Matches whose result got a second ``result_applied``: always a failure."""
    reported: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    """First reports of the current generation, by server id, then match id."""
    replies: collections.Counter[str] = field(default_factory=collections.Counter)
    """Replies by report kind and outcome, such as ``repeat:already_reported``."""

    def next_generation(self) -> dict[str, dict[str, list[int]]]:
        """Return the reports of the generation that ended, to send again, and start a new one."""
        previous, self.reported = self.reported, {}
        return previous


class CrashServer(BotServer):
    """A bot game server that records every reply and repeats reports on purpose."""

    def __init__(
        self, address: str, server_id: str, queue: str, ledger: ResultLedger, again: dict[str, list[int]],
        repeat_share: float, rng: random.Random,
    ) -> None:
        # Equal hidden skills: every team order is equally likely.
        skills: dict[str, float] = collections.defaultdict(lambda: 25.0)
        secret = GAME_SERVER_SECRET
        super().__init__(address, server_id, secret, queue, CAPACITY, MATCH_SECONDS, skills, rng, lambda: None)
        self.ledger = ledger
        self.again = again
        self.repeat_share = repeat_share
        """Share of reports sent a second time at once, with the places reversed."""
        self._rids = itertools.count(1)
        self._sent: dict[int, tuple[ReportKind, str, list[int]]] = {}
        self.unanswered_again = len(again)
        """Reports of the generation before that got no reply yet."""
        self.again_answered = asyncio.Event()
        if not again:
            self.again_answered.set()

    async def _serve(self, client: LobbyClient) -> None:
        for match, places in self.again.items():
            await self._report(client, ReportKind.AFTER_RESTART, match, places)
        await super()._serve(client)

    async def report(self, client: LobbyClient, match: str, places: list[int]) -> None:
        self.ledger.reported.setdefault(self.server_id, {})[match] = places
        await self._report(client, ReportKind.FIRST, match, places)
        if self.rng.random() < self.repeat_share:
            await self._report(client, ReportKind.REPEAT, match, places[::-1])

    async def _report(self, client: LobbyClient, kind: ReportKind, match: str, places: list[int]) -> None:
        rid = next(self._rids)
        self._sent[rid] = (kind, match, places)
        await self._send(client, {"type": "match_result", "match": match, "ranks": places, "rid": rid})

    def on_reply(self, message: dict[str, Any]) -> None:
        sent = self._sent.pop(int(message.get("rid", -1)), None)
        if sent is None:
            self.ledger.replies["unmatched_reply"] += 1
            return
        kind, match, places = sent
        if kind is ReportKind.AFTER_RESTART:
            self.unanswered_again -= 1
            if not self.unanswered_again:
                self.again_answered.set()
        if message["type"] != "result_applied":
            self.ledger.replies[f"{kind.value}:{message.get('code')}"] += 1
            return

        self.ledger.replies[f"{kind.value}:result_applied"] += 1
        if kind is not ReportKind.FIRST or match in self.ledger.applied:
            self.ledger.applied_twice.append(match)
        else:
            self.ledger.applied[match] = places


@dataclass(frozen=True, slots=True)
class ServerPlan:
    """How many bot game servers a generation runs, and how often they repeat a report."""

    queues: tuple[str, ...]
    per_queue: int
    repeat_share: float


def crash_servers(address: str, plan: ServerPlan, ledger: ResultLedger, rng: random.Random) -> list[CrashServer]:
    """Build the servers of a new generation, with the ids and the reports of the generation before."""
    again = ledger.next_generation()
    servers = []
    for queue in plan.queues:
        for number in range(plan.per_queue):
            server_id = f"crash-{queue}-{number}"
            repeats = again.get(server_id, {})
            server_rng = random.Random(rng.random())
            servers.append(
                CrashServer(address, server_id, queue, ledger, repeats, plan.repeat_share, server_rng)
            )
    return servers
