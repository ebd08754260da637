"""Daemon settings: embedded defaults, then a TOML file, then LOBBYD_* variables, then flags.

Each later source overrides the earlier one key by key. Each setting is checked on
its own, so ``InvalidConfig`` lists every problem, each starting with where the bad
value came from and its key, for example
``lobbyd.toml:tick_interval_ms: expected `int` >= 10, got 0``.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from lobbyd.auth import MIN_SECRET_BYTES, AuthSettings, TokenVerifier
from lobbyd.config_queues import QueueConfig, Region, queues_problems
from lobbyd.config_values import Problem, suggestion, value_problems
from lobbyd.core.game_servers import StaticServer
from lobbyd.core.hosting import HostingSettings
from lobbyd.core.model import LobbySettings, QueueRules
from lobbyd.core.penalties import PenaltyLadder
from lobbyd.core.ratings import DEFAULT_ORDINAL_K
from lobbyd.errors import ConfigError
from lobbyd.protocol.messages import ID_PATTERN, MAX_ADDRESS_LENGTH, MAX_ID_LENGTH

# 7847 is registered to no common service and is unprivileged.
DEFAULT_PORT: Final = 7847
ENV_PREFIX: Final = "LOBBYD_"

Milliseconds = Annotated[int, msgspec.Meta(ge=1, le=86_400_000)]
Bytes = Annotated[int, msgspec.Meta(ge=1, le=2**31)]


class StaticGameServer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A game server that never connects to lobbyd, listed in the configuration."""

    address: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ADDRESS_LENGTH)]
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    queues: list[str]
    region: Region = "default"


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
    """How long a match_start, or the last bytes before a close, may wait for a client's socket to drain."""

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

    max_queued_requests: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 50_000
    """Entries waiting for the matchmaker; a player request that finds this many gets server_busy.

    Applies to a daemon that runs alone: a cluster node's queue to the leader is not bounded yet.
    """

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

    # Game servers and ratings. With neither a game-server secret nor static servers,
    # matches start without a game server, as before game servers existed.
    game_server_secret: str | None = None
    """Secret game servers send in register. Prefer game_server_secret_file."""

    game_server_secret_file: str | None = None
    join_ticket_secret: str | None = None
    """HMAC key of join tickets, shared with the game servers. Prefer join_ticket_secret_file."""

    join_ticket_secret_file: str | None = None
    join_ticket_ttl_ms: Milliseconds = 300_000
    allocate_timeout_ms: Milliseconds = 5_000
    """Time a registered game server has to acknowledge an allocation."""

    match_timeout_ms: Milliseconds = 7_200_000
    """Time a hosted match may run before it is abandoned."""

    static_slot_ms: Milliseconds = 1_800_000
    """Time a match holds a static game server's slot."""

    game_server_rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    game_server_rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 600
    rating_ordinal_k: Annotated[float, msgspec.Meta(ge=0, le=10)] = DEFAULT_ORDINAL_K
    """Sigmas subtracted from mu in the displayed and matched rating."""

    static_game_servers: list[StaticGameServer] = msgspec.field(default_factory=list)
    # Operations: graceful stop, the Prometheus endpoint and the admin socket.
    shutdown_ready_check_wait_ms: Milliseconds = 10_000
    """How long a graceful stop lets running ready checks finish before it kicks every client."""

    shutdown_retry_window_ms: Milliseconds = 10_000
    """The retry_after_ms hints sent with kicked {reason shutdown} are spread evenly over this window."""

    metrics_listen: str = ""
    """Loopback HOST:PORT of the Prometheus metrics endpoint; empty turns it off."""

    admin_socket: str = ""
    """Path of the admin Unix socket; empty means admin.sock in data_dir."""

    record_events_file: str = ""
    """JSON-lines file the queue events are appended to, for lobbyd replay; empty turns recording off."""
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

    # Dodge penalties: declining a match, or letting its ready check expire, after
    # match_found was sent.
    dodge_lockouts_s: list[Annotated[int, msgspec.Meta(ge=0, le=31_536_000)]] = msgspec.field(default_factory=list)
    """Lockout in seconds for each rung of the penalty ladder, 0 for a warning; empty turns penalties off."""

    dodge_decay_s: Annotated[int, msgspec.Meta(ge=1, le=31_536_000)] = 86_400
    """Seconds without a dodge that take a player one rung down the ladder."""

    queues: dict[str, QueueConfig] = msgspec.field(default_factory=_default_queues)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def lobby_settings(self) -> LobbySettings:
        return LobbySettings(
            ready_timeout=self.ready_check_timeout_ms / 1000,
            heartbeat_ms=self.heartbeat_interval_ms,
            max_matches_per_tick=self.max_matches_per_tick,
            rating_k=self.rating_ordinal_k,
            penalties=self.penalty_ladder(),
        )

    def penalty_ladder(self) -> PenaltyLadder | None:
        if not self.dodge_lockouts_s:
            return None
        return PenaltyLadder(tuple(float(s) for s in self.dodge_lockouts_s), float(self.dodge_decay_s))

    @property
    def hosts_matches(self) -> bool:
        """True when matches go to game servers: registered ones, static ones or both."""
        return bool(self.static_game_servers) or self.game_server_key() is not None

    def game_server_key(self) -> bytes | None:
        """Return the secret game servers register with, or None when registration is off."""
        return _read_secret("game_server_secret", self.game_server_secret, self.game_server_secret_file)

    def hosting_settings(self) -> HostingSettings | None:
        """Return the core's game-server settings, or None when matches need no game server."""
        if not self.hosts_matches:
            return None
        key = _read_secret("join_ticket_secret", self.join_ticket_secret, self.join_ticket_secret_file)
        if key is None:
            msg = "join_ticket_secret: game servers are configured, so a join ticket key is required"
            raise ConfigError(msg)
        static = tuple(
            StaticServer(entry.address, entry.capacity, frozenset(entry.queues), entry.region)
            for entry in self.static_game_servers
        )
        return HostingSettings(
            ticket_key=key,
            allocate_timeout=self.allocate_timeout_ms / 1000,
            ticket_ttl=self.join_ticket_ttl_ms / 1000,
            match_timeout=self.match_timeout_ms / 1000,
            static_servers=static,
            static_slot=self.static_slot_ms / 1000,
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
                window_uncertainty=queue.window_uncertainty,
                region=queue.region,
                rating_steps=queue.rating_expansion(),
                party_sizes=tuple(sorted(set(queue.party_sizes))),
                max_premade_gap=queue.max_premade_gap,
                roles=tuple(queue.roles),
                autofill_after=queue.autofill_after_s,
                latency_steps=queue.latency_expansion(),
                regions=tuple(queue.regions),
            )
            for name, queue in self.queues.items()
        }


# Tables and lists come only from the TOML file.
_TABLE_KEYS: Final = ("queues", "static_game_servers", "dodge_lockouts_s")
_SCALAR_KEYS: Final = tuple(name for name in Config.__struct_fields__ if name not in _TABLE_KEYS)
ENVIRONMENT: Final = "environment"
COMMAND_LINE: Final = "command line"
# Settings that lobbyd serve takes as flags, by key.
_FLAGS: Final = {"listen": "--listen", "data_dir": "--data-dir"}


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


class InvalidConfig(ConfigError):
    """Invalid settings; ``problems`` contains every one, each as ``SOURCE:KEY: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class _Source:
    """One layer of settings: a file's path, the environment or the command line."""

    name: str
    settings: dict[str, Any]

    def locate(self, key: str) -> str:
        """Return ``SOURCE:KEY`` in the form the operator wrote the key in this source."""
        if self.name == ENVIRONMENT:
            return f"{self.name}:{ENV_PREFIX}{key.upper()}"
        if self.name == COMMAND_LINE and key in _FLAGS:
            return f"{self.name}:{_FLAGS[key]}"
        return f"{self.name}:{key}"


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from the defaults, ``path``, ``environ`` and ``overrides``.

    Raises ``InvalidConfig`` listing every problem of every source, not just the first.
    Besides each value, this checks the rules that span settings, and that the key
    files exist and hold a usable key.
    """
    environ = os.environ if environ is None else environ
    sources: list[_Source] = []
    if path is not None:
        sources.append(_Source(str(path), _read_toml(path)))
    sources.append(_Source(ENVIRONMENT, _from_environ(environ)))
    sources.append(_Source(COMMAND_LINE, dict(overrides or {})))

    problems = [f"{_Source(ENVIRONMENT, {}).locate(key)}: {message}" for key, message in _environ_problems(environ)]
    merged: dict[str, Any] = {}
    invalid: set[str] = set()
    for source in sources:
        for key, value in source.settings.items():
            found = _setting_problems(key, value)
            problems += [f"{source.locate(where)}: {message}" for where, message in found]
            if found:
                invalid.add(key)
            else:
                invalid.discard(key)
                merged[key] = value

    # Rules between settings are checked on the valid settings alone, so that they
    # are reported alongside the bad values rather than after those are fixed.
    config = _convert(merged)
    for key, message in _cross_problems(config, invalid, _queue_names(config, sources)):
        problems.append(f"{_source_of(key, sources).locate(key)}: {message}")
    if problems:
        raise InvalidConfig(problems)
    return config


def check_file(path: Path) -> list[str]:
    """Return every problem of the TOML file at ``path`` alone, as ``FILE:KEY: message`` lines."""
    try:
        load(path, environ={})
    except InvalidConfig as exc:
        return exc.problems
    except ConfigError as exc:
        return [str(exc)]
    return []


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """Return the ``LOBBYD_*`` variable names that name no setting, sorted.

    They are only warned about, unlike unknown keys in the file: the environment is
    shared with other programs, and the test and benchmark tools read their own
    ``LOBBYD_TEST_*`` and ``LOBBYD_BENCH_*`` variables from it.
    """
    known = {ENV_PREFIX + key.upper() for key in Config.__struct_fields__}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


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


def _environ_problems(environ: Mapping[str, str]) -> list[Problem]:
    """Return a problem for each table setting given in the environment, which cannot hold one."""
    return [
        (key, "can be set only in the TOML file, not in the environment")
        for key in _TABLE_KEYS
        if ENV_PREFIX + key.upper() in environ
    ]


def _setting_problems(key: str, value: Any) -> list[Problem]:
    """Return the problems of one top-level setting on its own, so that one bad value hides no other."""
    if key == "queues":
        return queues_problems(value)
    if key not in Config.__struct_fields__:
        return [(key, f"unknown setting{suggestion(key, _SCALAR_KEYS)}")]
    return value_problems(key, value, Config, text_checks=_TEXT_CHECKS)


def _convert(raw: Mapping[str, Any]) -> Config:
    """Build a Config from settings that each passed ``_setting_problems``."""
    settings = dict(raw)
    queues = settings.pop("queues", None)
    config = msgspec.convert(settings, Config, strict=False)
    if queues is None:
        return config
    converted = {name: msgspec.convert(value, QueueConfig, strict=False) for name, value in queues.items()}
    return msgspec.structs.replace(config, queues=converted)


def _queue_names(config: Config, sources: list[_Source]) -> set[str]:
    """Return the names of the configured queues, including those with bad fields."""
    written = _source_of("queues", sources).settings.get("queues")
    if isinstance(written, dict):
        return {str(name) for name in written}
    return set(config.queues)


def _source_of(key: str, sources: list[_Source]) -> _Source:
    """Return the last source that set ``key``, where a rule between settings broke."""
    top = key.split(".")[0].split("[")[0]
    for source in sources[::-1]:
        if top in source.settings:
            return source
    return _Source("defaults", {})


def _cross_problems(config: Config, invalid: set[str], queue_names: set[str]) -> list[Problem]:
    """Return a problem for each rule between settings that fails.

    A rule that reads a setting in ``invalid`` is skipped: that setting's default
    would stand in for it and could report a problem that is not there. Static
    servers are checked against ``queue_names``, the queues the operator wrote,
    even when some of those queues have bad fields.
    """
    problems = []
    for keys, rule in _CROSS_RULES:
        if not keys & invalid:
            problems += rule(config)
    if "static_game_servers" not in invalid:
        problems += _static_server_problems(config.static_game_servers, queue_names)
    return problems


def _heartbeat_problems(config: Config) -> list[Problem]:
    if config.heartbeat_timeout_ms > config.heartbeat_interval_ms:
        return []
    message = (
        f"{config.heartbeat_timeout_ms} must be greater than heartbeat_interval_ms "
        f"({config.heartbeat_interval_ms}), or idle clients are cut off"
    )
    return [("heartbeat_timeout_ms", message)]


def _cluster_problems(config: Config) -> list[Problem]:
    if config.cluster != "redis" or config.store == "postgres":
        return []
    message = (
        f'"redis" needs store = "postgres", got {config.store!r}: the nodes of a cluster must share one durable store'
    )
    return [("cluster", message)]


def _recording_problems(config: Config) -> list[Problem]:
    # TODO: record a cluster's queue events; they happen on the leader, which does not write them yet.
    if config.cluster != "redis" or not config.record_events_file:
        return []
    message = 'a cluster node (cluster = "redis") records no queue events yet; leave it empty on cluster nodes'
    return [("record_events_file", message)]


def _static_server_problems(servers: list[StaticGameServer], queue_names: set[str]) -> list[Problem]:
    problems = []
    addresses: set[str] = set()
    for index, entry in enumerate(servers):
        where = f"static_game_servers[{index}]"
        try:
            parse_listen(entry.address)
        except ConfigError:
            problems.append((f"{where}.address", f"expected HOST:PORT, got {entry.address!r}"))
        if entry.address in addresses:
            problems.append((f"{where}.address", f"{entry.address} is listed twice"))
        addresses.add(entry.address)
        unknown = sorted(set(entry.queues) - queue_names)
        if unknown:
            message = f"{unknown} are not configured queues; configured: {sorted(queue_names)}"
            problems.append((f"{where}.queues", message))
        if not entry.queues:
            problems.append((f"{where}.queues", "at least one queue is required"))
    return problems


def _secret_problems(config: Config) -> list[Problem]:
    """Return a problem for each game-server secret that is unreadable, too short or missing."""
    problems = []
    for key in ("game_server_secret", "join_ticket_secret"):
        try:
            _read_secret(key, getattr(config, key), getattr(config, f"{key}_file"))
        except ConfigError as exc:
            problems.append(_split_problem(exc))
    registers = bool(config.game_server_secret or config.game_server_secret_file)
    has_ticket_key = bool(config.join_ticket_secret or config.join_ticket_secret_file)
    if (registers or config.static_game_servers) and not has_ticket_key:
        problems.append(("join_ticket_secret", "game servers are configured, so a join ticket key is required"))
    return problems


def _auth_problems(config: Config) -> list[Problem]:
    try:
        TokenVerifier(config.auth_settings())
    except ConfigError as exc:
        return [_split_problem(exc)]
    return []


def _split_problem(exc: ConfigError) -> Problem:
    """Split a ``KEY: message`` error into its key and message."""
    key, _, message = str(exc).partition(": ")
    return key, message


_AUTH_KEYS: Final = frozenset(name for name in Config.__struct_fields__ if name.startswith("auth_"))
_SECRET_SETTINGS: Final = frozenset(
    {
        "game_server_secret",
        "game_server_secret_file",
        "join_ticket_secret",
        "join_ticket_secret_file",
        "static_game_servers",
    }
)

# Rules between settings: the settings each reads, and the check.
_CROSS_RULES: Final[tuple[tuple[frozenset[str], Callable[[Config], list[Problem]]], ...]] = (
    (frozenset({"heartbeat_timeout_ms", "heartbeat_interval_ms"}), _heartbeat_problems),
    (frozenset({"cluster", "store"}), _cluster_problems),
    (frozenset({"cluster", "record_events_file"}), _recording_problems),
    (_SECRET_SETTINGS, _secret_problems),
    (_AUTH_KEYS, _auth_problems),
)


def _read_secret(key: str, value: str | None, path: str | None) -> bytes | None:
    """Return a secret from its file or its value, checked for length; None when neither is set."""
    secret = value or None
    if path:
        try:
            secret = Path(path).read_text().strip()
        except OSError as exc:
            msg = f"{key}_file: cannot read {path}: {exc.strerror}"
            raise ConfigError(msg) from None
    if secret is None:
        return None
    encoded = secret.encode()
    if len(encoded) < MIN_SECRET_BYTES:
        msg = f"{key}: the secret is {len(encoded)} bytes long; use at least {MIN_SECRET_BYTES} random bytes"
        raise ConfigError(msg)
    return encoded


def _listen_problems(value: str) -> list[str]:
    try:
        parse_listen(value)
    except ConfigError as exc:
        return [str(exc).removeprefix("listen: ")]
    return []


def _metrics_listen_problems(value: str) -> list[str]:
    if not value:
        return []
    try:
        host, _ = parse_listen(value)
    except ConfigError as exc:
        return [str(exc).removeprefix("listen: ")]
    if host == "localhost":
        return []
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return []
    # The endpoint has no authentication, so it stays on this host; a scraper
    # elsewhere reaches it through a proxy or tunnel that adds access control.
    return [f"{host!r} is not a loopback address: use 127.0.0.1, [::1] or localhost"]


# Checks of a setting's text that its type cannot express, by key.
_TEXT_CHECKS: Final[dict[str, Callable[[Any], list[str]]]] = {
    "listen": _listen_problems,
    "metrics_listen": _metrics_listen_problems,
}
