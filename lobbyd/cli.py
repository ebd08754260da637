"""Command line: ``lobbyd serve``, ``check-config``, ``admin``, ``client``, ``token``, ``sim`` and ``replay``.

Operator mistakes end in one line on stderr and an exit code, never a traceback:
2 for bad flags or configuration, 1 when the daemon cannot start (port taken,
store unusable).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lobbyd import admin_cli
from lobbyd import config as config_module
from lobbyd.errors import ConfigError, StartupError, StoreError

EXIT_START_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage block, so scripts and operators see the cause.
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lobbyd", description="Game-lobby and matchmaking daemon.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--listen", help="HOST:PORT to accept clients on (default 127.0.0.1:7847)")
    serve.add_argument("--data-dir", help="directory for the SQLite database (default ./var)")
    serve.add_argument(
        "--record-events", metavar="FILE", help="append queue events to FILE for lobbyd replay (default: off)"
    )

    client = commands.add_parser("client", help="talk to a daemon interactively or from a script")
    client.add_argument("--connect", default="127.0.0.1:7847", help="HOST:PORT of the daemon")
    client.add_argument("--player", help="player id to log in as (default: a random one)")
    client.add_argument("--name", help="display name sent in hello")
    client.add_argument("--json-lines", action="store_true", help="speak JSON lines instead of msgpack frames")
    client.add_argument("--auto-accept", action="store_true", help="accept every match_found at once")
    client.add_argument("--until", metavar="TYPE", help="exit 0 once a message of this type arrives")
    client.add_argument("--timeout", type=float, default=0.0, help="exit 1 after this many seconds (0: never)")

    token = commands.add_parser("token", help="mint a signed player token for development")
    token.add_argument("--config", type=Path, help="TOML configuration file with the auth settings")
    token.add_argument("--player", required=True, help="player id to put in the token's sub claim")
    token.add_argument(
        "--ttl", type=_positive_int, default=3600, help="seconds until the token expires, at least 1 (default 3600)"
    )
    token.add_argument("--private-key", help="PEM Ed25519 or P-256 private key, instead of the HS256 secret")

    check = commands.add_parser("check-config", help="check a TOML configuration file and list every problem")
    check.add_argument("file", type=Path, help="the TOML file to check")

    admin_help = "query or steer a running daemon: status, queues, player, kick, drain, log-level"
    admin_cli.add_arguments(commands.add_parser("admin", help=admin_help))

    sim = commands.add_parser("sim", help="run N bot players against a daemon and report")
    sim.add_argument("--connect", default="127.0.0.1:7847", help="HOST:PORT of the daemon")
    sim.add_argument(
        "--players",
        type=int,
        help="number of bot players, each holding one connection from this host until the run ends (default 100;"
        " with --population, overrides its players)",
    )
    sim.add_argument("--queue", help="queue every bot joins (default 5v5; with --population, overrides its queue)")
    sim.add_argument(
        "--population",
        type=Path,
        help="population model (TOML or JSON) whose arrivals, parties, roles, latencies and accept, decline and"
        " disconnect rates the bots follow;"
        " prints lobbyd replay's per-band report",
    )
    sim.add_argument("--arrival-rate", type=float, help="with --population: override its players per second")
    sim.add_argument(
        "--band-by",
        choices=["skill", "rating"],
        help="with --population: band players by hidden skill or by rating in the match (default skill)",
    )
    sim.add_argument("--band-width", type=int, help="with --population: points per skill band (default 200)")
    sim.add_argument("--plots", type=Path, help="with --population: also draw PNG plots into this directory")
    sim.add_argument(
        "--game-server-regions",
        help="with --population and --game-servers: comma-separated regions, each with --game-servers bot servers"
        " (default: the population's regions)",
    )
    sim.add_argument("--decline-rate", type=float, default=0.0, help="share of match_found answered with decline")
    sim.add_argument("--drop-rate", type=float, default=0.0, help="share of match_found answered by disconnecting")
    sim.add_argument("--connect-rate", type=float, default=2000.0, help="new connections per second")
    sim.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    sim.add_argument(
        "--seed", type=int, help="random seed, for a repeatable run (with --population, overrides its seed)"
    )
    sim.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    sim.add_argument(
        "--game-servers",
        type=int,
        default=0,
        help="also run this many bot game servers that host every match and report results (default 0)",
    )
    sim.add_argument(
        "--rounds", type=int, default=1, help="with --game-servers: rated matches every bot plays (default 1)"
    )
    sim.add_argument(
        "--match-seconds", type=float, default=3.0, help="with --game-servers: how long a match lasts (default 3)"
    )
    sim.add_argument(
        "--game-server-secret-file",
        type=Path,
        help="file with the daemon's game_server_secret (default: $LOBBYD_GAME_SERVER_SECRET)",
    )
    sim.add_argument(
        "--config",
        type=Path,
        help="TOML configuration file with the daemon's auth settings; each bot then logs in with a token minted "
        "from them, as lobbyd token does (default: no token, for a daemon in development mode)",
    )
    sim.add_argument("--private-key", help="PEM Ed25519 or P-256 private key to sign the bots' tokens with")
    sim.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")

    from lobbyd.tuning import cli as tuning_cli

    replay_help = "run recorded or synthetic queue events through the matchmaker offline and report match quality"
    tuning_cli.add_arguments(commands.add_parser("replay", help=replay_help))
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a whole number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "admin":
        return admin_cli.run_cli(args)
    if args.command == "client":
        from lobbyd.client_cli import run_cli as run_client

        return run_client(args)
    if args.command == "replay":
        from lobbyd.tuning.cli import run_cli as run_replay

        return run_replay(args)
    from lobbyd.sim import run_cli as run_sim

    return run_sim(args)


def _token(args: argparse.Namespace) -> int:
    from lobbyd import auth

    try:
        config = config_module.load(args.config)
        print(auth.mint(config.auth_settings(), args.player, args.ttl, args.private_key))
    except ConfigError as exc:
        print(f"lobbyd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _check_config(args: argparse.Namespace) -> int:
    problems = config_module.check_file(args.file)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(f"{args.file}: ok")
    return 0


def _print_config_error(exc: ConfigError) -> None:
    # The same SOURCE:KEY: message lines as check-config, then what happened.
    lines = str(exc).splitlines()
    for line in lines:
        print(line, file=sys.stderr)
    count = f"{len(lines)} problem" if len(lines) == 1 else f"{len(lines)} problems"
    print(f"lobbyd: not started: invalid configuration ({count})", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.record_events is not None:
        overrides["record_events_file"] = args.record_events
    try:
        config = config_module.load(args.config, overrides=overrides)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE

    from lobbyd.server import logs

    logs.configure(config.log_level, config.log_format)
    for name in config_module.unknown_environment(os.environ):
        logs.get("lobbyd.cli").warning("unknown_environment_variable", name=name)
    try:
        import uvloop

        return uvloop.run(_run_server(config, args.config, overrides))
    except KeyboardInterrupt:
        return 130


async def _run_server(config: config_module.Config, path: Path | None, overrides: dict[str, Any]) -> int:
    from lobbyd.server import logs
    from lobbyd.server.activation import inherited_sockets
    from lobbyd.server.app import Server
    from lobbyd.server.notify import Notifier, watchdog_interval
    from lobbyd.server.reload import ConfigSource

    log = logs.get("lobbyd.cli")
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(logs.log_loop_exception)
    try:
        server = Server(
            config,
            sockets=inherited_sockets(),
            notifier=Notifier.from_environ(),
            watchdog_s=watchdog_interval(),
            source=ConfigSource(path, overrides),
        )
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"lobbyd: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    try:
        await server.start()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        print(f"lobbyd: cannot listen on {config.listen}: {reason}", file=sys.stderr)
        return EXIT_START_FAILED
    except StoreError as exc:
        print(f"lobbyd: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    except StartupError as exc:
        print(f"lobbyd: {exc}", file=sys.stderr)
        return EXIT_START_FAILED

    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_START_FAILED)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        server.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)
    await server.serve()
    return 0
