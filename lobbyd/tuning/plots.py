"""PNG plots of a run: wait time against rating, and the win-probability histogram.

matplotlib draws with its Agg backend, which needs no display, so the plots work on
a headless build host. It is imported only when plots are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from lobbyd.tuning.report import Sample

# 10 bins of 0.05 cover every distance from 0.5 a win probability can have.
GAP_BINS: Final = [index * 0.05 for index in range(11)]
# Points drawn per policy in the scatter plot; more only blacken the picture.
MAX_POINTS: Final = 20_000
RATING_LABEL: Final = "rating in the match (display points)"
SKILL_LABEL: Final = "hidden skill as a rating: 1500 + 50 x (skill - 25)"


def write(
    directory: Path, runs: Sequence[tuple[str, Sequence[Sample]]], rating_label: str = RATING_LABEL
) -> list[Path]:
    """Draw ``wait-by-rating.png`` and ``win-probability.png`` into ``directory``, one series per run.

    ``runs`` pairs a policy name with its samples; each sample is placed at its
    ``band_rating``, which ``rating_label`` describes. Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    directory.mkdir(parents=True, exist_ok=True)
    waits = directory / "wait-by-rating.png"
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for name, samples in runs:
        shown = samples[:: max(len(samples) // MAX_POINTS, 1)]
        axes.scatter([s.band_rating for s in shown], [s.wait for s in shown], s=4, alpha=0.4, label=name)
    axes.set_xlabel(rating_label)
    axes.set_ylabel("wait from join to match found (s)")
    axes.set_title("Wait time against rating")
    axes.legend()
    figure.savefig(waits, dpi=100)
    pyplot.close(figure)

    gaps = directory / "win-probability.png"
    figure, axes = pyplot.subplots(figsize=(8, 5))
    series = [_match_gaps(samples) for _, samples in runs]
    axes.hist(series, bins=GAP_BINS, label=[name for name, _ in runs])
    axes.set_xlabel("|predicted win probability - 0.5|")
    axes.set_ylabel("matches")
    axes.set_title("How far matches are from even")
    axes.legend()
    figure.savefig(gaps, dpi=100)
    pyplot.close(figure)
    return [waits, gaps]


def _match_gaps(samples: Sequence[Sample]) -> list[float]:
    """Return each match's win-probability gap once; its players' samples all carry it."""
    gaps = {s.match: s.win_gap for s in samples if s.win_gap is not None}
    return list(gaps.values())
