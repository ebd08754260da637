"""Socket activation: the daemon serves on sockets passed with LISTEN_FDS, across restarts."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lobbyd.client import LobbyClient
from lobbyd.server.activation import ActivationError, _adopt, inherited_sockets
from tests.daemon import activated_daemon


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that the test holds, as systemd holds the one of lobbyd.socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_daemon_serves_passed_socket(tmp_path: Path, listener: socket.socket) -> None:
    with activated_daemon(tmp_path / "data", listener) as daemon:
        started = daemon.wait_for_event("server_started")

        async def log_in() -> dict[str, object]:
            client = await LobbyClient.connect(address_of(listener))
            welcome = await client.hello("activated")
            await client.close()
            return welcome

        welcome = asyncio.run(log_in())

    assert welcome["type"] == "welcome"
    assert started["socket_activated"] is True
    assert started["listen"] == [address_of(listener)]
    assert daemon.exit_code == 0, daemon.output()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_restart_keeps_connections_waiting(tmp_path: Path, listener: socket.socket) -> None:
    data = tmp_path / "data"
    with activated_daemon(data, listener) as first:
        pass
    assert first.exit_code == 0, first.output()

    async def connect_while_down() -> LobbyClient:
        # No daemon runs now: the kernel completes the handshake from the backlog.
        client = await LobbyClient.connect(address_of(listener))
        await client.send({"type": "hello", "v": 1, "player": "patient", "rid": 1})
        return client

    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(connect_while_down())
        with activated_daemon(data, listener) as second:
            welcome = loop.run_until_complete(client.recv(timeout=10))
            loop.run_until_complete(client.close())
    finally:
        loop.close()

    assert welcome["type"] == "welcome"
    assert welcome["player"] == "patient"
    assert welcome["rid"] == 1
    assert second.exit_code == 0, second.output()


def test_inherited_ignores_other_process() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "lobbyd.socket"}

    assert inherited_sockets(environ) == []
    assert environ == {}


def test_inherited_without_variables() -> None:
    assert inherited_sockets({}) == []


def test_inherited_rejects_bad_count() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}

    with pytest.raises(ActivationError, match="LISTEN_FDS is 'two'"):
        inherited_sockets(environ)


def test_adopt_rejects_unlistened_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))

        with pytest.raises(ActivationError, match="is not listening"):
            _adopt(sock.fileno())

        assert sock.fileno() >= 0


def test_adopt_rejects_datagram_socket() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(ActivationError, match="is not a TCP socket"),
    ):
        _adopt(sock.fileno())


def test_adopt_rejects_file() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ActivationError, match="is not a socket"):
            _adopt(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
