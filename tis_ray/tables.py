"""Reading a CSV or Parquet input: its format from the name, its header, schema and row count
(`TableFile`), and how CSV cells are parsed. Local paths and object-store URLs alike (see `storage`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .errors import InputError


def input_format(path: str) -> str:
    """``"csv"`` or ``"parquet"``, from the file name."""
    name = storage.without_query(path).lower()
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InputError(f"{storage.shown(path)}: unknown file type (expected .csv or .parquet)")


@dataclass(frozen=True)
class TableFile:
    """A CSV or Parquet input, resolved and looked at once before any work: where it is, its format,
    the columns its rows are read with, and what a resume checks it by (size and change time).

    Every later step (the reader, the row estimate and count, the checkpoint's identity) takes
    this value, so the path is resolved, its format decided and its metadata fetched once.
    """

    path: str  # as the user named it: for messages
    filesystem: pafs.FileSystem
    inner: str  # the path inside `filesystem`: a local absolute path, or bucket/key
    format: str  # "csv" or "parquet", from the name (`input_format`)
    size: int
    mtime_ns: int
    schema: pa.Schema  # the schema rows are read with: Parquet's own, or all-text for CSV (cells stay as written)
    parquet_rows: int | None  # a Parquet file's own row count; a CSV's is known only by reading it through

    @classmethod
    def open(cls, path: str) -> TableFile:
        """The input at `path`, or `InputError` saying why it cannot be read as a table."""
        shown = storage.shown(path)  # never an access key in a message
        try:
            filesystem, inner = storage.resolve(path)
            info = filesystem.get_file_info(inner)
        except (OSError, ValueError) as exc:  # an unreachable store, a bad URL or missing credentials
            raise InputError(f"{shown}: cannot reach the input: {exc}") from None
        if info.type == pafs.FileType.Directory:
            raise InputError(f"{shown}: is a folder, expected a .csv or .parquet file")
        if info.type != pafs.FileType.File:
            raise InputError(f"{shown}: no such file")
        fmt = input_format(path)
        try:
            if fmt == "parquet":
                schema, parquet_rows = _parquet_footer(filesystem, inner)
            else:
                schema, parquet_rows = _csv_schema(filesystem, inner), None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{shown}: cannot read {fmt} header: {exc}") from None
        except Exception as exc:  # pyarrow raises its own types for a bad Parquet file
            raise InputError(f"{shown}: not a readable {fmt} file: {exc}") from None
        if fmt == "csv" and not schema.names:
            raise InputError(f"{shown}: the file is empty (no header row)")
        return cls(path, filesystem, inner, fmt, info.size or 0, info.mtime_ns or 0, schema, parquet_rows)

    @property
    def columns(self) -> list[str]:
        """The column names, from the CSV header or the Parquet schema."""
        return self.schema.names

    def count_rows(self) -> int:
        """The exact row count: a Parquet file's own, or a CSV read through once (one column kept)."""
        if self.parquet_rows is not None:
            return self.parquet_rows
        first = self.columns[0]
        with self.filesystem.open_input_file(self.inner) as f:
            reader = pacsv.open_csv(f, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                    convert_options=pacsv.ConvertOptions(include_columns=[first],
                                                                         column_types={first: pa.string()}))
            return sum(batch.num_rows for batch in reader)


def _parquet_footer(filesystem: pafs.FileSystem, inner: str) -> tuple[pa.Schema, int]:
    """A Parquet file's schema and row count, from its footer (one read)."""
    with filesystem.open_input_file(inner) as f:
        footer = pq.ParquetFile(f)
        return footer.schema_arrow, footer.metadata.num_rows


def _csv_schema(filesystem: pafs.FileSystem, inner: str) -> pa.Schema:
    """A CSV file's header row, every column text."""
    with storage.open_text(filesystem, inner) as f:
        header = next(csv.reader(f), None) or []
    return pa.schema([(name, pa.string()) for name in header])


def csv_read_options(schema: pa.Schema) -> tuple[pacsv.ParseOptions, pacsv.ConvertOptions]:
    """How a CSV input is parsed: quoted fields may hold newlines, every cell stays the text written.

    An empty cell is the empty string, never null: an empty caption is a row error
    (`check_caption`), not a missing value.
    """
    return (
        pacsv.ParseOptions(newlines_in_values=True),
        pacsv.ConvertOptions(
            column_types=dict(zip(schema.names, schema.types, strict=True)),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
