"""Paced work: a burst of items is spread over loop iterations, in order, and never stalls."""

from __future__ import annotations

import asyncio
from typing import Any

from lobbyd.server.pacing import PacedQueue, Pacer


async def test_paced_queue_spreads_burst() -> None:
    # A zero-length slice leaves room for one item per loop iteration.
    handled: list[int] = []
    queue = PacedQueue(Pacer(0.0), handled.append)
    for item in range(3):
        queue.put(item)

    await asyncio.sleep(0)
    assert handled == [0]
    assert len(queue) == 2

    for _ in range(5):
        await asyncio.sleep(0)
    assert handled == [0, 1, 2]
    assert len(queue) == 0


async def test_paced_queue_whole_burst_in_slice() -> None:
    handled: list[int] = []
    queue = PacedQueue(Pacer(60.0), handled.append)
    for item in range(100):
        queue.put(item)

    await asyncio.sleep(0)
    assert handled == list(range(100))


async def test_paced_queue_survives_failing_item() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            raise ValueError("item 1 is broken")
        handled.append(item)

    queue = PacedQueue(Pacer(60.0), handle)
    for item in range(3):
        queue.put(item)
    try:
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)

    assert handled == [0, 2]
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], ValueError)


async def test_pacer_defers_after_slice() -> None:
    pacer = Pacer(0.0)
    order: list[str] = []

    async def worker(name: str) -> None:
        await pacer.pace()
        order.append(name)

    # The first caller of an iteration starts the slice and runs; the zero-length
    # slice sends the second to a later iteration.
    tasks = [asyncio.create_task(worker(name)) for name in ("first", "second")]
    await asyncio.sleep(0)
    assert order == ["first"]

    await asyncio.gather(*tasks)
    assert order == ["first", "second"]
