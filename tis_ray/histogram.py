"""Exact counts of scores, and every threshold question asked of them.

A similarity is ``round((cos + 1) / 2, 4)``: one of the 10,001 values 0.0000, 0.0001,
..., 1.0000. Counting rows per value ("bin") in one pass therefore loses nothing:
percentiles, the rows a threshold keeps and the threshold that keeps the top P% are
all exact, whatever the row count, in 80 KB. `filter` and the report's slider (which
gets the same counts) both answer from here, so the page's numbers are the command's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

SCALE = 10_000  # scores have 4 decimals
BINS = SCALE + 1
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
KEEP_TOP_SHOWN = (10, 30, 50)


def to_bins(scores: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] (finite) as their bins: ``round(score * 10000)``."""
    return np.rint(scores * SCALE).astype(np.int64)


def bin_at_least(threshold: Fraction) -> int:
    """The first bin whose score is ``>= threshold``: ``similarity >= t`` is ``bin >= this``."""
    return max(0, min(BINS, math.ceil(threshold * SCALE)))


def score_text(bin_: int) -> str:
    """A bin as the score it stands for, with its 4 decimals."""
    return f"{bin_ / SCALE:.4f}"


@dataclass(frozen=True)
class TopCut:
    """How the top `rows` scored rows are chosen: every row above `bin`, then the first
    `ties_kept` (in file order) of the `ties` rows at `bin`."""

    rows: int
    bin: int
    ties: int
    ties_kept: int

    @property
    def threshold(self) -> str:
        return score_text(self.bin)


@dataclass
class Histogram:
    """Rows per score bin; only scored rows (a row with no score is not counted)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))

    def add(self, bins: np.ndarray) -> None:
        self.counts += np.bincount(bins, minlength=BINS)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, p: float) -> int:
        """The bin of the p-th percentile by the nearest-rank (inverted CDF) method: the lowest
        score with at least p% of the rows at or below it (numpy's ``method="inverted_cdf"``)."""
        rank = max(1, math.ceil(Fraction(str(p)) * self.total / 100))
        return int(np.searchsorted(np.cumsum(self.counts), rank))

    def top(self, percent: Fraction) -> TopCut:
        """The cut that keeps exactly ``ceil(percent% of the scored rows)`` rows (never below
        that share); rows tied at the cut are kept in file order, first ones first."""
        rows = math.ceil(Fraction(percent) * self.total / 100)
        if rows == 0:
            return TopCut(0, BINS, 0, 0)
        at_or_above = np.cumsum(self.counts[::-1])[::-1]  # at_or_above[b]: rows in bin b or higher
        cut = int(np.flatnonzero(at_or_above >= rows)[-1])
        above = int(at_or_above[cut + 1]) if cut + 1 < BINS else 0
        return TopCut(rows, cut, int(self.counts[cut]), rows - above)
