"""Redis and PostgreSQL for the tests: found, started, or skipped, in one place.

Each service comes from the first of:

1. an environment variable: ``LOBBYD_TEST_REDIS_URL`` (``redis://HOST:PORT/DB``) or
   ``LOBBYD_TEST_PG_DSN`` (``postgresql://USER@HOST:PORT/DB``);
2. a server this module starts on a free loopback port for the test session:
   ``redis-server`` without persistence, or ``initdb`` and ``postgres`` in a
   temporary directory (run as the ``postgres`` user when the tests run as root,
   because PostgreSQL refuses to run as root);
3. otherwise the test is skipped with the reason. With ``LOBBYD_REQUIRE_SERVICES=1``
   (set by CI) it fails instead, so a broken machine never passes by skipping.

Tests share a service but not its data: ``redis_prefix`` gives each test its own key
prefix and ``pg_schema`` its own schema, both removed after the test.

``ProcessProxy`` sits between the daemons and a service, so that a test can make
the service unreachable (``cut``) and reachable again (``restore``) without stopping it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis

from tests.proxy import TcpProxy, free_port

__all__ = ["ProcessProxy", "Service", "TcpProxy", "free_port"]

REQUIRE_ENV = "LOBBYD_REQUIRE_SERVICES"
REDIS_ENV = "LOBBYD_TEST_REDIS_URL"
PG_ENV = "LOBBYD_TEST_PG_DSN"
START_TIMEOUT_S = 30.0


def service_missing(reason: str) -> None:
    """Skip the test, or fail it when CI requires the services."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"{name} exited with status {process.returncode}: {log.read_text(errors='replace')[-2000:]}"
            raise RuntimeError(msg)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    msg = f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g} s"
    raise RuntimeError(msg)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Service:
    url: str
    started: bool
    """True when this module started the server, False when the environment named it."""
    restart: Callable[[float], None] | None = None
    """Stop the server, wait the given seconds, and start it again; only when ``started``."""


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Service]:
    url = os.environ.get(REDIS_ENV)
    if url:
        yield Service(url, started=False)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing(f"no Redis: set {REDIS_ENV} or install redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="lobbyd-test-redis-"))
    port = free_port()
    log = workdir / "redis.log"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "--dir", str(workdir)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, "redis-server", log)
        yield Service(f"redis://127.0.0.1:{port}/0", started=True)
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _as_postgres_user() -> list[str]:
    """Return the command prefix that runs PostgreSQL's programs as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        service_missing("no PostgreSQL: the tests run as root and there is no 'postgres' user to run it as")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Service]:
    dsn = os.environ.get(PG_ENV)
    if dsn:
        yield Service(dsn, started=False)
        return
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb is None or postgres is None:
        service_missing(f"no PostgreSQL: set {PG_ENV} or install initdb and postgres")
    assert initdb is not None and postgres is not None
    prefix = _as_postgres_user()
    workdir = Path(tempfile.mkdtemp(prefix="lobbyd-test-pg-"))
    if prefix:
        shutil.chown(workdir, "postgres", "postgres")
    data = workdir / "data"
    log = workdir / "postgres.log"
    port = free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    # fsync off: the tests need speed, not durability across a power cut.
    command = [postgres, "-D", str(data), "-p", str(port), "-k", str(workdir), "-c", "listen_addresses=127.0.0.1"]
    server = LocalPostgres([*prefix, *command, "-c", "fsync=off"], data, port, log)
    try:
        server.start()
        yield Service(f"postgresql://postgres@127.0.0.1:{port}/postgres", started=True, restart=server.restart)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class LocalPostgres:
    """A PostgreSQL server this module runs, which a test may restart."""

    def __init__(self, command: list[str], data: Path, port: int, log: Path) -> None:
        self.command = command
        self.data = data
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, "postgres", self.log)

    def stop(self) -> None:
        """Stop with a fast shutdown, which disconnects clients instead of waiting for them."""
        if self.process is None or self.process.poll() is not None:
            return
        # The postmaster's pid is the first line of postmaster.pid; the process we
        # started may be runuser, which does not pass SIGINT on.
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            stop_process(self.process)

    def restart(self, down_seconds: float) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


def unique_name(kind: str) -> str:
    return f"lobbyd_test_{kind}_{uuid.uuid4().hex[:12]}"


# The two fixtures below are synchronous, so that async fixtures may look them up with
# request.getfixturevalue. Their clean-up runs its own event loop in a worker thread.


@pytest.fixture
def redis_prefix(redis_service: Service) -> Iterator[str]:
    """Return a key prefix of this test's own; its keys are deleted afterwards."""
    prefix = unique_name("r")
    yield prefix
    client = redis.Redis.from_url(redis_service.url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def pg_schema(postgres_service: Service) -> Iterator[str]:
    """Return a schema name of this test's own; the schema is dropped afterwards."""
    schema = unique_name("s")
    yield schema

    async def drop() -> None:
        connection = await asyncpg.connect(postgres_service.url)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        worker.submit(asyncio.run, drop()).result()


class ProcessProxy:
    """A ``TcpProxy`` in a process of its own, driven through its standard input.

    Tests that wait synchronously, for a subprocess to listen for example, would
    stall a proxy on the test's own loop, and with it every daemon behind it. A
    process of its own also keeps the sockets it aborts out of the test process.
    """

    def __init__(self, target: str) -> None:
        command = [sys.executable, "-m", "tests.proxy", target]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent
        )
        self.address = self._command("address")

    def cut(self) -> None:
        self._command("cut")

    def restore(self) -> None:
        self._command("restore")

    def close(self) -> None:
        if self._process.poll() is None:
            self._command("quit")
        stop_process(self._process)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def _command(self, name: str) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"{name}\n".encode())
        self._process.stdin.flush()
        reply = self._process.stdout.readline().decode().strip()
        if not reply:
            msg = f"the proxy process exited with status {self._process.poll()} on {name!r}"
            raise RuntimeError(msg)
        return reply


def host_port(url: str) -> str:
    """Return ``HOST:PORT`` of a ``redis://`` or ``postgresql://`` URL."""
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.hostname}:{parsed.port}"


def with_host_port(url: str, address: str) -> str:
    """Return ``url`` pointing at ``address`` (``HOST:PORT``) instead, user and path kept."""
    parsed = urllib.parse.urlsplit(url)
    user = f"{parsed.username}@" if parsed.username else ""
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"{user}{address}"))
