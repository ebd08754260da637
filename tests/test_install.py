"""``make install`` into a staging directory, the systemd units, and ``make uninstall``.

``systemd-analyze verify`` checks that ExecStart= names an executable file, so the
check runs on copies of the installed units whose paths point into the staging
directory, where the freshly installed virtual environment is. Outside CI the
tests are skipped, with the reason, where systemd-analyze is missing; in CI
(LOBBYD_REQUIRE_SERVICES=1) a missing systemd-analyze fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ("lobbyd.service", "lobbyd.socket")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def require_systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is not None:
        return found
    if os.environ.get("LOBBYD_REQUIRE_SERVICES") == "1":
        pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package, which provides it")
    pytest.skip("systemd-analyze is missing: install Debian's systemd package to verify the units")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOBBYD_", "MAKE"))}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    stage = tmp_path_factory.mktemp("stage")
    done = make("install", f"DESTDIR={stage}")
    assert done.returncode == 0, done.stdout + done.stderr
    yield stage


def test_install_lays_out_files(staged: Path) -> None:
    venv = staged / "opt/lobbyd/venv"
    config = staged / "etc/lobbyd/lobbyd.toml"

    assert os.access(venv / "bin/lobbyd", os.X_OK)
    assert (staged / "opt/lobbyd/README.md").is_file()
    assert (staged / "var/lib/lobbyd").is_dir()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert config.read_text() == (ROOT / "config/lobbyd.toml").read_text()
    for unit in UNITS:
        assert (staged / "etc/systemd/system" / unit).read_text() == (ROOT / "systemd" / unit).read_text()


def test_installed_daemon_checks_shipped_config(staged: Path) -> None:
    config = staged / "etc/lobbyd/lobbyd.toml"

    done = subprocess.run(
        [str(staged / "opt/lobbyd/venv/bin/lobbyd"), "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # The shipped configuration requires auth, so it is incomplete until a key is set.
    assert done.returncode == 2
    expected = "auth_required: no key is set; set auth_secret_file, auth_secret or auth_public_key_file"
    assert done.stderr == f"{config}:{expected}\n"


def staged_units(staged: Path, directory: Path) -> list[Path]:
    """Copy the installed units to ``directory`` with their paths pointing into ``staged``."""
    copies = []
    for unit in UNITS:
        text = (staged / "etc/systemd/system" / unit).read_text()
        copy = directory / unit
        copy.write_text(text.replace("/opt/lobbyd/", f"{staged}/opt/lobbyd/"))
        copies.append(copy)
    return copies


def test_units_pass_verify(staged: Path, tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    units = staged_units(staged, tmp_path)

    command = [analyze, "verify", *map(str, units)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    assert [line for line in done.stderr.splitlines() if "lobbyd" in line] == []


def test_service_exposure_stays_low(staged: Path, tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    service = staged_units(staged, tmp_path)[0]

    # --threshold counts tenths: 20 is an exposure of 2.0, where the scale runs to 10.
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_setting_commented(unit: str) -> None:
    # Each setting line of the shipped units follows a comment that says why it is there.
    previous = ""
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            assert previous.startswith("#"), f"{unit}: {line}"
        previous = line


def test_service_hardening_present() -> None:
    text = (ROOT / "systemd/lobbyd.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line))

    assert settings["Type"] == "notify"
    assert settings["Restart"] == "on-failure"
    assert settings["User"] == "lobbyd"
    assert settings["StateDirectory"] == "lobbyd"
    assert settings["ConfigurationDirectory"] == "lobbyd"
    assert settings["ProtectSystem"] == "strict"
    assert settings["PrivateTmp"] == "yes"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert "SystemCallFilter=@system-service" in text
    assert "SystemCallFilter=~@privileged @resources" in text
    assert int(settings["LimitNOFILE"]) >= 10_000
    assert int(settings["WatchdogSec"].removesuffix("s")) > 0


def test_stop_timeout_exceeds_graceful_bound() -> None:
    from lobbyd.config import Config

    text = (ROOT / "systemd/lobbyd.service").read_text()
    found = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.MULTILINE)
    defaults = Config()

    assert found is not None
    bound_s = (defaults.shutdown_ready_check_wait_ms + defaults.shutdown_timeout_ms) / 1000
    # Five seconds beyond the two waits leave time for the final flush.
    assert int(found.group(1)) > bound_s + 5


def test_install_keeps_operator_config(tmp_path: Path) -> None:
    config = tmp_path / "etc/lobbyd/lobbyd.toml"
    config.parent.mkdir(parents=True)
    config.write_text('store = "memory"\n')

    done = make("install-config", f"DESTDIR={tmp_path}")

    assert done.returncode == 0, done.stderr
    assert config.read_text() == 'store = "memory"\n'
    assert (tmp_path / "etc/lobbyd/lobbyd.toml.new").read_text() == (ROOT / "config/lobbyd.toml").read_text()
    assert f"kept the existing {config}" in done.stdout


def test_install_rewrites_paths(tmp_path: Path) -> None:
    done = make("install-units", "install-config", f"DESTDIR={tmp_path}", "PREFIX=/srv/lobbyd", "STATEDIR=/srv/state")

    service = (tmp_path / "etc/systemd/system/lobbyd.service").read_text()
    config = (tmp_path / "etc/lobbyd/lobbyd.toml").read_text()
    assert done.returncode == 0, done.stderr
    assert "ExecStart=/srv/lobbyd/venv/bin/lobbyd serve --config /etc/lobbyd/lobbyd.toml" in service
    assert 'data_dir = "/srv/state"' in config


def test_uninstall_removes_install(staged: Path) -> None:
    state = staged / "var/lib/lobbyd"
    (state / "lobbyd.sqlite3").write_text("players")

    done = make("uninstall", f"DESTDIR={staged}")

    assert done.returncode == 0, done.stderr
    assert not (staged / "opt/lobbyd").exists()
    for unit in UNITS:
        assert not (staged / "etc/systemd/system" / unit).exists()
    assert not (staged / "etc/lobbyd").exists()
    assert (state / "lobbyd.sqlite3").read_text() == "players"
    assert "kept" in done.stdout
    assert str(state) in done.stdout


def test_make_run_takes_config(tmp_path: Path) -> None:
    # A file with a bad value shows that make passed it on: the daemon rejects it and exits.
    config_file = tmp_path / "bad.toml"
    config_file.write_text("tick_interval_ms = 0\n")

    done = make("run", f"CONFIG={config_file}")

    assert done.returncode != 0
    assert f"{config_file}:tick_interval_ms: expected `int` >= 10, got 0" in done.stderr
