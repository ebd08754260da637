"""A closed session is freed by reference counting alone, which gc.freeze relies on."""

from __future__ import annotations

import asyncio
import gc
import weakref

from tests.conftest import ClientFactory, RunningServer


async def test_closed_session_freed_without_gc(server: RunningServer, connect: ClientFactory) -> None:
    refs = []
    gc.collect()
    gc.disable()
    try:
        for i in range(3):
            client = await connect(f"gc{i}")
            await client.request("join_queue", queue="5v5")
            await client.recv_type("queued")
            session = next(s for s in server.server.registry if s.player == f"gc{i}")
            refs.append((weakref.ref(session), weakref.ref(session._transport)))
            del session
            await client.close()
        await asyncio.sleep(0.2)
        alive = [[ref() is not None for ref in group] for group in refs]
    finally:
        gc.enable()
    assert alive == [[False, False]] * 3
