"""Share the event loop among many ready tasks in slices of bounded length.

A burst of tasks can become ready in the same loop iteration, such as every match
start of one group commit. The loop runs all of them before it polls the sockets
again, so a client's ping waits for the whole burst. A ``Pacer`` lets those
tasks run until ``slice_s`` seconds of work have passed in the current iteration,
and sends the rest to the next iteration, after the loop has done its I/O.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """A time budget per event-loop iteration, shared by the tasks that call ``pace``."""

    __slots__ = ("_next_slice", "_slice_s", "_started")

    def __init__(self, slice_s: float) -> None:
        self._slice_s = slice_s
        self._started: float | None = None
        self._next_slice: asyncio.Future[None] | None = None

    async def pace(self) -> None:
        """Return at once while this slice has time left, else after the loop's next I/O poll."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
            # A callback scheduled now runs in the loop's next pass over its ready
            # callbacks, after it has polled the sockets.
            asyncio.get_running_loop().call_soon(self._start_next_slice)
            return
        if now - self._started < self._slice_s:
            return
        if self._next_slice is None:
            self._next_slice = asyncio.get_running_loop().create_future()
        await self._next_slice
        await self.pace()

    def _start_next_slice(self) -> None:
        self._started = None
        waiting, self._next_slice = self._next_slice, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
