"""Share the event loop among many ready tasks in slices of bounded length.

A burst of work can become ready in the same loop iteration, such as every match
start of one group commit, or the end of stream of 10,000 connections that closed
at once. The loop runs all of it before it polls the sockets again, so a client's
ping waits for the whole burst. A ``Pacer`` lets that work run until ``slice_s``
seconds have passed in the current iteration, and sends the rest to the next
iteration, after the loop has done its I/O.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class Pacer:
    """A time budget per event-loop iteration, shared by the tasks and queues that use it."""

    __slots__ = ("_next_slice", "_slice_s", "_started")

    def __init__(self, slice_s: float) -> None:
        self._slice_s = slice_s
        self._started: float | None = None
        self._next_slice: asyncio.Future[None] | None = None

    def has_time(self) -> bool:
        """Return whether this iteration's slice has time left; the first call starts the slice."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
            # A callback scheduled now runs in the loop's next pass over its ready
            # callbacks, after it has polled the sockets.
            asyncio.get_running_loop().call_soon(self._start_next_slice)
            return True
        return now - self._started < self._slice_s

    async def pace(self) -> None:
        """Return at once while this slice has time left, else after the loop's next I/O poll."""
        while not self.has_time():
            if self._next_slice is None:
                self._next_slice = asyncio.get_running_loop().create_future()
            await self._next_slice

    def _start_next_slice(self) -> None:
        self._started = None
        waiting, self._next_slice = self._next_slice, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)


class PacedQueue(Generic[_T]):
    """Items handed to ``handle`` one by one, in FIFO order, within a ``Pacer``'s slices.

    Each loop iteration handles at least one item, so a slice spent by other work
    cannot stall the queue. An exception from ``handle`` goes to the loop's exception
    handler, and the queue goes on with the next item.
    """

    __slots__ = ("_handle", "_items", "_pacer", "_scheduled")

    def __init__(self, pacer: Pacer, handle: Callable[[_T], object]) -> None:
        self._pacer = pacer
        self._handle = handle
        self._items: collections.deque[_T] = collections.deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: _T) -> None:
        """Queue ``item``; it is handled in a later loop iteration, after an I/O poll."""
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def run_or_put(self, item: _T) -> None:
        """Handle ``item`` now if no item waits before it and the slice has time, else queue it."""
        if not self._items and self._pacer.has_time():
            self._call(item)
            return
        self.put(item)

    def _run(self) -> None:
        self._scheduled = False
        items = self._items
        self._pacer.has_time()
        while items:
            self._call(items.popleft())
            if not self._pacer.has_time():
                break
        if items:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _call(self, item: _T) -> None:
        try:
            self._handle(item)
        except Exception as exc:
            message = f"paced handler {self._handle!r} failed on {item!r}"
            asyncio.get_running_loop().call_exception_handler({"message": message, "exception": exc})
