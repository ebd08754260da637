"""Daemon settings: embedded defaults, then a TOML file, then LOBBYD_* variables, then flags.

Each later source overrides the earlier one key by key. Every problem is reported as
a ``ConfigError`` whose message starts with where the bad value came from and its key,
for example ``lobbyd.toml:tick_interval_ms: expected int >= 10, got 0``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from lobbyd.auth import AuthSettings
from lobbyd.core.model import LobbySettings, QueueRules
from lobbyd.errors import ConfigError
from lobbyd.protocol.messages import ID_PATTERN, MAX_ID_LENGTH

# 7847 is registered to no common service and is unprivileged.
DEFAULT_PORT: Final = 7847
ENV_PREFIX: Final = "LOBBYD_"

Milliseconds = Annotated[int, msgspec.Meta(ge=1, le=86_400_000)]
Bytes = Annotated[int, msgspec.Meta(ge=1, le=2**31)]


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One queue: how many teams of how many players, and how the rating window grows."""

    team_count: Annotated[int, msgspec.Meta(ge=2, le=64)] = 2
    team_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    window_start: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    window_growth: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    window_max: Annotated[float, msgspec.Meta(ge=0)] = 1000.0


def _default_queues() -> dict[str, QueueConfig]:
    return {
        "1v1": QueueConfig(team_count=2, team_size=1),
        "5v5": QueueConfig(team_count=2, team_size=5),
    }


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    """HOST:PORT to accept clients on; [::1]:PORT for IPv6."""

    data_dir: str = "var"
    """Directory for the SQLite database, relative to the working directory."""

    store: Literal["sqlite", "memory", "postgres"] = "sqlite"
    sqlite_synchronous: Literal["normal", "full"] = "normal"

    max_frame_bytes: Bytes = 65_536
    max_outgoing_bytes: Bytes = 1_048_576
    """Unsent bytes a session may hold before it is closed as a slow consumer."""

    heartbeat_interval_ms: Milliseconds = 10_000
    heartbeat_timeout_ms: Milliseconds = 30_000
    hello_timeout_ms: Milliseconds = 10_000
    ready_check_timeout_ms: Milliseconds = 10_000
    tick_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 200
    max_matches_per_tick: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    """Matches one tick may form; a tick that reaches it continues right after pending I/O."""
    flush_interval_ms: Milliseconds = 500
    send_timeout_ms: Milliseconds = 5_000
    """How long a match_start may wait for a client's socket to drain."""

    shutdown_timeout_ms: Milliseconds = 5_000
    cleanup_interval_ms: Milliseconds = 60_000
    player_idle_ttl_ms: Milliseconds = 600_000
    """How long an offline player's record stays in memory after their last session."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Limits against abuse.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """Open client connections in total; a new one past this gets server_full."""

    max_connections_per_address: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 256
    """Open connections from one source address; players behind one NAT share it."""

    frame_timeout_ms: Milliseconds = 10_000
    """Time a frame may take from its first byte to its last."""

    rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    """Messages per second a session may send, sustained."""

    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 60
    """Messages a session may send at once above the sustained rate; also how many
    rejected messages in a row end the session."""

    server_full_retry_ms: Milliseconds = 5_000
    """Retry hint sent with server_full."""

    # Player authentication with JWTs. With neither a secret nor a public key set,
    # the daemon runs in development mode and takes any player id.
    auth_secret: str | None = None
    """HS256 shared secret. Prefer auth_secret_file, which keeps it out of the environment."""

    auth_secret_file: str | None = None
    auth_public_key_file: str | None = None
    """PEM public key (Ed25519 for EdDSA, P-256 for ES256) that player tokens are signed with."""

    auth_issuer: str | None = None
    """Required `iss` claim, when set."""

    auth_audience: str = "lobbyd"
    """Required `aud` claim of player tokens."""

    auth_leeway_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 30
    """Clock skew allowed when checking `exp` and `nbf`, in seconds."""

    auth_required: bool = False
    """Refuse to start without a key instead of falling back to development mode."""

    # Several nodes serving one player base: PostgreSQL as the store (store =
    # "postgres") and Redis for shared state (cluster = "redis"). See docs/deployment.md.
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/lobbyd"
    """libpq connection URI of the database that store = "postgres" uses."""

    postgres_schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "public"
    """Schema that holds lobbyd's tables; it is created when missing."""

    postgres_pool_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 4
    """Connections each node keeps open to PostgreSQL."""

    cluster: Literal["off", "redis"] = "off"
    """"redis" makes this daemon one node of a cluster that shares state in Redis."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "lobbyd"
    """Prefix of every Redis key of the cluster; nodes with the same prefix form one cluster."""

    node_id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)] | None = None
    """Name of this node in the cluster; default: host name, process id and a random suffix."""

    leader_lease_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 3_000
    """How long a leader's lease lasts without renewal; it is renewed every third of it."""

    node_ttl_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 3_000
    """How long a node's liveness key lasts without renewal; a node whose key stays
    missing this long again is declared dead and its players leave queues and ready checks."""

    redis_timeout_ms: Milliseconds = 1_000
    """Deadline of one Redis command; a node that misses it treats Redis as unreachable."""

    unavailable_retry_ms: Milliseconds = 2_000
    """Retry hint sent with the unavailable error while Redis is unreachable."""

    queues: dict[str, QueueConfig] = msgspec.field(default_factory=_default_queues)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def lobby_settings(self) -> LobbySettings:
        return LobbySettings(
            ready_timeout=self.ready_check_timeout_ms / 1000,
            heartbeat_ms=self.heartbeat_interval_ms,
            max_matches_per_tick=self.max_matches_per_tick,
        )

    def auth_settings(self) -> AuthSettings:
        return AuthSettings(
            secret=self.auth_secret,
            secret_file=self.auth_secret_file,
            public_key_file=self.auth_public_key_file,
            issuer=self.auth_issuer,
            audience=self.auth_audience,
            leeway_s=self.auth_leeway_s,
            required=self.auth_required,
        )

    def queue_rules(self) -> dict[str, QueueRules]:
        return {
            name: QueueRules(
                name=name,
                team_count=queue.team_count,
                team_size=queue.team_size,
                window_start=queue.window_start,
                window_growth=queue.window_growth,
                window_max=queue.window_max,
            )
            for name, queue in self.queues.items()
        }


_SCALAR_KEYS: Final = tuple(name for name in Config.__struct_fields__ if name != "queues")
_QUEUE_NAME = re.compile(ID_PATTERN)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[V6]:PORT``) and check the port range."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        msg = f"listen: expected HOST:PORT, got {value!r}"
        raise ConfigError(msg)
    port = int(port_text)
    if not 0 <= port <= 65_535:
        msg = f"listen: port {port} is outside 0..65535"
        raise ConfigError(msg)
    return host.strip("[]"), port


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from the defaults, ``path``, ``environ`` and ``overrides``."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        raw.update(_read_toml(path))
        source = str(path)
    config = _convert(raw, source)

    env = _from_environ(os.environ if environ is None else environ)
    if env:
        config = _convert({**raw, **env}, "environment")
        raw.update(env)
    if overrides:
        config = _convert({**raw, **overrides}, "command line")
    _check(config, source)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        msg = f"{path}: config file not found"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"{path}: cannot read config file: {exc.strerror}"
        raise ConfigError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: invalid TOML: {exc}"
        raise ConfigError(msg) from None


def _from_environ(environ: Mapping[str, str]) -> dict[str, str]:
    # Only scalar settings come from the environment; queues need the TOML file.
    found = {}
    for key in _SCALAR_KEYS:
        value = environ.get(ENV_PREFIX + key.upper())
        if value is not None:
            found[key] = value
    return found


def _convert(raw: Mapping[str, Any], source: str) -> Config:
    settings = dict(raw)
    queues = settings.pop("queues", None)
    # strict=False lets "500" from an environment variable become the int 500.
    try:
        config = msgspec.convert(settings, Config, strict=False)
    except msgspec.ValidationError as exc:
        msg = f"{source}:{_explain(str(exc), '')}"
        raise ConfigError(msg) from None
    if queues is None:
        return config
    if not isinstance(queues, dict):
        msg = f"{source}:queues: expected a table of queues, got {type(queues).__name__}"
        raise ConfigError(msg)
    converted = {name: _convert_queue(name, value, source) for name, value in queues.items()}
    return msgspec.structs.replace(config, queues=converted)


def _convert_queue(name: str, raw: object, source: str) -> QueueConfig:
    try:
        return msgspec.convert(raw, QueueConfig, strict=False)
    except msgspec.ValidationError as exc:
        msg = f"{source}:{_explain(str(exc), f'queues.{name}')}"
        raise ConfigError(msg) from None


def _explain(message: str, prefix: str) -> str:
    """Rewrite msgspec's "Expected ... - at `$.key`" as "key: expected ..."."""
    text, sep, path = message.rpartition(" - at `$")
    key = prefix
    if sep:
        key = f"{prefix}{path.rstrip('`')}".lstrip(".")
        message = text
    elif message.startswith("Object contains unknown field `"):
        field = message.split("`")[1]
        key = f"{prefix}.{field}".lstrip(".")
        message = "unknown setting"
    return f"{key}: {message[:1].lower() + message[1:]}"


def _check(config: Config, source: str) -> None:
    try:
        parse_listen(config.listen)
    except ConfigError as exc:
        msg = f"{source}:{exc}"
        raise ConfigError(msg) from None
    if config.heartbeat_timeout_ms <= config.heartbeat_interval_ms:
        msg = (
            f"{source}:heartbeat_timeout_ms: {config.heartbeat_timeout_ms} must be greater than "
            f"heartbeat_interval_ms ({config.heartbeat_interval_ms}), or idle clients are cut off"
        )
        raise ConfigError(msg)
    if not config.queues:
        msg = f"{source}:queues: at least one queue is required"
        raise ConfigError(msg)
    for name, queue in config.queues.items():
        if len(name) > MAX_ID_LENGTH or not _QUEUE_NAME.match(name):
            msg = f"{source}:queues.{name}: a queue name is 1 to {MAX_ID_LENGTH} of A-Z a-z 0-9 _ . -"
            raise ConfigError(msg)
        if queue.window_max < queue.window_start:
            msg = f"{source}:queues.{name}.window_max: {queue.window_max} is below window_start ({queue.window_start})"
            raise ConfigError(msg)
    if config.cluster == "redis" and config.store != "postgres":
        msg = (
            f"{source}:cluster: \"redis\" needs store = \"postgres\", got {config.store!r}: "
            "the nodes of a cluster must share one durable store"
        )
        raise ConfigError(msg)
