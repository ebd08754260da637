"""Daemon settings: embedded defaults, then a TOML file, then LOBBYD_* variables, then flags.

Each later source overrides the earlier one key by key. Each setting is checked on
its own, so ``InvalidConfig`` lists every problem, each starting with where the bad
value came from and its key, for example
``lobbyd.toml:tick_interval_ms: expected `int` >= 10, got 0``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from lobbyd.auth import MIN_SECRET_BYTES, AuthSettings, TokenVerifier
from lobbyd.core.expansion import Expansion, ExpansionStep, step_problem
from lobbyd.core.game_servers import StaticServer
from lobbyd.core.hosting import HostingSettings
from lobbyd.core.model import LobbySettings, QueueRules
from lobbyd.core.penalties import PenaltyLadder
from lobbyd.core.ratings import DEFAULT_ORDINAL_K
from lobbyd.errors import ConfigError
from lobbyd.protocol.messages import ID_PATTERN, MAX_ADDRESS_LENGTH, MAX_ID_LENGTH, MAX_ROLES

# 7847 is registered to no common service and is unprivileged.
DEFAULT_PORT: Final = 7847
ENV_PREFIX: Final = "LOBBYD_"

Milliseconds = Annotated[int, msgspec.Meta(ge=1, le=86_400_000)]
Bytes = Annotated[int, msgspec.Meta(ge=1, le=2**31)]
Region = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)]
RoleName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH)]


class StepConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One expansion step: from ``after_s`` seconds of wait on, ``limit`` applies. Without ``limit`` there is none."""

    after_s: Annotated[float, msgspec.Meta(ge=0)]
    limit: Annotated[float, msgspec.Meta(ge=0)] | None = None


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One queue: how many teams of how many players, and how the rating window grows."""

    team_count: Annotated[int, msgspec.Meta(ge=2, le=64)] = 2
    team_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    window_start: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    window_growth: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    window_max: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    window_uncertainty: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """Extra window per point of the anchor's sigma, in rating points."""
    region: Region = "default"
    """Region whose game servers host this queue's matches."""

    rating_steps: list[StepConfig] | None = None
    """Rating gap steps, in points, by the anchor's wait. When set, they replace the window_* ramp."""

    party_sizes: list[Annotated[int, msgspec.Meta(ge=1, le=64)]] = msgspec.field(default_factory=lambda: [1])
    """Party sizes that may queue, each at most team_size; 1 lets solo players queue."""

    max_premade_gap: Annotated[int, msgspec.Meta(ge=0, le=63)] | None = None
    """Largest difference between the biggest party on any two teams; unset, no cap."""

    roles: list[RoleName] = msgspec.field(default_factory=list)
    """Positions of a team, one player each; as many as team_size, at most 7. Empty: no roles."""

    autofill_after_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Seconds a player waits before they may get a role they did not list; unset, never."""

    latency_steps: list[StepConfig] | None = None
    """Round-trip latency limit steps, in milliseconds, by the anchor's wait. When set,
    each match is hosted in the region its players' reported latencies pick."""

    regions: list[Region] = msgspec.field(default_factory=list)
    """Regions a latency queue may host matches in; empty allows any region players report."""

    def rating_expansion(self) -> Expansion | None:
        return _expansion(self.rating_steps)

    def latency_expansion(self) -> Expansion | None:
        return _expansion(self.latency_steps)


def _expansion(steps: list[StepConfig] | None) -> Expansion | None:
    if steps is None:
        return None
    return Expansion(tuple(ExpansionStep(step.after_s, step.limit) for step in steps))


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


class InvalidConfig(ConfigError):
    """Invalid settings; ``problems`` contains every one, each as ``SOURCE:KEY: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from the defaults, ``path``, ``environ`` and ``overrides``.

    Raises ``InvalidConfig`` listing every problem of every source, not just the first.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), _read_toml(path)))
    env = _from_environ(os.environ if environ is None else environ)
    if env:
        layers.append(("environment", env))
    if overrides:
        layers.append(("command line", dict(overrides)))

    # Rules between settings are checked on the valid settings alone, so that they
    # are reported alongside the bad values rather than after those are fixed.
    problems: list[str] = []
    merged: dict[str, Any] = {}
    for source, raw in layers:
        layer_problems, valid = _layer_problems(raw, source)
        problems += layer_problems
        merged.update(valid)
    config = _convert(merged)
    problems += [f"{_source_of(key, layers)}:{key}: {message}" for key, message in _cross_problems(config)]
    if problems:
        raise InvalidConfig(problems)
    return config


def check_file(path: Path) -> list[str]:
    """Return every problem of the TOML file at ``path`` alone, as ``FILE:KEY: message`` lines.

    Besides each value, this checks what the daemon checks at start: the rules that
    span settings, and that the auth key files exist and hold a usable key.
    """
    try:
        config = load(path, environ={})
    except InvalidConfig as exc:
        return exc.problems
    except ConfigError as exc:
        return [str(exc)]
    try:
        TokenVerifier(config.auth_settings())
    except ConfigError as exc:
        return [f"{path}:{_with_auth_key(str(exc), config)}"]
    return []


def _with_auth_key(message: str, config: Config) -> str:
    """Prefix an auth error with the setting it concerns, unless it names one already."""
    named, sep, _ = message.partition(": ")
    if sep and named in Config.__struct_fields__:
        return message
    for key in ("auth_secret_file", "auth_secret", "auth_public_key_file"):
        if getattr(config, key):
            return f"{key}: {message}"
    return f"auth_required: {message}"


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


def _layer_problems(raw: Mapping[str, Any], source: str) -> tuple[list[str], dict[str, Any]]:
    """Check each setting of one source on its own, so that one bad value hides no other.

    Returns the problems and the settings that passed.
    """
    problems = []
    valid = {}
    for key, value in raw.items():
        if key == "queues":
            found = [f"{source}:{problem}" for problem in _queues_problems(value)]
        elif key not in Config.__struct_fields__:
            found = [f"{source}:{key}: unknown setting{_suggestion(key, _SCALAR_KEYS)}"]
        else:
            found = _value_problems(source, key, value, Config, "")
        problems += found
        if not found:
            valid[key] = value
    return problems, valid


def _value_problems(source: str, key: str, value: Any, struct: type[Any], prefix: str) -> list[str]:
    # strict=False lets "500" from an environment variable become the int 500.
    try:
        converted = msgspec.convert({key: value}, struct, strict=False)
    except msgspec.ValidationError as exc:
        return [f"{source}:{_explain(str(exc), prefix)}"]
    check = _TEXT_CHECKS.get(key) if struct is Config else None
    if check is None:
        return []
    return [f"{source}:{key}: {message}" for message in check(getattr(converted, key))]


def _queues_problems(queues: object) -> list[str]:
    if not isinstance(queues, dict):
        return [f"queues: expected a table of queues, got {type(queues).__name__}"]
    if not queues:
        return ["queues: at least one queue is required"]
    problems = []
    for name, table in queues.items():
        problems += _queue_problems(str(name), table)
    return problems


def _queue_problems(name: str, table: object) -> list[str]:
    key = f"queues.{name}"
    problems = []
    if len(name) > MAX_ID_LENGTH or not _QUEUE_NAME.match(name):
        problems.append(f"{key}: a queue name is 1 to {MAX_ID_LENGTH} of A-Z a-z 0-9 _ . -")
    if not isinstance(table, dict):
        return [*problems, f"{key}: expected a table, got {type(table).__name__}"]
    field_problems = []
    for field, value in table.items():
        if field not in QueueConfig.__struct_fields__:
            hint = _suggestion(field, QueueConfig.__struct_fields__)
            field_problems.append(f"{key}.{field}: unknown queue setting{hint}")
        else:
            field_problems += [p.removeprefix(":") for p in _value_problems("", field, value, QueueConfig, key)]
    problems += field_problems
    if field_problems:
        return problems
    queue = msgspec.convert(table, QueueConfig, strict=False)
    if queue.window_max < queue.window_start:
        problems.append(f"{key}.window_max: {queue.window_max} is below window_start ({queue.window_start})")
    problems += _steps_problems(f"{key}.rating_steps", queue.rating_steps)
    too_big = [size for size in queue.party_sizes if size > queue.team_size]
    if too_big:
        problems.append(f"{key}.party_sizes: {too_big} exceed team_size ({queue.team_size}); a party plays on one team")
    if not queue.party_sizes:
        problems.append(f"{key}.party_sizes: at least one party size is required; [1] lets solo players queue")
    problems += _roles_problems(key, queue)
    problems += _steps_problems(f"{key}.latency_steps", queue.latency_steps)
    problems += _regions_problems(key, queue)
    return problems


def _roles_problems(key: str, queue: QueueConfig) -> list[str]:
    problems = []
    roles = queue.roles
    if roles and len(roles) != queue.team_size:
        count = len(roles)
        problems.append(f"{key}.roles: {count} roles for team_size {queue.team_size}; a team has one player per role")
    if len(roles) > MAX_ROLES:
        problems.append(f"{key}.roles: {len(roles)} roles is more than the {MAX_ROLES} a queue may have")
    repeated = sorted({role for role in roles if roles.count(role) > 1})
    if repeated:
        problems.append(f"{key}.roles: {repeated[0]!r} is listed more than once")
    if queue.autofill_after_s is not None and not roles:
        problems.append(f"{key}.autofill_after_s: the queue has no roles to autofill; set roles or remove it")
    return problems


def _regions_problems(key: str, queue: QueueConfig) -> list[str]:
    problems = []
    if queue.regions and queue.latency_steps is None:
        problems.append(f"{key}.regions: only a queue with latency_steps picks a region per match; set latency_steps")
    repeated = sorted({region for region in queue.regions if queue.regions.count(region) > 1})
    if repeated:
        problems.append(f"{key}.regions: {repeated[0]!r} is listed more than once")
    return problems


def _steps_problems(key: str, steps: list[StepConfig] | None) -> list[str]:
    if steps is None:
        return []
    problem = step_problem([ExpansionStep(step.after_s, step.limit) for step in steps])
    if problem is None:
        return []
    if problem.startswith("["):
        return [f"{key}{problem}"]
    return [f"{key}: {problem}"]


def _suggestion(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _convert(raw: Mapping[str, Any]) -> Config:
    """Build a Config from settings that each passed ``_layer_problems``."""
    settings = dict(raw)
    queues = settings.pop("queues", None)
    config = msgspec.convert(settings, Config, strict=False)
    if queues is None:
        return config
    converted = {name: msgspec.convert(value, QueueConfig, strict=False) for name, value in queues.items()}
    return msgspec.structs.replace(config, queues=converted)


def _source_of(key: str, layers: list[tuple[str, dict[str, Any]]]) -> str:
    """Name the last source that set ``key``, where a rule between settings broke."""
    top = key.split(".")[0].split("[")[0]
    for name, settings in layers[::-1]:
        if top in settings:
            return name
    return "defaults"


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


def _cross_problems(config: Config) -> list[tuple[str, str]]:
    """Return (key, message) for each rule between settings that fails."""
    problems = []
    if config.heartbeat_timeout_ms <= config.heartbeat_interval_ms:
        problems.append(
            (
                "heartbeat_timeout_ms",
                f"{config.heartbeat_timeout_ms} must be greater than heartbeat_interval_ms "
                f"({config.heartbeat_interval_ms}), or idle clients are cut off",
            )
        )
    if config.cluster == "redis" and config.store != "postgres":
        problems.append(
            (
                "cluster",
                f'"redis" needs store = "postgres", got {config.store!r}: '
                "the nodes of a cluster must share one durable store",
            )
        )
    problems += _static_server_problems(config)
    try:
        config.hosting_settings()
    except ConfigError as exc:
        key, _, message = str(exc).partition(": ")
        problems.append((key, message))
    return problems


def _static_server_problems(config: Config) -> list[tuple[str, str]]:
    problems = []
    addresses: set[str] = set()
    for index, entry in enumerate(config.static_game_servers):
        where = f"static_game_servers[{index}]"
        try:
            parse_listen(entry.address)
        except ConfigError:
            problems.append((f"{where}.address", f"expected HOST:PORT, got {entry.address!r}"))
            continue
        if entry.address in addresses:
            problems.append((f"{where}.address", f"{entry.address} is listed twice"))
        addresses.add(entry.address)
        unknown = sorted(set(entry.queues) - set(config.queues))
        if unknown or not entry.queues:
            problems.append((f"{where}.queues", f"expected names of configured queues, got {entry.queues!r}"))
    return problems


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
