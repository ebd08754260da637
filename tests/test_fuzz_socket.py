"""A short socket fuzz run: the daemon survives it, logs no error and keeps replying to pings.

``make fuzz`` runs the same fuzzer for a minute with more connections.
"""

from __future__ import annotations

import pytest

from reliability.fuzz import FuzzOptions, run_fuzz

pytestmark = pytest.mark.slow


async def test_socket_fuzz_short_run() -> None:
    report = await run_fuzz(FuzzOptions(seconds=5, connections=16, seed=5))
    assert report.failures == []
    assert report.connections > 100
    assert report.probe.pings > 50
    # The mix reached the framing, the validation and the lobby.
    for code in ("bad_frame", "invalid_field", "unknown_type", "not_authenticated"):
        assert report.errors_by_code.get(code, 0) > 0, (code, report.errors_by_code)
    assert report.replies.get("welcome", 0) > 0
    assert report.replies.get("queued", 0) > 0
