"""``lobbyd client`` and ``lobbyd sim`` as subprocesses against a real daemon process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess, free_port, running_daemon

# Seconds every tool run gets before the test fails. Each test's own limit is above
# this and well under a minute.
RUN_TIMEOUT = 25.0

# A short matchmaker tick keeps ready-check rounds fast. The default tick is 200 ms.
FAST_TICK = {"LOBBYD_TICK_INTERVAL_MS": "50"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path / "data", env=FAST_TICK) as process:
        yield process
    assert process.exit_code == 0, process.output()


def run_tool(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lobbyd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def run_client(daemon: DaemonProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_tool("client", "--connect", daemon.address, "--timeout", "15", *args, stdin=stdin)


def run_sim(daemon: DaemonProcess, report: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    options = ["--connect", daemon.address, "--no-progress", "--json", str(report), "--timeout", "20"]
    done = run_tool("sim", *options, *args)
    data = json.loads(report.read_text()) if report.exists() else {}
    return done, data


def test_client_pair_reaches_match_start(daemon: DaemonProcess) -> None:
    def play(player: str) -> subprocess.CompletedProcess[str]:
        return run_client(daemon, "--player", player, "--auto-accept", "--until", "match_start", stdin="join 1v1\n")

    with ThreadPoolExecutor(max_workers=2) as pool:
        alice, bob = pool.map(play, ["alice", "bob"])

    for done in (alice, bob):
        assert done.returncode == 0, done.stderr
        assert '< {"type":"match_start"' in done.stdout
        assert '> {"type":"accept"' in done.stdout
        assert done.stderr == ""
    started = [event for event in daemon.log_events() if event.get("event") == "match_started"]
    assert len(started) == 1


def test_client_bad_command_keeps_working(daemon: DaemonProcess) -> None:
    done = run_client(daemon, "--until", "queued", stdin="jion 1v1\njoin\njoin 1v1\n")

    assert done.returncode == 0, done.stderr
    hints = done.stderr.splitlines()
    assert len(hints) == 2
    assert "unknown command 'jion'" in hints[0]
    assert "usage: join QUEUE" in hints[1]
    assert '< {"type":"queued","queue":"1v1"' in done.stdout


def test_client_profile_and_history(daemon: DaemonProcess) -> None:
    done = run_client(daemon, "--player", "pat", "--until", "history", stdin="profile\nhistory\n")

    assert done.returncode == 0, done.stderr
    assert '< {"type":"profile","player":"pat","name":"pat","rating":1500' in done.stdout
    assert '< {"type":"history","matches":[]' in done.stdout


def test_client_eof_prints_reply_and_exits(daemon: DaemonProcess) -> None:
    done = run_client(daemon, stdin="join 5v5\n")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('> {"type":"hello"')
    assert lines[1].startswith('< {"type":"welcome"')
    assert lines[-1].startswith('< {"type":"queued"')


def test_client_connection_refused() -> None:
    port = free_port()

    done = run_tool("client", "--connect", f"127.0.0.1:{port}", "--timeout", "10")

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "connection refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_client_kicked_exits_3(daemon: DaemonProcess) -> None:
    command = [sys.executable, "-m", "lobbyd", "client", "--connect", daemon.address, "--player", "twin"]
    first = subprocess.Popen(
        [*command, "--timeout", "15"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith('> {"type":"hello"')
        assert first.stdout.readline().startswith('< {"type":"welcome"')

        second = run_client(daemon, "--player", "twin", "--until", "welcome")
        stdout, stderr = first.communicate(timeout=RUN_TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    assert second.returncode == 0, second.stderr
    assert first.returncode == 3, stderr
    assert '< {"type":"kicked","reason":"logged_in_elsewhere"}' in stdout
    assert stderr.strip() == "lobbyd client: kicked by the server: logged_in_elsewhere"


def test_sim_connection_refused() -> None:
    port = free_port()

    done = run_tool("sim", "--connect", f"127.0.0.1:{port}", "--players", "2", "--no-progress")

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "connection refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_sim_clean_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    done, report = run_sim(daemon, tmp_path / "report.json", "--players", "20", "--queue", "5v5")

    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] is True
    assert report["matches_started"] == 2
    assert report["matched_once"] == 20
    assert report["matched_more_than_once"] == 0
    assert report["never_matched"] == 0
    assert report["cancelled_by_reason"] == {}
    assert "every player started exactly one match" in done.stdout
    started = [event for event in daemon.log_events() if event.get("event") == "match_started"]
    assert len(started) == 2


def test_sim_declines_still_match_everyone(daemon: DaemonProcess, tmp_path: Path) -> None:
    done, report = run_sim(
        daemon, tmp_path / "report.json", "--players", "20", "--queue", "5v5", "--decline-rate", "0.2", "--seed", "1"
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert report["matched_once"] == 20
    assert report["matched_more_than_once"] == 0
    assert report["never_matched"] == 0
    assert report["declines_injected"] > 0
    assert report["cancelled_by_reason"].get("declined", 0) > 0
    assert report["server_errors"] == {}


LEAGUE_SECRET = "g" * 40


@pytest.fixture
def league_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    env = {**FAST_TICK, "LOBBYD_GAME_SERVER_SECRET": LEAGUE_SECRET, "LOBBYD_JOIN_TICKET_SECRET": "j" * 40}
    with running_daemon(tmp_path / "data", env=env) as process:
        yield process
    assert process.exit_code == 0, process.output()


def test_sim_league_rates_players(league_daemon: DaemonProcess, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(LEAGUE_SECRET)
    options = ["--players", "20", "--queue", "1v1", "--game-servers", "2", "--rounds", "3"]
    league = [*options, "--match-seconds", "0.05", "--game-server-secret-file", str(secret_file), "--seed", "5"]

    done, report = run_sim(league_daemon, tmp_path / "report.json", *league)

    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] is True
    assert report["league"]["results_applied"] >= 30
    assert report["league"]["game_server_errors"] == {}
    first, last = report["league"]["convergence"][0], report["league"]["convergence"][-1]
    assert last["results"] > first["results"]
    assert last["mean_sigma"] < first["mean_sigma"]
    assert last["mu_sd"] > 0
    assert "corr(mu, hidden skill)" in done.stdout
    finished = [event for event in league_daemon.log_events() if event.get("event") == "match_finished"]
    assert len(finished) == report["league"]["results_applied"]


def test_sim_league_needs_secret(league_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOBBYD_GAME_SERVER_SECRET", raising=False)

    done = run_tool("sim", "--connect", league_daemon.address, "--game-servers", "1", "--no-progress")

    assert done.returncode == 2
    assert "LOBBYD_GAME_SERVER_SECRET" in done.stderr


AUTH_SECRET = "a" * 40


@pytest.fixture
def auth_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path / "data", env={**FAST_TICK, "LOBBYD_AUTH_SECRET": AUTH_SECRET}) as process:
        yield process
    assert process.exit_code == 0, process.output()


def test_sim_mints_tokens_from_config(auth_daemon: DaemonProcess, tmp_path: Path) -> None:
    config_file = tmp_path / "auth.toml"
    config_file.write_text(f'auth_secret = "{AUTH_SECRET}"\n')

    done, report = run_sim(
        auth_daemon, tmp_path / "report.json", "--players", "4", "--queue", "1v1", "--config", str(config_file)
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert report["matched_once"] == 4
    assert report["server_errors"] == {}


def test_sim_counts_rejected_tokens(auth_daemon: DaemonProcess, tmp_path: Path) -> None:
    done, report = run_sim(auth_daemon, tmp_path / "report.json", "--players", "4", "--queue", "1v1")

    assert done.returncode == 1
    assert report["bots_failed"] == 4
    assert report["server_errors"] == {"invalid_token": 4}
    assert "invalid_token 4" in done.stdout


def test_sim_config_without_key_rejected(auth_daemon: DaemonProcess, tmp_path: Path) -> None:
    config_file = tmp_path / "no-key.toml"
    config_file.write_text('store = "memory"\n')

    done = run_tool("sim", "--connect", auth_daemon.address, "--config", str(config_file), "--no-progress")

    assert done.returncode == 2
    assert "cannot mint a token" in done.stderr
