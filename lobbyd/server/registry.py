"""Who is connected: live sessions by id, and counts by framing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from lobbyd.server.session import Session


class Registry:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session

    def remove(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def by_framing(self) -> Counter[str]:
        return Counter(session.framing.value for session in self._sessions.values())
