"""The Python API: score a file, a Dataset, or an iterable of `Record`s.

Ray is joined on first use: the cluster at ``address`` or ``RAY_ADDRESS`` when
given, else a local Ray started on demand (the embedded default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator

import pyarrow as pa
import ray
from ray.data import DataContext, Dataset

from .config import DEFAULT_MODEL, FetchConfig, ModelConfig, PipelineConfig
from .loading import load_preprocess_spec
from .output import check_output_path, write_atomically
from .pipeline import add_scores, read_records
from .records import Record, ScoreResult, input_schema, pick_columns, read_columns
from .sources import base_dir_of
from .stages import RUNTIME, TRUNCATED
from .summary import JobSummary


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or ``RAY_ADDRESS``); else start a local one."""
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)


def show_progress(enabled: bool) -> None:
    """Ray Data's progress bars on, or off with its per-operator log lines quietened."""
    DataContext.get_current().enable_progress_bars = enabled
    logging.getLogger("ray.data").setLevel(logging.INFO if enabled else logging.WARNING)


def score_dataset(
    ds: Dataset,
    *,
    image_column: str = "image_url",
    caption_column: str = "caption",
    model: ModelConfig | None = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    base_dir: str | None = None,
) -> Dataset:
    """Add ``similarity``, ``error`` (and ``cosine`` if asked) to a Dataset, lazily, row order kept."""
    model = model or ModelConfig()
    spec = load_preprocess_spec(model.model)
    return _scored(ds, image_column, caption_column, spec, model, fetch, pipeline, base_dir).drop_columns(
        [TRUNCATED, RUNTIME]
    )


def score_file(
    input_path: str,
    output_path: str,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    model: ModelConfig | None = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    address: str | None = None,
    progress: bool = True,
) -> JobSummary:
    """Score every row of a CSV or Parquet file into `output_path`; return the counts.

    ``progress`` shows Ray Data's progress bars; without it only warnings are logged.
    """
    columns = read_columns(input_path)
    image_column, caption_column = pick_columns(columns, image_column, caption_column)
    check_output_path(output_path)
    model = model or ModelConfig()
    spec = load_preprocess_spec(model.model)  # a bad model fails here, before Ray starts
    connect(address)
    show_progress(progress)
    schema = input_schema(input_path, columns)
    ds = read_records(input_path, schema)
    scored = _scored(ds, image_column, caption_column, spec, model, fetch, pipeline, base_dir_of(input_path))
    summary = JobSummary(model=model.model)
    empty = _output_schema(schema, pipeline or PipelineConfig())

    def counted() -> Iterator[pa.Table]:
        for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            summary.add(batch, batch.column("error"), batch.column(TRUNCATED), batch.column(RUNTIME))
            yield batch.drop_columns([TRUNCATED, RUNTIME])

    for _ in write_atomically(counted(), output_path, empty):
        pass
    return summary


def score_pairs(
    records: Iterable[Record | tuple[str, str]],
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    address: str | None = None,
) -> Iterator[ScoreResult]:
    """One `ScoreResult` per `Record`, in order. Relative paths resolve against the working folder."""
    pairs = [r if isinstance(r, Record) else Record(*r) for r in records]
    table = pa.table(
        {"image": pa.array([p.image for p in pairs], pa.string()),
         "caption": pa.array([p.caption for p in pairs], pa.string())}
    )
    model_cfg = ModelConfig(model=model, device=device, dtype=dtype)
    pipeline = dataclasses.replace(pipeline or PipelineConfig(), with_cosine=True)
    spec = load_preprocess_spec(model)  # a bad model fails here, before Ray starts
    connect(address)
    scored = _scored(ray.data.from_arrow(table), "image", "caption", spec, model_cfg, fetch, pipeline, os.getcwd())
    return _results(scored, pairs)


def _results(scored: Dataset, pairs: list[Record]) -> Iterator[ScoreResult]:
    rows = scored.iter_rows()
    for pair, row in zip(pairs, rows, strict=True):
        yield ScoreResult(pair.image, pair.caption, row["similarity"], row["cosine"], row["error"])


def _scored(ds, image_column, caption_column, spec, model, fetch, pipeline, base_dir) -> Dataset:
    return add_scores(
        ds,
        image_column=image_column,
        caption_column=caption_column,
        base_dir=base_dir or os.getcwd(),
        spec=spec,
        model=model,
        fetch=fetch or FetchConfig(),
        pipeline=pipeline or PipelineConfig(),
    )


def _output_schema(schema: pa.Schema, pipeline: PipelineConfig) -> pa.Schema:
    fields = list(schema)
    fields.append(pa.field("similarity", pa.float64()))
    if pipeline.with_cosine:
        fields.append(pa.field("cosine", pa.float64()))
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)
