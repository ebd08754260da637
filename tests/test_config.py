"""Settings: layering, every problem reported at once, and the shipped example file."""

from __future__ import annotations

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
        f"{path}:tick_interval_ms: expected `int` >= 10",
        f"{path}:listen: expected HOST:PORT, got 'nope'",
        f"{path}:tick_intervl_ms: unknown setting; did you mean 'tick_interval_ms'?",
        f"{path}:metrics_listen: '0.0.0.0' is not a loopback address: use 127.0.0.1, [::1] or localhost",
        f"{path}:queues.ok.team_size: expected `int` >= 1",
        f"{path}:queues.ok.team_szie: unknown queue setting; did you mean 'team_size'?",
        f"{path}:queues.bad name: a queue name is 1 to 64 of A-Z a-z 0-9 _ . -",
        f"{path}:queues.bad name.window_max: 10.0 is below window_start (100.0)",
        f"{path}:heartbeat_timeout_ms: 100 must be greater than heartbeat_interval_ms (10000), "
        "or idle clients are cut off",
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
        f"{path}:hello_timeout_ms: expected `int` >= 1",
        "environment:tick_interval_ms: expected `int` >= 10",
        "command line:listen: expected HOST:PORT, got 'zz'",
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

    assert caught.value.problems[0].startswith("environment:heartbeat_timeout_ms: 4000 must be greater")


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


@pytest.mark.slow
def test_serve_lists_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)

    done = subprocess.run(
        [sys.executable, "-m", "lobbyd", "serve", "--config", str(path), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"lobbyd: invalid configuration: {problem}" for problem in check_file(path)]


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
        ("[{after_s = -1, limit = 5}]", "queues.duel.rating_steps[0].after_s: expected `float` >= 0.0"),
        ("[{limit = 5}]", "queues.duel.rating_steps[0]: object missing required field `after_s`"),
    ],
)
def test_rating_steps_problem_named(tmp_path: Path, steps: str, problem: str) -> None:
    path = write(tmp_path, f"[queues.duel]\nrating_steps = {steps}\n")

    assert check_file(path) == [f"{path}:{problem}"]
