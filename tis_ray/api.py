"""The Python API: score a file, a Dataset, or an iterable of `Record`s.

Ray is joined on first use (`ray_session.connect`): the cluster at ``address`` or
``RAY_ADDRESS`` when given, else the local one a ``ray start`` recorded, else a local
Ray started on demand (the embedded default).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
from ray.data import Dataset

from .checkpoint import Checkpoint, result_settings
from .columns import RUNTIME, TRUNCATED, ResultColumns
from .config import DEFAULT_MODEL, Device, DType, FetchConfig, ModelConfig, PipelineConfig
from .job_input import ShardInput, TableInput, check_input, check_output_keeps
from .loading import load_preprocess_spec
from .output import OutputFile, check_output_path, write_atomically, write_stats
from .pipeline import add_scores, records_from_table, skip_rows
from .preprocess import PreprocessSpec
from .progress import ProgressLine
from .ray_session import connect, show_progress
from .records import Record, ScoreResult
from .retry import inputs_of, merge, read_previous_output, retryable_rows
from .summary import JobSummary


def score_dataset(
    ds: Dataset,
    *,
    image_column: str = "image_url",
    caption_column: str = "caption",
    model: str | ModelConfig | None = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    base_dir: str | None = None,
    prefix: str = "",
) -> Dataset:
    """Add ``similarity``, ``error`` (and ``cosine`` if asked), each after `prefix`, to a Dataset,
    lazily, row order kept. The image column may hold references or the images' bytes."""
    model = ModelConfig.of(model)
    spec = load_preprocess_spec(model.model)
    return _scored(ds, image_column, caption_column, spec, model, fetch, pipeline, base_dir,
                   results=ResultColumns(prefix)).drop_columns([TRUNCATED, RUNTIME])


def score_file(
    input_path: str,
    output_path: str,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    model: str | ModelConfig | None = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    address: str | None = None,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every_s: float = 60.0,
    progress_line: ProgressLine | None = None,
    prefix: str = "",
    keep_json_fields: tuple[str, ...] = (),
) -> JobSummary:
    """Score every row of a CSV or Parquet file, or every sample of WebDataset shards, into `output_path`;
    return the counts.

    `input_path` is a table, or ``.tar`` shards: one, a folder, a glob or brace notation
    (``shards/{00000..00099}.tar``); a shard input's output keeps each sample's
    ``__key__``, its shard (``__url__``) and the json fields in `keep_json_fields`.
    `prefix` names the result columns apart from input columns of the same name.
    Scored rows are kept in a checkpoint beside the output (see `checkpoint`) every
    ``checkpoint_every_s`` seconds; ``resume`` picks up one an interrupted run left.
    ``progress`` shows all of Ray's output (its log lines, Ray Data's progress bars); without it
    only what a user can act on (see `ray_session`).
    ``progress_line`` is told of every result batch (rows done of the total, errors by kind).
    """
    job = _FileJob.check(input_path, output_path, image_column, caption_column, model, fetch, pipeline, prefix,
                         keep_json_fields)
    summary = JobSummary(model=job.model.model, error_column=job.results.error)
    identity = job.source.identity(job.settings())
    checkpoint = Checkpoint.open(output_path, identity, resume=resume, every_s=checkpoint_every_s)
    summary.carried_over = checkpoint.rows_done
    connect(address, verbose=progress)
    show_progress(progress)
    ds = job.source.read()
    if checkpoint.rows_done:
        ds = skip_rows(ds, checkpoint.rows_done)
    rows_left = max(0, job.source.rows() - checkpoint.rows_done)
    scored = job.scored(ds, rows_left)
    watched = _watched(scored, progress_line, job.source.count_rows, job.results.error, checkpoint.rows_done)
    try:
        for batch in watched:
            summary.arrived(batch.num_rows)
            checkpoint.add(batch)
    finally:
        checkpoint.flush()  # rows scored before an interrupt are kept
    _write_output(checkpoint.tables(), job, summary)
    _write_stats(summary, input_path, output_path, "resumed" if summary.carried_over else "fresh")
    checkpoint.remove()
    return summary


def retry_errors(
    input_path: str,
    previous_output: str,
    output_path: str,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    model: str | ModelConfig | None = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    address: str | None = None,
    progress: bool = True,
    progress_line: ProgressLine | None = None,
    prefix: str = "",
    keep_json_fields: tuple[str, ...] = (),
) -> JobSummary:
    """Score again only the rows of `previous_output` that failed with a retryable kind.

    The new results replace those rows in place; every other row is copied as it was.
    ``output_path`` may be `previous_output` itself (it is read whole first). Only a
    fetch can fail in a retryable way: rows whose image the input holds (bytes, shards)
    never do, so for them the previous output is checked and copied as it is.
    """
    job = _FileJob.check(input_path, output_path, image_column, caption_column, model, fetch, pipeline, prefix,
                         keep_json_fields)
    summary = JobSummary(model=job.model.model, error_column=job.results.error)
    previous = read_previous_output(OutputFile.of(previous_output), job.source.schema, job.results)
    job = dataclasses.replace(job, pipeline=dataclasses.replace(
        job.pipeline, with_cosine=job.results.cosine in previous.column_names))
    # A shard's output keeps no image to score again; its rows never fail in a retryable way anyway.
    rows = [] if isinstance(job.source, ShardInput) else retryable_rows(previous, job.results)
    summary.carried_over = previous.num_rows - len(rows)
    rescored = job.empty_results()
    if rows:
        connect(address, verbose=progress)
        show_progress(progress)
        scored = job.scored(records_from_table(inputs_of(previous, rows, job.results)), len(rows))
        watched = _watched(scored, progress_line, lambda: len(rows), job.results.error)
        rescored = pa.concat_tables([rescored, *watched],
                                    promote_options="permissive")
    carried = previous.filter(pa.array(np.isin(np.arange(previous.num_rows), rows, invert=True)))
    summary.add(_unknown_runtime(carried))
    summary.add(rescored)
    merged = merge(previous, rows, rescored.drop_columns([TRUNCATED, RUNTIME]))
    for _ in write_atomically([merged], job.output, merged.schema):
        pass
    _write_stats(summary, input_path, output_path, "retry_errors")
    return summary


def score_pairs(
    records: Iterable[Record | tuple[str, str]],
    *,
    model: str | ModelConfig = DEFAULT_MODEL,
    device: Device | None = None,
    dtype: DType | None = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    address: str | None = None,
) -> Iterator[ScoreResult]:
    """One `ScoreResult` per `Record`, in order. Relative paths resolve against the working folder.

    `model` is a checkpoint id or folder, or a `ModelConfig`; `device` and `dtype` override it.

    The scorer stays warm for the next call with the same settings (see `session`); a call
    with other settings replaces it, and `release_scorers()` frees it.
    """
    from .session import warm_scorer

    return warm_scorer(ModelConfig.of(model, device=device, dtype=dtype), fetch, address).score_pairs(
        records, pipeline=pipeline)


def _scored(ds, image_column, caption_column, spec, model, fetch, pipeline, base_dir, rows=None,
            results=ResultColumns()) -> Dataset:
    """`add_scores` with the defaults filled in; `rows`, where known, sizes the GPU pool."""
    return add_scores(
        ds,
        image_column=image_column,
        caption_column=caption_column,
        base_dir=base_dir or os.getcwd(),
        spec=spec,
        model=model,
        fetch=fetch or FetchConfig(),
        pipeline=pipeline or PipelineConfig(),
        rows=rows,
        results=results,
    )


@dataclasses.dataclass(frozen=True)
class _FileJob:
    """A file job's checked inputs: what it reads, model, settings; everything a bad input fails on."""

    source: TableInput | ShardInput
    output: OutputFile
    spec: PreprocessSpec
    model: ModelConfig
    fetch: FetchConfig
    pipeline: PipelineConfig
    results: ResultColumns

    @classmethod
    def check(cls, input_path, output_path, image_column, caption_column, model, fetch, pipeline, prefix="",
              keep_json_fields=()) -> _FileJob:
        fetch, results = fetch or FetchConfig(), ResultColumns(prefix)
        source = check_input(input_path, image_column, caption_column, keep_json_fields, results, fetch.max_bytes)
        output = check_output_path(output_path)
        check_output_keeps(source, output)
        model = ModelConfig.of(model)
        spec = load_preprocess_spec(model.model)  # a bad model fails here, before Ray starts
        return cls(source, output, spec, model, fetch, pipeline or PipelineConfig(), results)

    def settings(self) -> dict:
        """The settings that change results: a checkpoint is resumed only with the same ones.

        The input's columns, the result prefix, and every field the configs declare with
        `config.result_setting`, under its own name."""
        return {
            **self.source.settings(), "prefix": self.results.prefix,
            **result_settings(self.model), **result_settings(self.fetch), **result_settings(self.pipeline),
        }

    def scored(self, ds: Dataset, rows: int) -> Dataset:
        scored = _scored(ds, self.source.image_column, self.source.caption_column, self.spec, self.model,
                         self.fetch, self.pipeline, self.source.base_dir, rows, self.results)
        internal = list(self.source.internal_columns)
        return scored.drop_columns(internal) if internal else scored

    def output_schema(self) -> pa.Schema:
        fields = list(self.source.schema)
        fields.append(pa.field(self.results.similarity, pa.float64()))
        if self.pipeline.with_cosine:
            fields.append(pa.field(self.results.cosine, pa.float64()))
        fields.append(pa.field(self.results.error, pa.string()))
        return pa.schema(fields)

    def empty_results(self) -> pa.Table:
        """No rows, with the columns the scoring stages produce (internal ones included)."""
        schema = self.output_schema().append(pa.field(TRUNCATED, pa.bool_())).append(pa.field(RUNTIME, pa.string()))
        return schema.empty_table()


def _write_output(tables: Iterable[pa.Table], job: _FileJob, summary: JobSummary) -> None:
    """Count the scored rows and write them, without the internal columns, to the job's output."""

    def counted() -> Iterator[pa.Table]:
        for table in tables:
            summary.add(table)
            yield table.drop_columns([TRUNCATED, RUNTIME])

    for _ in write_atomically(counted(), job.output, job.output_schema()):
        pass


def _watched(scored: Dataset, progress_line: ProgressLine | None, count_total, error_column: str,
             done: int = 0) -> Iterator[pa.Table]:
    """The result batches as they come, each shown to `progress_line` (which ends when they do)."""
    batches = scored.iter_batches(batch_format="pyarrow", batch_size=None)
    if progress_line is None:
        yield from batches
        return
    progress_line.start(count_total, error_column, done)
    try:
        for batch in batches:
            progress_line.add(batch)
            yield batch
    finally:
        progress_line.finish()


def _unknown_runtime(table: pa.Table) -> pa.Table:
    """Rows not scored by this run: their truncation and runtime are not known."""
    return table.append_column(TRUNCATED, pa.nulls(table.num_rows, pa.bool_())).append_column(
        RUNTIME, pa.nulls(table.num_rows, pa.string()))


def _write_stats(summary: JobSummary, input_path: str, output_path: str, mode: str) -> None:
    summary.stats_file = write_stats(output_path, summary.stats(input_path=input_path, output_path=output_path,
                                                                mode=mode))
