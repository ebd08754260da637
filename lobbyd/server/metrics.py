"""What the daemon counts as it runs, in the Prometheus data model.

Two kinds of numbers, chosen by how often they change:

* Per-frame numbers (frames and bytes in and out) are plain ``int`` attributes of
  each ``Session``: bytes are added once per read or write call, frames once per
  message. Closed sessions add theirs to this module's totals. Nothing on that path
  takes a lock or looks up a label.
* Everything else that counts (matches, ready-check outcomes, errors, reloads) is a
  plain ``collections.Counter`` here, and gauges (sessions, queue sizes) are read
  from the live state. A custom collector turns both into metric families when
  Prometheus scrapes, on the event loop, so it reads one consistent moment.

Durations (matchmaker tick, persistence flush, event-loop lag) are
``prometheus_client`` histograms, observed a few times per second at most.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from lobbyd.core.lobby import Lobby
    from lobbyd.server.registry import Registry
    from lobbyd.server.session import Session

# How often the event-loop lag probe wakes up, in seconds.
LAG_PROBE_INTERVAL_S: Final = 0.5

# Bucket bounds in seconds. A tick or a loop stall above 100 ms is felt by players;
# a flush runs off the loop's critical path and may take longer.
TICK_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FLUSH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FLUSH_RECORD_BUCKETS: Final = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Observed(Protocol):
    """The live state that gauges are read from at scrape time."""

    registry: Registry
    lobby: Lobby

    @property
    def draining(self) -> bool: ...


class Metrics:
    """Counters and histograms of one daemon, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started_at = time.time()

        # Totals of closed sessions; open ones are summed at scrape time.
        self.closed_frames_in = 0
        self.closed_frames_out = 0
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0

        self.errors_sent: Counter[str] = Counter()
        self.matches_found: Counter[str] = Counter()
        self.matches_started: Counter[str] = Counter()
        self.matches_cancelled: Counter[str] = Counter()
        self.ready_check_outcomes: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.last_loop_lag = 0.0

        self.tick_seconds = Histogram(
            "lobbyd_matchmaker_tick_seconds",
            "Time one matchmaker tick took: expiring ready checks and forming matches in every queue.",
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.flush_seconds = Histogram(
            "lobbyd_persistence_flush_seconds",
            "Time one write of changed records to the store took.",
            buckets=FLUSH_BUCKETS,
            registry=self.registry,
        )
        self.flush_records = Histogram(
            "lobbyd_persistence_flush_records",
            "Records written by one flush to the store (the batch size).",
            buckets=FLUSH_RECORD_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_seconds = Histogram(
            "lobbyd_event_loop_lag_seconds",
            f"How late a sleep of {LAG_PROBE_INTERVAL_S} s on the event loop woke up.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)

    def observe(self, server: Observed) -> None:
        """Expose the gauges and counters that are read from ``server`` at scrape time."""
        self.registry.register(_LiveCollector(self, server))

    def add_closed(self, session: Session) -> None:
        self.closed_frames_in += session.frames_in
        self.closed_frames_out += session.frames_out
        self.closed_bytes_in += session.bytes_in
        self.closed_bytes_out += session.bytes_out

    def record_event(self, name: str, fields: dict[str, object]) -> None:
        """Count a domain event of the core (``fx.Event``) that a metric follows."""
        if name == "match_found":
            self.matches_found[str(fields["queue"])] += 1
        elif name == "match_cancelled":
            reason = str(fields["reason"])
            self.matches_cancelled[reason] += 1
            self.ready_check_outcomes[reason] += 1
        elif name == "match_voided":
            self.matches_cancelled["undeliverable"] += 1
            self.ready_check_outcomes["undeliverable"] += 1

    async def watch_loop_lag(self) -> None:
        """Measure how late the event loop runs a timer, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_INTERVAL_S
            await asyncio.sleep(LAG_PROBE_INTERVAL_S)
            self.last_loop_lag = max(loop.time() - due, 0.0)
            self.loop_lag_seconds.observe(self.last_loop_lag)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics, server: Observed) -> None:
        self.metrics = metrics
        self.server = server

    def collect(self) -> Iterator[Metric]:
        yield from self._sessions()
        yield from self._queues()
        yield from self._counters()

    def _sessions(self) -> Iterator[Metric]:
        sessions = GaugeMetricFamily("lobbyd_sessions", "Open client connections, by framing.", labels=["framing"])
        for framing, count in sorted(self.server.registry.by_framing().items()):
            sessions.add_metric([framing], count)
        yield sessions

        totals = [self.metrics.closed_frames_in, self.metrics.closed_frames_out]
        totals += [self.metrics.closed_bytes_in, self.metrics.closed_bytes_out]
        for session in self.server.registry:
            totals[0] += session.frames_in
            totals[1] += session.frames_out
            totals[2] += session.bytes_in
            totals[3] += session.bytes_out
        yield CounterMetricFamily(
            "lobbyd_received_frames", "Frames received from clients that decoded to a message.", value=totals[0]
        )
        yield CounterMetricFamily("lobbyd_sent_frames", "Frames sent to clients.", value=totals[1])
        yield CounterMetricFamily("lobbyd_received_bytes", "Bytes received from clients.", value=totals[2])
        yield CounterMetricFamily("lobbyd_sent_bytes", "Bytes queued for sending to clients.", value=totals[3])

    def _queues(self) -> Iterator[Metric]:
        now = time.time()
        players = GaugeMetricFamily("lobbyd_queue_players", "Players waiting in each queue.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "lobbyd_queue_oldest_ticket_age_seconds",
            "How long the longest-waiting ticket of each queue has waited; 0 when the queue is empty.",
            labels=["queue"],
        )
        for name, tickets in sorted(self.server.lobby.queues.items()):
            players.add_metric([name], len(tickets))
            since = min((ticket.waiting_since for ticket in tickets.values()), default=now)
            oldest.add_metric([name], max(now - since, 0.0))
        yield players
        yield oldest
        yield GaugeMetricFamily(
            "lobbyd_ready_checks_running", "Ready checks waiting for answers.", value=len(self.server.lobby.checks)
        )
        yield GaugeMetricFamily(
            "lobbyd_draining", "1 while the server takes no new queue entries, else 0.", value=int(self.server.draining)
        )

    def _counters(self) -> Iterator[Metric]:
        metrics = self.metrics
        yield _labelled("lobbyd_errors", "Error messages sent to clients, by code.", "code", metrics.errors_sent)
        yield _labelled("lobbyd_matches_found", "Matches proposed, by queue.", "queue", metrics.matches_found)
        yield _labelled(
            "lobbyd_matches_started", "Matches stored and announced, by queue.", "queue", metrics.matches_started
        )
        yield _labelled(
            "lobbyd_matches_cancelled",
            "Proposed matches that did not start, by reason.",
            "reason",
            metrics.matches_cancelled,
        )
        yield _labelled(
            "lobbyd_ready_check_outcomes",
            "Finished ready checks, by outcome: accepted, or why it was cancelled.",
            "outcome",
            metrics.ready_check_outcomes,
        )
        yield _labelled("lobbyd_config_reloads", "Configuration reloads, by result.", "result", metrics.reloads)


def _labelled(name: str, documentation: str, label: str, counts: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family
