"""A TCP proxy that a test can cut and restore: ``python -m tests.proxy HOST:PORT``.

Run as a program, it listens on a free loopback port and reads one command per line
from standard input: ``address`` (prints the listening HOST:PORT), ``cut``, ``restore``
and ``quit``. It prints ``ok`` after each of the others.
"""

from __future__ import annotations

import asyncio
import socket
import sys


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TcpProxy:
    """Forward a loopback port to a service, until ``cut`` drops every connection.

    ``cut`` closes the listening socket and aborts every forwarded connection, so
    clients see what they would see if the service stopped: resets, then refused
    connections. ``restore`` listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # abort() closes a transport in a callback; let those run before the loop stops.
        for _ in range(3):
            await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Registered before the upstream connect, so that a cut during it closes this one too.
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if writer.transport.is_closing():
            upstream_writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65_536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


async def serve(target: str) -> None:
    host, _, port = target.rpartition(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    loop = asyncio.get_running_loop()
    commands = {"cut": proxy.cut, "restore": proxy.restore}
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line in ("", "quit"):
            await proxy.close()
            print("ok", flush=True)
            return
        if line == "address":
            print(proxy.address, flush=True)
            continue
        await commands[line]()
        print("ok", flush=True)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
