"""Keep full garbage collections from pausing the event loop.

A full collection walks every tracked object; with 10,000 sessions it stalled the
loop for about 200 ms in the lifecycle benchmark. The daemon's long-lived objects
(sessions, their streams and tasks) are freed by reference counting alone once a
connection closes, and a test keeps that true. So every ``FREEZE_INTERVAL_S`` the
daemon collects the young generations and moves what survives out of the collector's
view with ``gc.freeze()``: a full collection then only walks what is younger than that.

The cost of the trade: an object frozen while alive that later dies inside a
reference cycle is never reclaimed. Collecting the young generations just before
each freeze keeps short-lived cycles out of the frozen set.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Final

from lobbyd.server import logs

# Seconds between freezes. CPython 3.11 skips a full collection while the objects
# promoted since the last one are under a quarter of those it left in the oldest
# generation. Frozen objects count in neither, so that rule no longer delays full
# collections, which then walk everything younger than the last freeze. During the
# login storm of the lifecycle benchmark, with a freeze every second they took 8-16 ms;
# every 0.25 s, under 2 ms. The young collection before each freeze is well under 1 ms.
FREEZE_INTERVAL_S: Final = 0.25

# A collection slower than this is logged, so a pause in the loop has a named cause:
# half the event loop's 10 ms lag budget of the lifecycle benchmark.
SLOW_COLLECTION_S: Final = 0.005

log = logs.get(__name__)


def freeze_survivors() -> None:
    """Collect the young generations, then freeze every surviving object.

    It deliberately does not report ``gc.get_freeze_count()``: that walks the whole
    frozen set, about 100 ms with 10,000 sessions.
    """
    gc.collect(1)
    gc.freeze()


async def keep_frozen(interval: float = FREEZE_INTERVAL_S) -> None:
    """Freeze survivors every ``interval`` seconds until cancelled, logging slow collections."""
    watch = _CollectionTimer()
    gc.callbacks.append(watch)
    try:
        while True:
            await asyncio.sleep(interval)
            freeze_survivors()
    finally:
        gc.callbacks.remove(watch)


class _CollectionTimer:
    """A ``gc.callbacks`` hook that logs collections slower than ``SLOW_COLLECTION_S``."""

    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        if elapsed >= SLOW_COLLECTION_S:
            log.warning(
                "gc_pause",
                generation=info.get("generation"),
                ms=round(elapsed * 1000, 1),
                collected=info.get("collected"),
            )
