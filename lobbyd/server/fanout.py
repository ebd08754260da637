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
    """Write each message and wait, per session and at most ``send_timeout`` s, for it to drain.

    Returns how many sessions took their message. Every delivery is its own task in
    one ``TaskGroup``; a delivery never raises, so a slow or broken connection is
    closed on its own and cannot cancel or delay the others beyond the group's end.
    """
    delivered: list[bool] = []
    async with asyncio.TaskGroup() as group:
        for send in sends:
            session = registry.get(send.session)
            if session is not None:
                group.create_task(_deliver(session, send, send_timeout, delivered))
    return sum(delivered)


async def _deliver(session: Session, send: Send, send_timeout: float, delivered: list[bool]) -> None:
    try:
        if not session.send(send.message):
            return
        async with asyncio.timeout(send_timeout):
            await session.drain()
        delivered.append(True)
    except TimeoutError:
        session.log.warning("send_timed_out", timeout_s=send_timeout)
        session.close("send_timeout", abort=True)
    except ConnectionError:
        # The session's own read loop notices the broken connection and logs the close.
        return
    except Exception:
        session.log.exception("send_failed")
        session.close("internal_error", abort=True)
