"""Send one message to many sessions so that no single session can hold up the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from lobbyd.core.effects import Send
from lobbyd.server import logs
from lobbyd.server.registry import Registry
from lobbyd.server.session import Session

log = logs.get(__name__)


async def fan_out(sends: Iterable[Send], registry: Registry, send_timeout: float) -> int:
    """Write every message at once, then wait for slow sockets to drain; return how many took it.

    Writing never blocks, so every session gets its bytes in the same loop iteration.
    Only sessions whose transport buffer is above its high-water mark are then
    awaited, see ``drain_stalled``.
    """
    written, stalled = write_all(sends, registry)
    return written - len(stalled) + await drain_stalled(stalled, send_timeout)


def write_all(sends: Iterable[Send], registry: Registry) -> tuple[int, list[Session]]:
    """Write every message now; return how many sessions took theirs, and those above their high-water mark."""
    written: list[Session] = []
    for send in sends:
        session = registry.get(send.session)
        if session is not None and session.send(send.message):
            written.append(session)
    return len(written), [session for session in written if session.backed_up]


async def drain_stalled(stalled: list[Session], send_timeout: float) -> int:
    """Wait for each of ``stalled`` to drain; return how many did.

    Each session is awaited in its own task of one ``TaskGroup`` and for at most
    ``send_timeout`` seconds. A delivery task never raises, so a slow or broken
    connection is closed on its own and cannot cancel or delay the others.
    """
    if not stalled:
        return 0
    drained: list[bool] = []
    async with asyncio.TaskGroup() as group:
        for session in stalled:
            group.create_task(_drain(session, send_timeout, drained))
    return len(drained)


async def _drain(session: Session, send_timeout: float, drained: list[bool]) -> None:
    try:
        async with asyncio.timeout(send_timeout):
            await session.drain()
        drained.append(True)
    except TimeoutError:
        session.log.warning("send_timed_out", timeout_s=send_timeout)
        session.close("send_timeout", abort=True)
    except ConnectionError:
        # The session's own read loop notices the broken connection and logs the close.
        return
    except Exception:
        session.log.exception("send_failed")
        session.close("internal_error", abort=True)
