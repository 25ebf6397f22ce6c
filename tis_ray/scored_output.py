"""Reading a scored output back (`score`'s CSV or Parquet), in batches, for `filter` and `report`.

Outputs can hold more rows than memory: both formats are read as a stream of record
batches (Parquet by row group, CSV by block), so a reader holds one batch at a time.
CSV cells are read with the types `score` wrote them with: the score and cosine
columns as numbers, every other cell as the text written, so that `filter` writes the
kept rows back as they were.

Score columns: ``similarity`` (one model), or ``similarity_<name>`` per model when a
file holds several; a model is named by `<name>` (or by the column's own name).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import storage
from .columns import CAPTION_COLUMN_CANDIDATES, IMAGE_COLUMN_CANDIDATES
from .errors import InputError
from .histogram import to_bins
from .output import stats_path
from .tables import TableFile, input_format

SCORE_COLUMN = "similarity"
ERROR_COLUMN = "error"
PARQUET_BATCH_ROWS = 65_536
CSV_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class ScoredOutput:
    """A scored file: where it is, its columns, and which of them hold scores (model -> column)."""

    path: str
    columns: tuple[str, ...]
    models: dict[str, str]

    @classmethod
    def open(cls, path: str) -> ScoredOutput:
        columns = tuple(TableFile.open(path).columns)
        models = {_model_name(c): c for c in columns if c == SCORE_COLUMN or c.startswith(f"{SCORE_COLUMN}_")}
        if not models:
            raise InputError(f"{path}: no {SCORE_COLUMN} column; is this a file `tis-ray score` wrote?")
        if ERROR_COLUMN not in columns:
            raise InputError(f"{path}: no {ERROR_COLUMN} column; is this a file `tis-ray score` wrote?")
        return cls(path, columns, models)

    @property
    def format(self) -> str:
        return input_format(self.path)

    def score_column(self, model: str | None) -> str:
        """The column of `model` (a name or a column); without one, the file's only score column."""
        if model is None:
            if len(self.models) > 1:
                raise InputError(f"{self.path} holds scores of several models ({', '.join(self.models)}); "
                                 "choose one with --model")
            return next(iter(self.models.values()))
        if model in self.models:
            return self.models[model]
        if model in self.models.values():
            return model
        raise InputError(f"{self.path}: no scores for model {model!r} (models: {', '.join(self.models)})")

    def column_like(self, asked: str | None, candidates: tuple[str, ...]) -> str | None:
        """The column asked for, or the first of `candidates` present (None if none is)."""
        if asked is not None:
            if asked not in self.columns:
                raise InputError(f"{self.path}: no column {asked!r} (columns: {', '.join(self.columns)})")
            return asked
        return next((c for c in candidates if c in self.columns), None)

    def image_column(self, asked: str | None = None) -> str | None:
        return self.column_like(asked, IMAGE_COLUMN_CANDIDATES)

    def caption_column(self, asked: str | None = None) -> str | None:
        return self.column_like(asked, CAPTION_COLUMN_CANDIDATES)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows in file order, one batch at a time; all columns, or only `columns`."""
        filesystem, inner = storage.resolve(self.path)
        try:
            with filesystem.open_input_file(inner) as f:
                if self.format == "parquet":
                    # One row group at a time: over a whole file, `iter_batches`' memory grows with
                    # the file (78 MB against 55 MB for 3M rows, measured; see docs/benchmarks.md).
                    parquet = pq.ParquetFile(f)
                    for group in range(parquet.num_row_groups):
                        yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group],
                                                        columns=columns)
                    return
                reader = pacsv.open_csv(
                    f,
                    read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    # Text as written; an unquoted empty cell (how a missing value is written) is null.
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict(zip(self.schema().names, self.schema().types, strict=True)),
                        include_columns=columns,
                        strings_can_be_null=True, quoted_strings_can_be_null=False),
                )
                yield from reader
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{self.path}: cannot read it: {exc}") from None

    def bins(self, batch: pa.RecordBatch, column: str) -> np.ndarray:
        """A batch's score bins (`histogram.to_bins`), -1 where a row has no score."""
        values = batch.column(column)
        try:
            numbers = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(f"{self.path}: column {column} holds values that are not numbers") from None
        scored = ~np.isnan(numbers)
        if np.any((numbers[scored] < 0) | (numbers[scored] > 1)):
            raise InputError(f"{self.path}: column {column} holds values outside [0, 1]; not a similarity")
        return np.where(scored, to_bins(np.where(scored, numbers, 0.0)), -1)

    def schema(self) -> pa.Schema:
        """The file's columns and types (a CSV's as `batches` reads them: numbers for the results)."""
        if self.format == "parquet":
            filesystem, inner = storage.resolve(self.path)
            return pq.read_schema(inner, filesystem=filesystem)
        numbers = {*self.models.values(), *(c for c in self.columns if c == "cosine" or c.startswith("cosine_"))}
        return pa.schema([(c, pa.float64() if c in numbers else pa.string()) for c in self.columns])

    def stats(self) -> dict | None:
        """``OUTPUT.stats.json`` as `score` wrote it beside this file, if it is there and readable."""
        try:
            filesystem, inner = storage.resolve(stats_path(self.path))
            with filesystem.open_input_stream(inner) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None


def _model_name(column: str) -> str:
    return column[len(SCORE_COLUMN) + 1:] if column != SCORE_COLUMN else SCORE_COLUMN


def parse_fraction(text: str, what: str, low: Fraction | int, high: Fraction | int) -> Fraction:
    """A decimal number given on the command line, exactly (``"30%"`` reads as 30); InputError if out of range."""
    try:
        value = Fraction(text.strip().removesuffix("%"))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{what}: {text!r} is not a number") from None
    if not low <= value <= high:
        raise InputError(f"{what}: {text} is outside [{low}, {high}]")
    return value
