"""kill -9 during a run loses no match that a client saw start and applies no result twice.

This is the short version of ``make crash-test`` (``reliability/crash.py``): the same
daemon, bot players, bot game servers and database checks, with 3 kills and 40 bots.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.crash import CrashOptions, run_crash_test

pytestmark = pytest.mark.slow

KILLS = 3


async def test_kill_9_keeps_matches_and_results(tmp_path: Path) -> None:
    # Half of the results are reported twice in a row, so that a few seconds of play
    # are sure to try a double application.
    options = CrashOptions(kills=KILLS, bots=40, seed=7, repeat_share=0.5, data_dir=tmp_path / "data")
    report = await run_crash_test(options)

    assert report.failures == []
    assert report.ok
    assert report.kills == KILLS
    assert report.integrity_checks_ok == KILLS
    assert report.matches_seen_started > 0
    assert report.matches_missing == 0
    assert report.teams_mismatched == 0

    # Results were applied, all of them are stored, and each moved ratings once.
    assert report.results_acknowledged > 0
    assert report.results_stored >= report.results_acknowledged
    assert report.players_rated > 0
    assert report.results_applied_twice == 0

    # Both kinds of repeated report were made, and each was rejected.
    replies = report.report_replies
    assert replies.get("repeat:already_reported", 0) > 0
    assert replies.get("after_restart:unknown_match", 0) > 0
    assert replies.get("repeat:result_applied", 0) == 0
    assert replies.get("after_restart:result_applied", 0) == 0
