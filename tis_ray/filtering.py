"""`tis-ray filter`: keep the rows of a scored output at or above a threshold, or the top P%.

Kept rows are written with all their columns, in file order, atomically like `score`
(`output.write_atomically`). Thresholds compare scores at their 4 decimals, through
the same exact bins the report's slider uses (`histogram`), so a threshold read off
the report keeps exactly the rows the report said it would.

``--keep-top P%`` keeps exactly ``ceil(P% of the scored rows)`` rows: it takes one
pass to count the scores, then every row above the cut and, of the rows tied at the
cut, the first ones in file order until the count is reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa

from .errors import InputError
from .histogram import Histogram, TopCut, bin_at_least, score_text
from .output import check_output_path, write_atomically
from .scored_output import ScoredOutput


@dataclass(frozen=True)
class FilterResult:
    rows: int  # rows in the scored file
    scored: int  # of them, rows with a score for the model
    kept: int  # rows written (errors included with keep_errors)
    kept_scored: int
    column: str
    threshold: str  # "similarity >= threshold", 4 decimals
    cut: TopCut | None  # with keep_top: how ties at the threshold were broken

    def format(self) -> str:
        share = f"{100 * self.kept_scored / self.scored:.2f}%" if self.scored else "-"
        lines = [f"kept {self.kept} of {self.rows} rows ({self.kept_scored} of {self.scored} scored rows, {share}"
                 f"{'; rows with errors kept' if self.kept != self.kept_scored else ''})",
                 f"threshold: {self.column} >= {self.threshold}" if self.scored else "threshold: none (no scored rows)"]
        if self.cut and self.cut.ties_kept < self.cut.ties:
            lines.append(f"ties at {self.threshold}: kept the first {self.cut.ties_kept} of {self.cut.ties} "
                         "in file order")
        return "\n".join(lines)


def filter_file(scored_path: str, output_path: str, *, min_similarity: Fraction | None = None,
                keep_top: Fraction | None = None, model: str | None = None,
                keep_errors: bool = False) -> FilterResult:
    """Write the rows of `scored_path` that pass to `output_path`; exactly one of the two criteria."""
    if (min_similarity is None) == (keep_top is None):
        raise InputError("give exactly one of --min-similarity and --keep-top")
    if keep_top is not None and keep_top <= 0:
        raise InputError("--keep-top: the share must be above 0%")
    scored = ScoredOutput.open(scored_path)
    column = scored.score_column(model)
    output = check_output_path(output_path)
    if scored.format != output.format:
        raise InputError(f"{output_path}: write a {scored.format} file like the input (its columns stay as they are)")
    cut = None
    if keep_top is not None:
        histogram = Histogram()
        for batch in scored.batches([column]):
            bins = scored.bins(batch, column)
            histogram.add(bins[bins >= 0])
        cut = histogram.top(keep_top)
        first_bin = cut.bin
    else:
        assert min_similarity is not None  # exactly one of the two was given (checked above)
        first_bin = bin_at_least(min_similarity)
    counts = _Counts()

    def kept() -> Iterator[pa.Table]:
        ties_left = cut.ties_kept if cut else 0
        for batch in scored.batches():
            bins = scored.bins(batch, column)
            keep = bins > first_bin if cut else bins >= first_bin
            if cut:  # the first ties in file order, until the cut's count is reached
                ties = np.flatnonzero(bins == first_bin)[:ties_left]
                keep[ties] = True
                ties_left -= len(ties)
            counts.add(batch.num_rows, int((bins >= 0).sum()), int(keep.sum()))
            if keep_errors:
                keep |= bins < 0
            counts.kept += int(keep.sum())
            yield pa.Table.from_batches([batch.filter(pa.array(keep))])

    for _ in write_atomically(kept(), output, scored.schema()):
        pass
    return FilterResult(counts.rows, counts.scored, counts.kept, counts.kept_scored, column,
                        score_text(first_bin), cut)


@dataclass
class _Counts:
    rows: int = 0
    scored: int = 0
    kept_scored: int = 0
    kept: int = 0

    def add(self, rows: int, scored: int, kept_scored: int) -> None:
        self.rows += rows
        self.scored += scored
        self.kept_scored += kept_scored
