"""What a file job reads: a table (CSV or Parquet) or WebDataset shards, checked before Ray starts.

Both kinds answer the same questions for `api`: which columns hold the image and the
caption, which input columns the output keeps, how to read the rows as a Dataset, how
many rows to expect, and what a resume must find unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa
from ray.data import Dataset

from .checkpoint import JobIdentity
from .columns import (
    CAPTION,
    IMAGE_BYTES,
    ResultColumns,
    check_result_names,
    image_bytes_columns,
    pick_columns,
)
from .errors import InputError
from .output import OutputFile
from .pipeline import estimated_rows, estimated_shard_samples, read_records, read_shards
from .shard_source import output_schema
from .shards import Shard, is_shard_input, list_shards
from .sources import base_dir_of
from .tables import TableFile
from .tar_samples import SampleLayout


@dataclass(frozen=True)
class TableInput:
    """A CSV or Parquet file; every column is kept, the image cells are references or bytes."""

    file: TableFile  # resolved once: where it is, its format, schema, size and change time
    image_column: str
    caption_column: str
    internal_columns: tuple[str, ...] = ()  # none: every column read is the user's

    @property
    def schema(self) -> pa.Schema:
        """The input's columns, as the output keeps them."""
        return self.file.schema

    def read(self) -> Dataset:
        return read_records(self.file)

    def settings(self) -> dict:
        return {"image_column": self.image_column, "caption_column": self.caption_column}

    def rows(self) -> int:
        return estimated_rows(self.file)

    def count_rows(self) -> int:
        """The exact row count (a CSV is read through once): for the progress line's total."""
        return self.file.count_rows()

    def identity(self, settings: dict) -> JobIdentity:
        return JobIdentity.of(self.file, settings)

    @property
    def base_dir(self) -> str:
        return base_dir_of(self.file.path)


@dataclass(frozen=True)
class ShardInput:
    """WebDataset tar shards; the output keeps each sample's key, its shard and the json fields asked for."""

    spec: str
    shards: tuple[Shard, ...]
    layout: SampleLayout
    image_column: str = IMAGE_BYTES
    caption_column: str = CAPTION
    internal_columns: tuple[str, ...] = (CAPTION,)  # the image bytes and read errors end at the fetch stage

    @property
    def schema(self) -> pa.Schema:
        return output_schema(self.layout)

    def read(self) -> Dataset:
        return read_shards(list(self.shards), self.layout)

    def settings(self) -> dict:
        """The layout decides what each row holds; as the checkpoint's manifest gives it back (tuples are lists)."""
        layout = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self.layout).items()}
        return {"image_column": self.image_column, "caption_column": self.caption_column, "shard_layout": layout}

    def rows(self) -> int:
        return estimated_shard_samples(list(self.shards))

    def count_rows(self) -> None:
        """Not known before the shards are read (a tar has no index)."""
        return None

    def identity(self, settings: dict) -> JobIdentity:
        """The shards' total size and latest change stand in for one file's; their count is a setting."""
        return JobIdentity(self.spec, sum(s.size for s in self.shards), max(s.mtime_ns for s in self.shards),
                           {**settings, "shards": len(self.shards)})

    @property
    def base_dir(self) -> str:
        return base_dir_of(None)  # nothing is fetched: every image is in the shard


def check_input(path: str, image_column: str | None, caption_column: str | None,
                keep_json_fields: tuple[str, ...], results: ResultColumns, max_bytes: int) -> TableInput | ShardInput:
    """The input as a job will read it, or `InputError` with one line saying what is wrong."""
    if is_shard_input(path):
        layout = SampleLayout.of(image_column, caption_column, tuple(keep_json_fields), max_bytes)
        check_result_names(output_schema(layout).names, results)
        return ShardInput(path, tuple(list_shards(path)), layout)
    if keep_json_fields:
        raise InputError("--keep-json-fields is for WebDataset shards (.tar); a table keeps all its columns")
    file = TableFile.open(path)
    image, caption = pick_columns(file.columns, image_column, caption_column, results=results,
                                  bytes_columns=image_bytes_columns(file.schema))
    return TableInput(file, image, caption)


def check_output_keeps(source: TableInput | ShardInput, output: OutputFile) -> None:
    """`InputError` if the output's format cannot keep the input's columns.

    An input whose image column holds bytes keeps that column in the output, as every
    input column is kept: only Parquet can hold it, so a CSV output is refused."""
    holding = image_bytes_columns(source.schema)
    if holding and output.format == "csv":
        raise InputError(f"the input's column(s) {', '.join(sorted(holding))} hold image bytes, which a CSV "
                         "output cannot keep; name the output .parquet")
