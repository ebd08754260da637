"""Re-read the configuration on SIGHUP and apply it without dropping anyone.

A reload reads the same sources as the start did (the file, LOBBYD_* variables and
the command-line overrides) in a worker thread, because it touches the disk. An
invalid result is rejected with one log line and the running configuration stays.
A valid one is applied in one synchronous step on the event loop, so no request
runs against half of it: queue rules, limits, timeouts, auth keys and the log level change
at once, while sessions, tickets and ready checks carry on. Settings that only a
restart can change are listed in a log line and keep their running values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from lobbyd import config as config_module
from lobbyd.auth import TokenVerifier
from lobbyd.config import Config
from lobbyd.errors import ConfigError
from lobbyd.server import logs

if TYPE_CHECKING:
    from lobbyd.server.app import Server

# Settings bound to what the process opened at start: listeners, the store, the
# log stream's renderer, the admin socket. A reload reports changes to them and
# leaves them as they are.
RESTART_SETTINGS: Final = (
    "listen",
    "data_dir",
    "store",
    "sqlite_synchronous",
    "log_format",
    "metrics_listen",
    "admin_socket",
    "record_events_file",
)

log = logs.get(__name__)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """The sources of the running configuration, which a reload reads again."""

    path: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Config:
        return config_module.load(self.path, overrides=self.overrides)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a reload, ``applied`` or ``rejected``, with its time and the settings involved."""

    result: str
    at: float
    changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def changed_settings(old: Config, new: Config) -> list[str]:
    """Return the names of the settings whose values differ, in declaration order."""
    return [name for name in Config.__struct_fields__ if getattr(old, name) != getattr(new, name)]


def keep_restart_settings(old: Config, new: Config) -> Config:
    """Return ``new`` with the running values of the settings that need a restart."""
    return msgspec.structs.replace(new, **{name: getattr(old, name) for name in RESTART_SETTINGS})


def _prepare(source: ConfigSource) -> tuple[Config, TokenVerifier]:
    """Load and check the configuration and its key files; runs in a worker thread."""
    config = source.load()
    return config, TokenVerifier(config.auth_settings())


class Reloader:
    """Runs one reload at a time; requests that arrive meanwhile merge into one more."""

    def __init__(self, server: Server, source: ConfigSource) -> None:
        self.server = server
        self.source = source
        self.last: Outcome | None = None
        self._requested = asyncio.Event()

    def request(self) -> None:
        """Ask for a reload; safe to call from a signal handler."""
        self._requested.set()

    async def run(self) -> None:
        """Reload each time one is requested, until cancelled."""
        while True:
            await self._requested.wait()
            self._requested.clear()
            await self.reload()

    async def reload(self) -> Outcome:
        server = self.server
        server.notifier.reloading()
        log.info("config_reload_started", path=str(self.source.path) if self.source.path else None)
        try:
            config, verifier = await asyncio.to_thread(_prepare, self.source)
        except ConfigError as exc:
            outcome = Outcome("rejected", time.time(), problems=tuple(str(exc).splitlines()))
            log.error("config_reload_rejected", problems=list(outcome.problems), kept="the running configuration")
        else:
            outcome = self._apply(config, verifier)
        server.metrics.reloads[outcome.result] += 1
        server.notifier.ready(server.status_line())
        self.last = outcome
        return outcome

    def _apply(self, config: Config, verifier: TokenVerifier) -> Outcome:
        old = self.server.config
        changed = changed_settings(old, config)
        needs_restart = tuple(name for name in changed if name in RESTART_SETTINGS)
        applied = tuple(name for name in changed if name not in RESTART_SETTINGS)
        self.server.apply_config(keep_restart_settings(old, config), verifier)

        log.info("config_reloaded", changed=list(applied))
        if needs_restart:
            log.warning(
                "config_needs_restart",
                settings=list(needs_restart),
                detail="these settings keep their running values until the daemon restarts",
            )
        return Outcome("applied", time.time(), applied, needs_restart)
