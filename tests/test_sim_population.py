"""``lobbyd sim --population`` against a real daemon on a loopback port.

The CLI runs in a worker thread with its own event loop, as it would in its own
process, while the daemon serves on the test's loop. The population is small and
fast: 60 players arriving at 40 per second with parties, roles, two regions, and
declines and disconnects, so that every path of the bots runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lobbyd import cli
from lobbyd.tuning import report
from tests.conftest import ServerFactory
from tests.test_game_servers import HOSTED, SERVER_SECRET

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ROLE_QUEUE: dict[str, Any] = {
    "dodge_lockouts_s": [0, 1],
    "queues": {
        "3v3": {
            "team_size": 3,
            "party_sizes": [1, 2, 3],
            "roles": ["tank", "healer", "damage"],
            "autofill_after_s": 1.0,
            "latency_steps": [
                {"after_s": 0, "limit": 60},
                {"after_s": 1, "limit": 100},
                {"after_s": 2, "limit": 200},
            ],
            "regions": ["eu", "us"],
        }
    },
}

POPULATION = """
players = 60
queue = "3v3"
arrival_rate = 40.0
party_share = 0.2
party_sizes = [2, 3]
party_skill_sd = 2.0
roles = ["tank", "healer", "damage"]
role_weights = [1.0, 1.0, 3.0]
roles_per_player = 2
cross_region_ms = 80.0
decline_rate = 0.06
disconnect_rate = 0.04
accept_delay_min_s = 0.0
accept_delay_max_s = 0.2
rejoin_delay_s = 0.3
reconnect_delay_s = 0.5
seed = 3

[regions.eu]
share = 2.0
latency_ms = 30.0

[regions.us]
share = 1.0
latency_ms = 40.0
"""

# A 2v2 queue without roles or latency limits, for the same kind of population.
PLAIN_QUEUE: dict[str, Any] = {"queues": {"2v2": {"team_size": 2, "party_sizes": [1, 2]}}}


async def run_cli(*args: str) -> int:
    """Run ``lobbyd`` with ``args`` in a worker thread, so that the daemon keeps serving."""
    return await asyncio.to_thread(cli.main, list(args))


async def test_population_sim_role_queue(
    start_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server(**ROLE_QUEUE)
    population = tmp_path / "population.toml"
    population.write_text(POPULATION)
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"

    code = await run_cli(
        "sim", "--connect", server.address, "--population", str(population), "--timeout", "60",
        "--no-progress", "--json", str(out), "--plots", str(plots),
    )  # fmt: skip

    printed = capsys.readouterr().out
    assert code == 0, printed
    raw = json.loads(out.read_text())
    assert raw["format"] == "lobbyd-tuning-report"
    assert raw["version"] == 1
    document = msgspec.json.decode(out.read_bytes(), type=report.Document)
    built = document.reports[0]
    assert built.policy == "live"
    assert built.band_by == "skill"
    assert built.players == 60
    queue = built.queues[0]
    assert queue.queue == "3v3"
    overall = queue.overall
    assert overall.players == 60
    # matched counts one per player per match, so a second match would break this sum.
    assert overall.matched + overall.unmatched == overall.players
    assert overall.matched > 0
    assert overall.wait_s.p95 is not None
    assert overall.autofill_share is not None
    assert sum(row.players for row in queue.bands) == overall.players
    assert len(queue.bands) > 1
    assert set(queue.regions) <= {"eu", "us"}
    assert sum(queue.regions.values()) == queue.matches
    assert built.hidden_win_probability_gap.mean is not None
    assert "matched more than once  0" in printed
    assert "points of hidden skill" in printed
    for name in ("wait-by-rating.png", "win-probability.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert data[12:16] == b"IHDR", name


async def test_population_sim_game_servers(
    start_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await start_server(**PLAIN_QUEUE, **HOSTED)
    population = tmp_path / "population.toml"
    # The population lists roles, which the 2v2 queue rejects, so the bots stop sending them.
    population.write_text(POPULATION.split("[regions.eu]")[0].replace('"3v3"', '"2v2"').replace("[2, 3]", "[2]"))
    secret = tmp_path / "secret"
    secret.write_text(SERVER_SECRET)
    out = tmp_path / "report.json"

    code = await run_cli(
        "sim", "--connect", server.address, "--population", str(population), "--players", "24",
        "--game-servers", "2", "--match-seconds", "0.2", "--game-server-secret-file", str(secret),
        "--band-by", "rating", "--timeout", "60", "--no-progress", "--json", str(out),
    )  # fmt: skip

    printed = capsys.readouterr().out
    assert code == 0, printed
    built = msgspec.json.decode(out.read_bytes(), type=report.Document).reports[0]
    assert built.band_by == "rating"
    overall = built.queues[0].overall
    assert overall.players == 24
    assert overall.matched + overall.unmatched == overall.players
    assert overall.matched > 0
    assert overall.autofill_share is None
    assert built.queues[0].regions == {"default": built.queues[0].matches}
    assert "not sent: the daemon rejected them for this queue" in printed
    assert "results applied" in printed
    assert "game server errors      none" in printed


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--plots", "plots"], "--plots applies to --population only"),
        (["--band-by", "skill"], "--band-by applies to --population only"),
        (["--population", "p.toml", "--decline-rate", "0.1"], "do not apply with --population"),
        (["--population", "p.toml", "--rounds", "2"], "--rounds does not apply"),
        (["--population", "p.toml", "--band-width", "0"], "--band-width must be at least 1"),
    ],
)
def test_population_sim_rejects_options(extra: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sim", "--connect", "127.0.0.1:1", *extra])

    assert code == 2
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "name", "problem"),
    [
        (["--json"], "missing/report.json", "missing does not exist"),
        (["--json"], "taken", "is a directory, expected a file"),
        (["--population", "p.toml", "--json"], "taken", "is a directory, expected a file"),
        (["--population", "p.toml", "--plots"], "plain.txt", "plain.txt is a file, expected a directory"),
    ],
)
def test_sim_checks_output_paths_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], name: str, problem: str
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "plain.txt").write_text("not a directory\n")
    path = tmp_path / name

    # Port 1 has no daemon: the run would fail to connect if the check came after it.
    code = cli.main(["sim", "--connect", "127.0.0.1:1", "--players", "2", *extra, str(path)])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lobbyd sim: {extra[-1]} {path}: "), err
    assert problem in err


def test_population_sim_blames_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["sim", "--connect", "127.0.0.1:1", "--population", "p.toml", "--arrival-rate", "0"])

    assert code == 2
    assert capsys.readouterr().err == "lobbyd sim: --arrival-rate must be a finite number greater than 0, got 0\n"


def test_population_sim_bad_population(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    population = tmp_path / "population.toml"
    population.write_text("decline_rate = 2.0\n")

    code = cli.main(["sim", "--connect", "127.0.0.1:1", "--population", str(population)])

    assert code == 2
    assert "decline_rate" in capsys.readouterr().err


async def test_population_sim_mints_tokens(
    start_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "b" * 40
    server = await start_server(**PLAIN_QUEUE, auth_secret=secret)
    population = tmp_path / "population.toml"
    population.write_text(POPULATION.split("[regions.eu]")[0].replace('"3v3"', '"2v2"').replace("[2, 3]", "[2]"))
    config_file = tmp_path / "auth.toml"
    config_file.write_text(f'auth_secret = "{secret}"\n')
    out = tmp_path / "report.json"

    code = await run_cli(
        "sim", "--connect", server.address, "--population", str(population), "--players", "12",
        "--timeout", "60", "--no-progress", "--json", str(out), "--config", str(config_file),
    )  # fmt: skip

    assert code == 0, capsys.readouterr().out
    overall = msgspec.json.decode(out.read_bytes(), type=report.Document).reports[0].queues[0].overall
    assert overall.matched == overall.players == 12
