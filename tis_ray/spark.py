"""Scores for a DataFrame that lives in Spark: `with_scores(df)` adds ``similarity``,
``error`` (and ``cosine``) to every row, every other column kept as it was.

Underneath is one ``mapInArrow`` over the DataFrame: Spark hands each Python worker an
iterator of Arrow batches, and the worker runs the batch pipeline's own two stages on
them in turn (`FetchStage`: the same fetcher, limits, retries, per-host politeness and
error kinds; `ScoreStage`: the same scorer), so a row scores as it does in
`tis-ray score`. The scorer and the fetcher's session are built once per Python worker
(Spark reuses its Python workers between tasks) and kept for the worker's life. A row
that cannot be scored gets its error; it never fails the task.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import os
from collections.abc import Iterator

import pyarrow as pa

from .extras import require

require("pyspark", "spark", "tis_ray.spark")

from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql.types import DoubleType, StringType, StructField, StructType  # noqa: E402

from .columns import RUNTIME, TRUNCATED, ResultColumns  # noqa: E402
from .config import (  # noqa: E402
    DEFAULT_MODEL,
    Device,
    DType,
    FetchConfig,
    ModelConfig,
    PipelineConfig,
    scorer_batch_size,
)
from .loading import load_preprocess_spec  # noqa: E402
from .preprocess import PreprocessSpec  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every Python worker needs to score its batches; pickled once with the UDF."""

    image_column: str
    caption_column: str
    base_dir: str
    spec: PreprocessSpec
    model: ModelConfig
    fetch: FetchConfig
    with_cosine: bool
    rows_per_call: int | None  # rows fetched together, then scored in one model call; None: the device's default


def with_scores(
    df: DataFrame,
    *,
    image_column: str = "image_url",
    caption_column: str = "caption",
    model: str | ModelConfig = DEFAULT_MODEL,
    device: Device | None = None,
    dtype: DType | None = None,
    with_cosine: bool = False,
    fetch: FetchConfig | None = None,
    batch_size: int | None = PipelineConfig.batch_size,
) -> DataFrame:
    """`df` with ``similarity`` (and ``cosine`` if asked) and ``error`` appended, lazily.

    The model is checked here, on the driver, so a wrong one fails before any task runs.
    Relative image paths resolve against the driver's working folder; on a cluster, use
    URLs. Each Python worker holds one model: size ``spark.executor.cores`` (or the
    number of GPUs per executor) with that in mind.
    """
    missing = [c for c in (image_column, caption_column) if c not in df.columns]
    if missing:
        raise ValueError(f"no column {missing[0]!r} in the DataFrame (columns: {', '.join(df.columns)})")
    clashing = [c for c in ResultColumns().names if c in df.columns]
    if clashing:
        raise ValueError(f"the DataFrame already has a {clashing[0]!r} column; rename or drop it first")
    model_config = ModelConfig.of(model, device=device, dtype=dtype)
    job = _Job(image_column, caption_column, os.getcwd(), load_preprocess_spec(model_config.model), model_config,
               fetch or FetchConfig(), with_cosine, batch_size)
    results = [StructField("similarity", DoubleType())]
    if with_cosine:
        results.append(StructField("cosine", DoubleType()))
    results.append(StructField("error", StringType()))
    return df.mapInArrow(functools.partial(_score_batches, job), StructType(df.schema.fields + results))


def _score_batches(job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The UDF: each Arrow batch Spark hands over, scored in pieces of ``job.rows_per_call`` rows."""
    worker = _worker(job)
    rows_per_call = scorer_batch_size(job.rows_per_call, worker.scorer.scorers[0].device)
    for batch in batches:
        for start in range(0, batch.num_rows, rows_per_call):
            piece = pa.Table.from_batches([batch.slice(start, rows_per_call)])
            yield from worker.score(piece).to_batches()


class _Worker:
    """One Python worker's stages, and the event loop the fetch stage's session belongs to."""

    def __init__(self, job: _Job):
        # Imported here, on the worker: the driver never loads torch or the model.
        from .fetch_stage import FetchStage
        from .score_stage import ScoreStage

        self.loop = asyncio.new_event_loop()
        self.fetch = FetchStage(job.image_column, job.caption_column, job.base_dir, job.fetch, (job.spec,))
        self.scorer = ScoreStage.one_model(job.caption_column, job.model, job.with_cosine)
        atexit.register(self.close)  # the worker ends with the Spark application: close its connections

    def close(self) -> None:
        self.loop.run_until_complete(self.fetch.preparer.close())
        self.loop.close()

    def score(self, table: pa.Table) -> pa.Table:
        fetched = self.loop.run_until_complete(self.fetch(table))
        return self.scorer(fetched).drop_columns([TRUNCATED, RUNTIME])


@functools.lru_cache(maxsize=2)
def _worker(job: _Job) -> _Worker:
    """The worker's stages for `job`, built on its first batch and kept for the next tasks."""
    return _Worker(job)
