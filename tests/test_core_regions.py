"""Unit tests of region choice under a latency limit that widens with wait."""

from __future__ import annotations

from lobbyd.core.expansion import Expansion
from lobbyd.core.regions import choose_region

# 60 ms at first, 100 ms after 20 s, 150 ms after 60 s.
LIMIT = Expansion.of((0, 60), (20, 100), (60, 150))

EU_AND_US = [
    {"eu": 20.0, "us-east": 95.0},
    {"eu": 55.0, "us-east": 40.0},
    {"eu": 90.0, "us-east": 30.0},
]


def test_no_region_under_first_limit() -> None:
    assert choose_region(EU_AND_US, LIMIT, anchor_wait=0.0) is None


def test_wider_limit_picks_lowest_worst() -> None:
    # Worst latency: eu 90 ms, us-east 95 ms.
    assert choose_region(EU_AND_US, LIMIT, anchor_wait=20.0) == "eu"


def test_region_must_be_reported_by_everyone() -> None:
    latencies = [{"eu": 10.0, "asia": 5.0}, {"eu": 30.0}]

    assert choose_region(latencies, LIMIT, anchor_wait=0.0) == "eu"


def test_tie_breaks_on_total_then_name() -> None:
    latencies = [{"a": 50.0, "b": 50.0, "c": 40.0}, {"a": 50.0, "b": 50.0, "c": 50.0}]

    assert choose_region(latencies, LIMIT, anchor_wait=0.0) == "c"
    assert choose_region([{"a": 50.0, "b": 50.0}], LIMIT, anchor_wait=0.0) == "a"


def test_empty_match_has_no_region() -> None:
    assert choose_region([], LIMIT, anchor_wait=0.0) is None
