"""The Python API: score a file, a Dataset, or an iterable of `Record`s.

Ray is joined on first use (`ray_session.connect`): the cluster at ``address`` or
``RAY_ADDRESS`` when given, else the local one a ``ray start`` recorded, else a local
Ray started on demand (the embedded default).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from typing import TypedDict, Unpack

import numpy as np
import pyarrow as pa
from ray.data import Dataset

from .checkpoint import Checkpoint, result_settings
from .columns import (
    CAPTION_TRUNCATED,
    COSINE,
    IMAGE_EMBEDDING,
    PROBABILITY,
    RESULT_KINDS,
    RUNTIME,
    SIMILARITY,
    TEXT_EMBEDDING,
    TRUNCATED,
    ResultColumns,
    embedding_type,
)
from .config import (
    DEFAULT_MODEL,
    Device,
    DType,
    FetchConfig,
    ModelConfig,
    Models,
    NamedModel,
    PipelineConfig,
    named_models,
)
from .errors import InputError, user_error_in
from .job_input import ShardInput, TableInput, check_input, check_output_keeps
from .loading import embedding_size, load_preprocess_spec, model_family
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
    model: Models = None,
    fetch: FetchConfig | None = None,
    pipeline: PipelineConfig | None = None,
    base_dir: str | None = None,
    prefix: str = "",
) -> Dataset:
    """Add ``similarity``, ``error`` (and ``cosine``, ``probability``, ``caption_truncated``, the
    embeddings, as `pipeline` asks), each after `prefix`, to a Dataset, lazily, row order kept.
    The image column may hold references or the images' bytes.

    `model` is one model, or several (a list, or a name -> model map): each model's columns
    then end in ``_<name>`` (see `config.named_models`)."""
    scoring = _Scoring.check(model, pipeline, prefix)
    return _scored(ds, image_column, caption_column, scoring, fetch, base_dir).drop_columns([TRUNCATED, RUNTIME])


class FileJobOptions(TypedDict, total=False):
    """The keyword arguments `score_file` and `retry_errors` share; `score_file` says what each does."""

    image_column: str | None
    caption_column: str | None
    model: Models
    fetch: FetchConfig | None
    pipeline: PipelineConfig | None
    address: str | None
    progress: bool
    progress_line: ProgressLine | None
    prefix: str
    keep_json_fields: tuple[str, ...]


def score_file(
    input_path: str,
    output_path: str,
    *,
    resume: bool = False,
    checkpoint_every_s: float = 60.0,
    **options: Unpack[FileJobOptions],
) -> JobSummary:
    """Score every row of a CSV or Parquet file, or every sample of WebDataset shards, into `output_path`;
    return the counts.

    Options (`FileJobOptions`): `image_column` and `caption_column` name the input's columns
    (found by name when not given); `model`, `fetch` and `pipeline` set what scores, how images
    are fetched and how the job is shaped; `address` is the Ray cluster to join.
    `input_path` is a table, or ``.tar`` shards: one, a folder, a glob or brace notation
    (``shards/{00000..00099}.tar``); a shard input's output keeps each sample's
    ``__key__``, its shard (``__url__``) and the json fields in `keep_json_fields`.
    `prefix` names the result columns apart from input columns of the same name.
    `model` is one model or several (see `score_dataset`); `pipeline` says which columns
    besides ``similarity`` and ``error`` to write (embeddings need a Parquet output).
    Scored rows are kept in a checkpoint beside the output (see `checkpoint`) every
    ``checkpoint_every_s`` seconds; ``resume`` picks up one an interrupted run left.
    ``progress`` shows all of Ray's output (its log lines, Ray Data's progress bars); without it
    only what a user can act on (see `ray_session`).
    ``progress_line`` is told of every result batch (rows done of the total, errors by kind).
    """
    job = _FileJob.check(input_path, output_path, options)
    summary = JobSummary(model=job.model_description(), error_column=job.results.error)
    identity = job.source.identity(job.settings())
    checkpoint = Checkpoint.open(output_path, identity, resume=resume, every_s=checkpoint_every_s)
    summary.carried_over = checkpoint.rows_done
    progress, progress_line = options.get("progress", True), options.get("progress_line")
    connect(options.get("address"), verbose=progress)
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
    **options: Unpack[FileJobOptions],
) -> JobSummary:
    """Score again only the rows of `previous_output` that failed with a retryable kind.

    The new results replace those rows in place; every other row is copied as it was.
    ``output_path`` may be `previous_output` itself (it is read whole first). Only a
    fetch can fail in a retryable way: rows whose image the input holds (bytes, shards)
    never do, so for them the previous output is checked and copied as it is. The options are
    `score_file`'s.
    """
    job = _FileJob.check(input_path, output_path, options)
    summary = JobSummary(model=job.model_description(), error_column=job.results.error)
    previous = read_previous_output(OutputFile.of(previous_output), job.source.schema, job.results)
    # The previous output says whether cosines were written; the new rows match it.
    with_cosine = job.results.of(COSINE, job.models[0].name) in previous.column_names
    job = job.with_pipeline(dataclasses.replace(job.pipeline, with_cosine=with_cosine))
    # A shard's output keeps no image to score again; its rows never fail in a retryable way anyway.
    rows = [] if isinstance(job.source, ShardInput) else retryable_rows(previous, job.results)
    summary.carried_over = previous.num_rows - len(rows)
    rescored = job.empty_results()
    if rows:
        progress = options.get("progress", True)
        connect(options.get("address"), verbose=progress)
        show_progress(progress)
        scored = job.scored(records_from_table(inputs_of(previous, rows, job.results)), len(rows))
        watched = _watched(scored, options.get("progress_line"), lambda: len(rows), job.results.error)
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


def _scored(ds, image_column, caption_column, scoring: _Scoring, fetch, base_dir, rows=None) -> Dataset:
    """`add_scores` with the defaults filled in; `rows`, where known, sizes the GPU pool."""
    return add_scores(
        ds,
        image_column=image_column,
        caption_column=caption_column,
        base_dir=base_dir or os.getcwd(),
        specs=scoring.specs,
        models=scoring.models,
        fetch=fetch or FetchConfig(),
        pipeline=scoring.pipeline,
        results=scoring.results,
        rows=rows,
    )


@dataclasses.dataclass(frozen=True)
class _Scoring:
    """A job's models, each named with its preprocessing, and the columns it writes: checked before Ray starts."""

    models: tuple[NamedModel, ...]
    specs: tuple[PreprocessSpec, ...]  # specs[i]: models[i]'s image preprocessing
    pipeline: PipelineConfig
    results: ResultColumns

    @classmethod
    def named(cls, model: Models, pipeline: PipelineConfig | None, prefix: str) -> _Scoring:
        """The models named and the columns chosen, no model read yet (see `check`)."""
        models, pipeline = named_models(model), pipeline or PipelineConfig()
        return cls(models, (), pipeline, _result_columns(prefix, models, pipeline))

    @classmethod
    def check(cls, model: Models, pipeline: PipelineConfig | None, prefix: str) -> _Scoring:
        return cls.named(model, pipeline, prefix).loaded()

    def loaded(self) -> _Scoring:
        """With each model's preprocessing read from its checkpoint: a bad model, or a CLIP
        model asked for a probability, fails here, before Ray starts."""
        specs = tuple(load_preprocess_spec(m.config.model) for m in self.models)
        if self.pipeline.with_probability:
            for m in self.models:
                if model_family(m.config.model) == "clip":
                    raise InputError(
                        f"--with-probability: {m.config.model!r} is a CLIP model, which has no trained pair head "
                        "(its logits mean something only against other candidates); use it without the flag, "
                        "or a SigLIP model")
        return dataclasses.replace(self, specs=specs)

    def with_pipeline(self, pipeline: PipelineConfig) -> _Scoring:
        return dataclasses.replace(self, pipeline=pipeline,
                                   results=_result_columns(self.results.prefix, self.models, pipeline))

    def result_fields(self) -> list[pa.Field]:
        """The result columns with their types, in the order they are written."""
        dtype = self.pipeline.embedding_dtype
        fields = []
        for model in self.models:
            size = embedding_size(model.config.model) if self.pipeline.with_embeddings else 0
            types = {SIMILARITY: pa.float64(), COSINE: pa.float64(), PROBABILITY: pa.float64(),
                     CAPTION_TRUNCATED: pa.bool_(), IMAGE_EMBEDDING: embedding_type(dtype, size),
                     TEXT_EMBEDDING: embedding_type(dtype, size)}
            fields += [pa.field(self.results.of(kind, model.name), types[kind]) for kind in self.results.kinds]
        return [*fields, pa.field(self.results.error, pa.string())]


def _result_columns(prefix: str, models: tuple[NamedModel, ...], pipeline: PipelineConfig) -> ResultColumns:
    asked = {SIMILARITY: True, COSINE: pipeline.with_cosine, PROBABILITY: pipeline.with_probability,
             CAPTION_TRUNCATED: pipeline.with_truncation, IMAGE_EMBEDDING: pipeline.with_embeddings,
             TEXT_EMBEDDING: pipeline.with_embeddings}
    return ResultColumns(prefix, tuple(m.name for m in models), tuple(k for k in RESULT_KINDS if asked[k]))


@dataclasses.dataclass(frozen=True)
class _FileJob:
    """A file job's checked inputs: what it reads, model, settings; everything a bad input fails on."""

    source: TableInput | ShardInput
    output: OutputFile
    scoring: _Scoring
    fetch: FetchConfig

    @classmethod
    def check(cls, input_path: str, output_path: str, options: FileJobOptions) -> _FileJob:
        # **options takes any name at run time; a misspelt one must not be dropped silently.
        if unknown := sorted(set(options) - set(FileJobOptions.__annotations__)):
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        fetch = options.get("fetch") or FetchConfig()
        scoring = _Scoring.named(options.get("model"), options.get("pipeline"), options.get("prefix", ""))
        source = check_input(input_path, options.get("image_column"), options.get("caption_column"),
                             options.get("keep_json_fields", ()), scoring.results, fetch.max_bytes)
        output = check_output_path(output_path)
        check_output_keeps(source, output)
        if scoring.pipeline.with_embeddings and output.format != "parquet":
            raise InputError("--with-embeddings writes list columns, which a CSV output cannot hold; "
                             "name the output .parquet")
        return cls(source, output, scoring.loaded(), fetch)

    @property
    def models(self) -> tuple[NamedModel, ...]:
        return self.scoring.models

    @property
    def pipeline(self) -> PipelineConfig:
        return self.scoring.pipeline

    @property
    def results(self) -> ResultColumns:
        return self.scoring.results

    def with_pipeline(self, pipeline: PipelineConfig) -> _FileJob:
        return dataclasses.replace(self, scoring=self.scoring.with_pipeline(pipeline))

    def model_description(self) -> str | list[dict]:
        """The stats file's ``model``: one model's id, as ever, or every model's name and id."""
        if len(self.models) == 1:
            return self.models[0].config.model
        return [{"name": m.name, "model": m.config.model} for m in self.models]

    def settings(self) -> dict:
        """The settings that change results: a checkpoint is resumed only with the same ones.

        The input's columns, the result prefix, and every field the configs declare with
        `config.result_setting`, under its own name; several models are one ``models`` list
        (names, order and each one's settings), so a resume with another list is refused."""
        if len(self.models) == 1:
            models = result_settings(self.models[0].config)
        else:
            models = {"models": [{"name": m.name, **result_settings(m.config)} for m in self.models]}
        return {
            **self.source.settings(), "prefix": self.results.prefix,
            **models, **result_settings(self.fetch), **result_settings(self.pipeline),
        }

    def scored(self, ds: Dataset, rows: int) -> Dataset:
        scored = _scored(ds, self.source.image_column, self.source.caption_column, self.scoring, self.fetch,
                         self.source.base_dir, rows)
        internal = list(self.source.internal_columns)
        return scored.drop_columns(internal) if internal else scored

    def output_schema(self) -> pa.Schema:
        return pa.schema([*self.source.schema, *self.scoring.result_fields()])

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
    """The result batches as they come, each shown to `progress_line` (which ends when they do).

    Without prefetching: Ray Data 2.60's prefetching iterator waits for the next block before
    it hands over the one it has, so every block, the first included, arrived one scorer call
    late (a 2,000-pair job's first rows 15.7 -> 12.3 s without it, ViT-B/32 on 2 vCPUs). The
    blocks are in the object store already; the driver only writes them.
    """
    batches = _user_errors_unwrapped(scored.iter_batches(batch_format="pyarrow", batch_size=None,
                                                         prefetch_batches=0))
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


def _user_errors_unwrapped(batches: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """`batches`, with a user error that a stage's actor died of raised as itself (see `errors.user_error_in`)."""
    from ray.exceptions import RayActorError

    try:
        yield from batches
    except RayActorError as exc:
        if (error := user_error_in(str(exc))) is not None:
            raise error from None
        raise


def _unknown_runtime(table: pa.Table) -> pa.Table:
    """Rows not scored by this run: their truncation and runtime are not known."""
    return table.append_column(TRUNCATED, pa.nulls(table.num_rows, pa.bool_())).append_column(
        RUNTIME, pa.nulls(table.num_rows, pa.string()))


def _write_stats(summary: JobSummary, input_path: str, output_path: str, mode: str) -> None:
    summary.stats_file = write_stats(output_path, summary.stats(input_path=input_path, output_path=output_path,
                                                                mode=mode))
