"""Who is connected: live sessions by id, and counts by framing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

from lobbyd.server.session import Session


class Registry:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._empty_waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session

    def remove(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        if not self._sessions and self._empty_waiters:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_empty(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the last session to close; return whether none is left."""
        if not self._sessions:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._empty_waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            return False
        return True

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def by_framing(self) -> Counter[str]:
        return Counter(session.framing.value for session in self._sessions.values())
