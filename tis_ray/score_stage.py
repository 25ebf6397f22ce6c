"""The score stage: a thin adapter from Arrow batches to one scorer (`scorer.make_scorer`).

It scores the rows the fetch stage prepared, passes on the fetch stage's row errors,
and replaces the pixel columns with the results; other columns pass through untouched.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .columns import FETCH_ERROR, PIXELS, RUNTIME, TRUNCATED, ResultColumns
from .config import ModelConfig
from .records import check_caption
from .scorer import make_scorer, similarity_from_cosine


class ScoreStage:
    def __init__(self, caption_column: str, model: ModelConfig, with_cosine: bool,
                 results: ResultColumns = ResultColumns()):
        self.caption_column = caption_column
        self.with_cosine = with_cosine
        self.results = results
        self.scorer = make_scorer(model)
        self.runtime = f"{self.scorer.device}/{self.scorer.dtype_name}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.num_rows
        errors = batch.column(FETCH_ERROR).to_pylist()  # caption errors included: FetchStage checked them
        ok = np.array([error is None for error in errors], dtype=bool)
        cosine = np.zeros(rows, dtype=np.float32)
        truncated = np.zeros(rows, dtype=bool)
        if ok.any():
            pixels = _tensor_column(batch, PIXELS)
            captions = [check_caption(c) for c, good in zip(batch.column(self.caption_column).to_pylist(), ok) if good]
            scored = self.scorer.score(pixels[ok], captions)
            cosine[ok], truncated[ok] = scored.cosine, scored.truncated
        missing = ~ok
        out = batch.drop_columns([PIXELS, FETCH_ERROR])
        out = out.append_column(self.results.similarity, pa.array(similarity_from_cosine(cosine), mask=missing))
        if self.with_cosine:
            out = out.append_column(self.results.cosine, pa.array(cosine.astype(np.float64), mask=missing))
        out = out.append_column(self.results.error, pa.array(errors, type=pa.string()))
        out = out.append_column(TRUNCATED, pa.array(truncated))
        return out.append_column(RUNTIME, pa.array([self.runtime] * rows, type=pa.string()))


def _tensor_column(table: pa.Table, name: str) -> np.ndarray:
    return np.concatenate([chunk.to_numpy() for chunk in table.column(name).chunks])
