"""The Prometheus endpoint: every metric is exposed, and the values move as matches run."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ClientFactory, RunningServer, ServerFactory
from tests.daemon import free_port, running_daemon
from tests.test_graceful_stop import queue_pair

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

METRIC_NAMES = (
    "lobbyd_sessions",
    "lobbyd_received_frames",
    "lobbyd_sent_frames",
    "lobbyd_received_bytes",
    "lobbyd_sent_bytes",
    "lobbyd_errors",
    "lobbyd_queue_players",
    "lobbyd_queue_oldest_ticket_age_seconds",
    "lobbyd_ready_checks_running",
    "lobbyd_matches_found",
    "lobbyd_matches_started",
    "lobbyd_matches_cancelled",
    "lobbyd_ready_check_outcomes",
    "lobbyd_matchmaker_tick_seconds",
    "lobbyd_persistence_flush_seconds",
    "lobbyd_persistence_flush_records",
    "lobbyd_event_loop_lag_seconds",
    "lobbyd_draining",
    "lobbyd_config_reloads",
    "process_open_fds",
)


async def http_get(address: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send a raw HTTP request and return the status line, headers and body."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {key.lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    return status, headers, body


async def scrape(address: str) -> tuple[set[str], Samples]:
    """Return the metric family names and every sample of the endpoint at ``address``."""
    status, _, body = await http_get(address, b"GET /metrics HTTP/1.1\r\nHost: lobbyd\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def play_and_scrape(game: str, metrics: str) -> tuple[set[str], Samples, Samples, Samples]:
    names, before = await scrape(metrics)

    # One match starts, one is declined, and one request is an error.
    a, b, match = await queue_pair(game, "m1", "m2")
    for client in (a, b):
        await client.request("accept", match=match)
    for client in (a, b):
        await client.recv_type("match_start")
    await a.request("join_queue", queue="nowhere")
    await a.recv_type("error")
    c, d, declined = await queue_pair(game, "m3", "m4")
    await c.request("decline", match=declined)
    await c.recv_type("match_cancelled")
    await d.recv_type("match_cancelled")
    await a.request("join_queue", queue="5v5")
    await a.recv_type("queued")
    await asyncio.sleep(1.2)
    _, during = await scrape(metrics)

    for client in (a, b, c, d):
        await client.close()
    await asyncio.sleep(0.2)
    _, after = await scrape(metrics)
    return names, before, during, after


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_metrics_move_when_match_runs(tmp_path: Path) -> None:
    port = free_port()
    env = {"LOBBYD_TICK_INTERVAL_MS": "50", "LOBBYD_METRICS_LISTEN": f"127.0.0.1:{port}"}

    with running_daemon(tmp_path / "data", env=env) as daemon:
        listening = daemon.wait_for_event("metrics_listening")
        names, before, during, after = asyncio.run(play_and_scrape(daemon.address, f"127.0.0.1:{port}"))

    assert listening["address"] == f"127.0.0.1:{port}"
    for name in METRIC_NAMES:
        assert name in names, name

    assert value(before, "lobbyd_matches_started_total", queue="1v1") == 0
    assert value(during, "lobbyd_matches_found_total", queue="1v1") == 2
    assert value(during, "lobbyd_matches_started_total", queue="1v1") == 1
    assert value(during, "lobbyd_matches_cancelled_total", reason="declined") == 1
    assert value(during, "lobbyd_ready_check_outcomes_total", outcome="accepted") == 1
    assert value(during, "lobbyd_ready_check_outcomes_total", outcome="declined") == 1
    assert value(during, "lobbyd_errors_total", code="unknown_queue") == 1
    assert value(during, "lobbyd_sessions", framing="binary") == 4
    assert value(during, "lobbyd_queue_players", queue="5v5") == 1
    assert value(during, "lobbyd_queue_oldest_ticket_age_seconds", queue="5v5") >= 1.0
    assert value(during, "lobbyd_queue_players", queue="1v1") == 0
    assert value(during, "lobbyd_ready_checks_running") == 0
    assert value(during, "lobbyd_persistence_flush_records_sum") >= 4
    for histogram in ("persistence_flush_seconds", "matchmaker_tick_seconds", "event_loop_lag_seconds"):
        count = f"lobbyd_{histogram}_count"
        assert value(during, count) > value(before, count), histogram

    for name in ("received_frames", "sent_frames", "received_bytes", "sent_bytes"):
        assert value(during, f"lobbyd_{name}_total") > value(before, f"lobbyd_{name}_total"), name
        # Closed sessions keep their share of the totals.
        assert value(after, f"lobbyd_{name}_total") >= value(during, f"lobbyd_{name}_total"), name
    assert value(after, "lobbyd_sessions", framing="binary") == 0
    assert daemon.exit_code == 0, daemon.output()


@pytest.mark.slow
def test_metrics_port_taken_exits(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "lobbyd", "serve", "--listen", f"127.0.0.1:{free_port()}"]
        command += ["--data-dir", str(tmp_path / "data")]
        done = subprocess.run(
            command,
            env={"PATH": "/usr/bin:/bin", "LOBBYD_METRICS_LISTEN": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert done.returncode == 1
    assert done.stderr == f"lobbyd: cannot listen for metrics on 127.0.0.1:{port}: address already in use\n"


# The HTTP responder, in process.


@pytest.fixture
async def endpoint(start_server: ServerFactory) -> RunningServer:
    return await start_server(metrics_listen="127.0.0.1:0")


def metrics_address(server: RunningServer) -> str:
    assert server.server.metrics_address is not None
    return server.server.metrics_address


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"nonsense\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"x" * 9000 + b"\r\n\r\n",
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
    ],
    ids=["unknown_path", "post", "malformed", "oversized_head"],
)
async def test_metrics_rejects_request(endpoint: RunningServer, request_bytes: bytes, status: str) -> None:
    got, headers, _ = await http_get(metrics_address(endpoint), request_bytes)

    assert got == status
    assert headers["connection"] == "close"


async def test_metrics_head_has_no_body(endpoint: RunningServer) -> None:
    status, headers, body = await http_get(metrics_address(endpoint), b"HEAD /metrics HTTP/1.1\r\n\r\n")

    assert status == "HTTP/1.1 200 OK"
    assert int(headers["content-length"]) > 0
    assert body == b""


async def test_metrics_speaks_openmetrics(endpoint: RunningServer) -> None:
    request = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"

    status, headers, body = await http_get(metrics_address(endpoint), request)

    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_metrics_counts_server_full(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(max_connections=1)
    await connect("only")
    refused = await connect()
    await refused.send({"type": "ping"})
    await refused.recv_type("error")

    assert server.server.metrics.errors_sent["server_full"] == 1
