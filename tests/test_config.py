"""Settings: layering, every problem reported at once, and the shipped example file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lobbyd import config as config_module
from lobbyd.config import Config, InvalidConfig, QueueConfig, check_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config" / "lobbyd.toml"

BROKEN = """\
tick_interval_ms = 0
listen = "nope"
tick_intervl_ms = 3
heartbeat_timeout_ms = 100
metrics_listen = "0.0.0.0:9847"

[queues.ok]
team_size = 0
team_szie = 2

[queues."bad name"]
window_start = 100
window_max = 10
"""


def write(tmp_path: Path, text: str, name: str = "lobbyd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_lists_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)

    problems = check_file(path)

    assert problems == [
        f"{path}:tick_interval_ms: expected `int` >= 10, got 0",
        f"{path}:listen: expected HOST:PORT, got 'nope'",
        f"{path}:tick_intervl_ms: unknown setting; did you mean 'tick_interval_ms'?",
        f"{path}:metrics_listen: '0.0.0.0' is not a loopback address: use 127.0.0.1, [::1] or localhost",
        f"{path}:queues.ok.team_size: expected `int` >= 1, got 0",
        f"{path}:queues.ok.team_szie: unknown queue setting; did you mean 'team_size'?",
        f"{path}:queues.bad name: a queue name is 1 to 64 of A-Z a-z 0-9 _ . -",
        f"{path}:queues.bad name.window_max: 10.0 is below window_start (100.0)",
        f"{path}:heartbeat_timeout_ms: 100 must be greater than heartbeat_interval_ms (10000), "
        "or idle clients are cut off",
    ]


def test_cluster_node_refuses_recording(tmp_path: Path) -> None:
    path = write(tmp_path, 'cluster = "redis"\nstore = "postgres"\nrecord_events_file = "events.jsonl"\n')

    assert check_file(path) == [
        f'{path}:record_events_file: a cluster node (cluster = "redis") records no queue events yet;'
        " leave it empty on cluster nodes"
    ]


def test_load_raises_with_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)

    with pytest.raises(InvalidConfig) as caught:
        config_module.load(path, environ={})

    assert len(caught.value.problems) == 9
    assert str(caught.value).splitlines() == caught.value.problems


def test_problems_name_their_source(tmp_path: Path) -> None:
    path = write(tmp_path, "hello_timeout_ms = -1\n")
    environ = {"LOBBYD_TICK_INTERVAL_MS": "1", "LOBBYD_STORE": "memory"}

    with pytest.raises(InvalidConfig) as caught:
        config_module.load(path, environ=environ, overrides={"listen": "zz"})

    assert caught.value.problems == [
        f"{path}:hello_timeout_ms: expected `int` >= 1, got -1",
        "environment:LOBBYD_TICK_INTERVAL_MS: expected `int` >= 10, got '1'",
        "command line:--listen: expected HOST:PORT, got 'zz'",
    ]


def test_later_sources_override(tmp_path: Path) -> None:
    path = write(tmp_path, 'tick_interval_ms = 300\nlisten = "127.0.0.1:1"\nstore = "memory"\n')

    config = config_module.load(
        path, environ={"LOBBYD_TICK_INTERVAL_MS": "100"}, overrides={"listen": "127.0.0.1:2"}
    )

    assert config.tick_interval_ms == 100
    assert config.listen == "127.0.0.1:2"
    assert config.store == "memory"


def test_rule_between_settings_names_last_source(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat_interval_ms = 5000\n")

    with pytest.raises(InvalidConfig) as caught:
        config_module.load(path, environ={"LOBBYD_HEARTBEAT_TIMEOUT_MS": "4000"})

    assert caught.value.problems[0].startswith("environment:LOBBYD_HEARTBEAT_TIMEOUT_MS: 4000 must be greater")


@pytest.mark.parametrize("address", ["127.0.0.1:9847", "127.0.0.2:1", "[::1]:9847", "localhost:9847"])
def test_metrics_listen_accepts_loopback(address: str) -> None:
    config = config_module.load(environ={}, overrides={"metrics_listen": address})

    assert config.metrics_listen == address


def test_check_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"

    assert check_file(missing) == [f"{missing}: config file not found"]


def test_check_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "tick_interval_ms = \n")

    problems = check_file(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: invalid TOML: ")


def test_check_reports_missing_auth_key(tmp_path: Path) -> None:
    path = write(tmp_path, f'auth_required = true\nauth_secret_file = "{tmp_path / "absent"}"\n')

    problems = check_file(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:auth_secret_file: ")


# The shipped example.


def toml_value(value: Any) -> str:
    """Render ``value`` the way config/lobbyd.toml writes a default."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def documented_block(text: str, key: str) -> tuple[str, str]:
    """Return the comment block above ``key``'s line and the line itself."""
    lines = text.splitlines()
    pattern = re.compile(rf"^(# )?{re.escape(key)} = ")
    for index, line in enumerate(lines):
        if pattern.match(line):
            start = index
            while start > 0 and lines[start - 1].startswith("#") and not pattern.match(lines[start - 1]):
                start -= 1
            return "\n".join(lines[start:index]), line
    raise AssertionError(f"config/lobbyd.toml has no line for {key!r}")


@pytest.mark.parametrize("key", [name for name in Config.__struct_fields__ if name != "queues"])
def test_shipped_config_documents_setting(key: str) -> None:
    text = SHIPPED.read_text()
    default = getattr(Config(), key)

    comment, _ = documented_block(text, key)

    assert f"Default: {toml_value(default)}." in comment, f"{key}: default {default!r} not stated"


@pytest.mark.parametrize("field", QueueConfig.__struct_fields__)
def test_shipped_config_documents_queue_setting(field: str) -> None:
    text = SHIPPED.read_text()
    default = getattr(QueueConfig(), field)

    assert re.search(rf"^# {field} +.*Default: {re.escape(toml_value(default))}\.$", text, re.MULTILINE)


def test_shipped_config_commented_lines_show_defaults() -> None:
    # A commented "# key = value" line states the default, except for examples of
    # values with an empty default.
    text = SHIPPED.read_text()
    defaults = msgspec.structs.asdict(Config())
    for line in text.splitlines():
        match = re.match(r"^# ([a-z_]+) = (.*)$", line)
        if match is None or match.group(1) not in defaults:
            continue
        key = match.group(1)
        value = tomllib.loads(f"{key} = {match.group(2)}")[key]
        if defaults[key] in (None, ""):
            continue
        assert value == defaults[key], line


def test_shipped_config_requires_auth(tmp_path: Path) -> None:
    text = SHIPPED.read_text()
    settings = tomllib.loads(text)

    assert settings["auth_required"] is True
    assert '# auth_secret_file = "/etc/lobbyd/auth_secret"' in text
    assert check_file(SHIPPED) == [
        f"{SHIPPED}:auth_required: no key is set; set auth_secret_file, auth_secret or auth_public_key_file"
    ]


def test_shipped_config_valid_with_secret(tmp_path: Path) -> None:
    secret = tmp_path / "auth_secret"
    secret.write_text("s" * 40)
    text = SHIPPED.read_text().replace(
        '# auth_secret_file = "/etc/lobbyd/auth_secret"', f'auth_secret_file = "{secret}"'
    )
    path = write(tmp_path, text)

    assert check_file(path) == []


# The command.


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lobbyd", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.slow
def test_check_config_command_lists_problems(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)

    done = check_config(path)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == check_file(path)


@pytest.mark.slow
def test_check_config_command_accepts_valid(tmp_path: Path) -> None:
    path = write(tmp_path, 'store = "memory"\n')

    done = check_config(path)

    assert done.returncode == 0
    assert done.stdout == f"{path}: ok\n"
    assert done.stderr == ""


RATING_STEPS = """\
[queues.duel]
rating_steps = [{after_s = 0, limit = 50}, {after_s = 15, limit = 100}, {after_s = 30, limit = 200}, {after_s = 90}]
"""


def test_rating_steps_become_expansion(tmp_path: Path) -> None:
    config = config_module.load(write(tmp_path, RATING_STEPS), environ={})

    rules = config.queue_rules()["duel"]

    assert rules.rating_steps is not None
    assert [(step.after, step.limit) for step in rules.rating_steps.steps] == [
        (0.0, 50.0),
        (15.0, 100.0),
        (30.0, 200.0),
        (90.0, None),
    ]


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ("[]", "queues.duel.rating_steps: at least one step is required"),
        (
            "[{after_s = 3, limit = 50}]",
            "queues.duel.rating_steps[0].after_s: the first step must start at 0 seconds, got 3",
        ),
        (
            "[{after_s = 0, limit = 50}, {after_s = 20, limit = 90}, {after_s = 10, limit = 100}]",
            "queues.duel.rating_steps[2].after_s: 10 must be greater than the previous step's 20",
        ),
        (
            "[{after_s = 0, limit = 50}, {after_s = 10, limit = 20}]",
            "queues.duel.rating_steps[1].limit: 20 is below the previous step's 50",
        ),
        (
            "[{after_s = 0}, {after_s = 10, limit = 20}]",
            "queues.duel.rating_steps[0].limit: only the last step may lift the limit",
        ),
        ("[{after_s = -1, limit = 5}]", "queues.duel.rating_steps[0].after_s: expected `float` >= 0.0, got -1"),
        ("[{limit = 5}]", "queues.duel.rating_steps[0]: object missing required field `after_s`"),
    ],
)
def test_rating_steps_problem_named(tmp_path: Path, steps: str, problem: str) -> None:
    path = write(tmp_path, f"[queues.duel]\nrating_steps = {steps}\n")

    assert check_file(path) == [f"{path}:{problem}"]


# Problems that only show once others are fixed would make an operator run the check
# again and again; these each break a different rule, and each must be listed.
INDEPENDENT = """\
log_level = "verbose"
auth_secret = "short"

[queues.duel]
bogus = 1
window_start = 5000
window_max = 10
rating_steps = [{after_s = 5, limit = 50}]

[[static_game_servers]]
address = "nohost"
capacity = 4
queues = ["zz"]
"""


def test_check_lists_independent_problems(tmp_path: Path) -> None:
    path = write(tmp_path, INDEPENDENT)

    problems = check_file(path)

    assert problems == [
        f"{path}:log_level: expected one of 'debug', 'info', 'warning' or 'error', got 'verbose'",
        f"{path}:queues.duel.bogus: unknown queue setting",
        f"{path}:queues.duel.window_max: 10.0 is below window_start (5000.0)",
        f"{path}:queues.duel.rating_steps[0].after_s: the first step must start at 0 seconds, got 5",
        "defaults:join_ticket_secret: game servers are configured, so a join ticket key is required",
        f"{path}:auth_secret: the secret is 5 bytes long; use at least 32 random bytes",
        f"{path}:static_game_servers[0].address: expected HOST:PORT, got 'nohost'",
        f"{path}:static_game_servers[0].queues: ['zz'] are not configured queues; configured: ['duel']",
    ]


def test_rule_skipped_when_its_setting_is_bad(tmp_path: Path) -> None:
    # A bad heartbeat_interval_ms must not be compared with its default in its place.
    path = write(tmp_path, 'heartbeat_interval_ms = "x"\nheartbeat_timeout_ms = 5000\n')

    assert check_file(path) == [f"{path}:heartbeat_interval_ms: expected `int`, got 'x'"]


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("log_level", "verbose", "'debug', 'info', 'warning' or 'error'"),
        ("log_format", "xml", "'auto', 'json' or 'console'"),
        ("store", "mongo", "'sqlite', 'memory' or 'postgres'"),
        ("sqlite_synchronous", "off", "'normal' or 'full'"),
        ("cluster", "etcd", "'off' or 'redis'"),
    ],
)
def test_enum_problem_lists_allowed_values(tmp_path: Path, key: str, value: str, allowed: str) -> None:
    path = write(tmp_path, f'{key} = "{value}"\n')

    assert check_file(path) == [f"{path}:{key}: expected one of {allowed}, got {value!r}"]


def test_environment_problem_names_variable_and_value() -> None:
    environ = {"LOBBYD_MAX_FRAME_BYTES": "1.5", "LOBBYD_LOG_LEVEL": "loud"}

    with pytest.raises(InvalidConfig) as caught:
        config_module.load(environ=environ)

    assert caught.value.problems == [
        "environment:LOBBYD_MAX_FRAME_BYTES: expected `int`, got '1.5'",
        "environment:LOBBYD_LOG_LEVEL: expected one of 'debug', 'info', 'warning' or 'error', got 'loud'",
    ]


@pytest.mark.parametrize("key", ["QUEUES", "STATIC_GAME_SERVERS", "DODGE_LOCKOUTS_S"])
def test_environment_rejects_table_setting(key: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        config_module.load(environ={f"LOBBYD_{key}": "{}"})

    assert caught.value.problems == [
        f"environment:LOBBYD_{key}: can be set only in the TOML file, not in the environment"
    ]


@pytest.mark.parametrize("key", ["auth_secret", "game_server_secret", "join_ticket_secret", "redis_url"])
def test_secret_value_never_in_problem(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f"{key} = 98765\n")

    problems = check_file(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{key}: expected `str")
    assert "98765" not in problems[0]


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ('auth_secret = "short"', "auth_secret: the secret is 5 bytes long; use at least 32 random bytes"),
        ('game_server_secret = "short"\njoin_ticket_secret = "' + "k" * 32 + '"', "game_server_secret: the secret"),
        ('auth_public_key_file = "/nonexistent/key.pem"', "auth_public_key_file: cannot read /nonexistent/key.pem"),
    ],
)
def test_key_problem_names_setting(tmp_path: Path, settings: str, problem: str) -> None:
    path = write(tmp_path, settings + "\n")

    problems = check_file(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{problem}")


def test_unknown_environment_lists_unknown_names() -> None:
    environ = {"LOBBYD_TICK_INTERVALMS": "5", "LOBBYD_TICK_INTERVAL_MS": "50", "LOBBYD_BOGUS": "", "HOME": "/"}

    assert config_module.unknown_environment(environ) == ["LOBBYD_BOGUS", "LOBBYD_TICK_INTERVALMS"]


@pytest.mark.slow
def test_serve_warns_of_unknown_environment(tmp_path: Path) -> None:
    from tests.daemon import running_daemon

    with running_daemon(tmp_path / "data", env={"LOBBYD_TICK_INTERVALMS": "5"}) as daemon:
        event = daemon.wait_for_event("unknown_environment_variable")

    assert event["name"] == "LOBBYD_TICK_INTERVALMS"
    assert event["level"] == "warning"


@pytest.mark.slow
@pytest.mark.parametrize("text", [BROKEN, INDEPENDENT], ids=["broken", "independent"])
def test_serve_prints_check_config_lines(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    done = subprocess.run(
        [sys.executable, "-m", "lobbyd", "serve", "--config", str(path), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={key: value for key, value in os.environ.items() if not key.startswith("LOBBYD_")},
    )

    problems = check_file(path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        *problems,
        f"lobbyd: not started: invalid configuration ({len(problems)} problems)",
    ]
