"""The score stage: a thin adapter from Arrow batches to the job's scorers (`scorer.make_scorer`).

One stage holds every model of the job (one GPU holds them all where they fit), so an
image's pixels cross the object store once per distinct preprocessing, never once per
actor pool. It scores the rows the fetch stage prepared with each model, passes on the
fetch stage's row errors, and replaces the pixel columns with the results; other columns
pass through untouched.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .columns import (
    CAPTION_TRUNCATED,
    COSINE,
    FETCH_ERROR,
    IMAGE_EMBEDDING,
    IMAGE_KEY,
    PROBABILITY,
    RUNTIME,
    SIMILARITY,
    TEXT_EMBEDDING,
    TRUNCATED,
    ResultColumns,
    embedding_type,
    pixels_column,
)
from .config import ModelConfig, NamedModel, PipelineConfig, named_models
from .loading import embedding_size_of
from .records import check_caption
from .scorer import DualEncoderScorer, ScoreBatch, make_scorer, similarity_from_cosine


class ScoreStage:
    def __init__(self, caption_column: str, models: tuple[NamedModel, ...], pixel_columns: tuple[str, ...],
                 pipeline: PipelineConfig, results: ResultColumns):
        """`pixel_columns[i]` holds the pixels prepared for `models[i]` (see `columns.pixel_columns`);
        `results` names the columns and says which kinds to write."""
        self.caption_column = caption_column
        self.models = models
        self.pixel_columns = pixel_columns
        self.embedding_dtype = np.dtype(pipeline.embedding_dtype)
        self.results = results
        self.scorers: list[DualEncoderScorer] = [make_scorer(model.config) for model in models]
        # From the models just loaded: reading each checkpoint's config again would cost every actor start.
        self.embedding_sizes = [embedding_size_of(scorer.model.config) for scorer in self.scorers]
        self.runtime = "; ".join(dict.fromkeys(f"{s.device}/{s.dtype_name}" for s in self.scorers))

    @classmethod
    def one_model(cls, caption_column: str, model: ModelConfig, with_cosine: bool) -> ScoreStage:
        """One model's stage writing ``similarity``, ``cosine`` if asked, and ``error``, from the
        fetch stage's only pixel column: what the warm scorer and Spark run."""
        kinds = (SIMILARITY, COSINE) if with_cosine else (SIMILARITY,)
        return cls(caption_column, named_models(model), (pixels_column(0),), PipelineConfig(),
                   ResultColumns(kinds=kinds))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.num_rows
        errors = batch.column(FETCH_ERROR).to_pylist()  # caption errors included: FetchStage checked them
        ok = np.array([error is None for error in errors], dtype=bool)
        cells = batch.column(self.caption_column).to_pylist()
        captions = [check_caption(c) for c, good in zip(cells, ok, strict=True) if good]
        keys = batch.column(IMAGE_KEY).to_numpy()[ok]
        out = batch.drop_columns([*dict.fromkeys(self.pixel_columns), IMAGE_KEY, FETCH_ERROR])
        truncated_any = np.zeros(rows, dtype=bool)
        for model, scorer, column, size in zip(self.models, self.scorers, self.pixel_columns, self.embedding_sizes,
                                               strict=True):
            scored = scorer.score(_good_rows(batch.column(column), ok, scorer), captions, keys) if ok.any() else None
            for kind, values in self._columns(scored, ok, size).items():
                out = out.append_column(self.results.of(kind, model.name), values)
            if scored is not None:
                truncated_any[ok] |= scored.truncated
        out = out.append_column(self.results.error, pa.array(errors, type=pa.string()))
        out = out.append_column(TRUNCATED, pa.array(truncated_any))
        return out.append_column(RUNTIME, pa.array([self.runtime] * rows, type=pa.string()))

    def _columns(self, scored: ScoreBatch | None, ok: np.ndarray, embedding_size: int) -> dict[str, pa.Array]:
        """One model's result columns, by kind, in `results.kinds` order; null where a row failed
        (`scored` is None where every row did)."""
        missing = ~ok

        def spread(name: str, dtype) -> np.ndarray:
            full = np.zeros(len(ok), dtype=dtype)
            if scored is not None:
                full[ok] = getattr(scored, name)
            return full

        cosine = spread("cosine", np.float32)
        made = {
            SIMILARITY: lambda: pa.array(similarity_from_cosine(cosine), mask=missing),
            COSINE: lambda: pa.array(cosine.astype(np.float64), mask=missing),
            # The float64 the pair head gives for the float32 cosine, unrounded: near 0 or 1 the digits matter.
            PROBABILITY: lambda: pa.array(spread("probability", np.float64), mask=missing),
            CAPTION_TRUNCATED: lambda: pa.array(spread("truncated", bool), mask=missing),
            IMAGE_EMBEDDING: lambda: self._embeddings(scored.image_embeddings if scored else None, ok, embedding_size),
            TEXT_EMBEDDING: lambda: self._embeddings(scored.text_embeddings if scored else None, ok, embedding_size),
        }
        return {kind: made[kind]() for kind in self.results.kinds}

    def _embeddings(self, embeddings: np.ndarray | None, ok: np.ndarray, size: int) -> pa.Array:
        full = np.zeros((len(ok), size), dtype=self.embedding_dtype)
        if embeddings is not None:
            full[ok] = embeddings
        return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), type=embedding_type(
            self.embedding_dtype.name, size), mask=pa.array(~ok))


def _good_rows(column: pa.ChunkedArray, ok: np.ndarray, scorer: DualEncoderScorer) -> np.ndarray:
    """The `ok` rows of a pixel column as one contiguous array in the scorer's `pixel_buffer`
    (page-locked on CUDA): each pixel copied once, straight from Arrow's buffers, however many
    fetch blocks the batch joins. (Joining the chunks, then masking, then making the result
    contiguous were three full copies of the batch's pixels.)"""
    chunks = [chunk.to_numpy() for chunk in column.chunks]  # views of Arrow's buffers, no copy
    rows = scorer.pixel_buffer((int(ok.sum()), *chunks[0].shape[1:]))
    start = filled = 0
    for chunk in chunks:
        keep = ok[start:start + len(chunk)]
        count = int(keep.sum())
        if count == len(chunk):
            rows[filled:filled + count] = chunk
        else:
            np.compress(keep, chunk, axis=0, out=rows[filled:filled + count])
        start, filled = start + len(chunk), filled + count
    return rows
