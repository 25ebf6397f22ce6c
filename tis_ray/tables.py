"""Reading a CSV or Parquet input: its format from the name, its header, schema and row count,
and how CSV cells are parsed. Local paths and object-store URLs alike (see `storage`).
"""

from __future__ import annotations

import csv

import pyarrow as pa
import pyarrow.csv as pacsv
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
    raise InputError(f"{path}: unknown file type (expected .csv or .parquet)")


def read_columns(path: str) -> list[str]:
    """The input's column names, read from the CSV header or the Parquet schema."""
    kind = _input_kind(path)
    if kind == "missing":
        raise InputError(f"{path}: no such file")
    if kind == "folder":
        raise InputError(f"{path}: is a folder, expected a .csv or .parquet file")
    fmt = input_format(path)
    try:
        if fmt == "parquet":
            return list(_read_parquet_schema(path).names)
        with storage.open_text(path) as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read {fmt} header: {exc}") from None
    except Exception as exc:  # pyarrow raises its own types for a bad Parquet file
        raise InputError(f"{path}: not a readable {fmt} file: {exc}") from None
    if not header:
        raise InputError(f"{path}: the file is empty (no header row)")
    return header


def _input_kind(path: str) -> str:
    try:
        return storage.kind_of(path)
    except (OSError, ValueError) as exc:  # an unreachable store, a bad URL or missing credentials
        raise InputError(f"{path}: cannot reach the input: {exc}") from None


def _read_parquet_schema(path: str) -> pa.Schema:
    fs, inner = storage.resolve(path)
    return pq.read_schema(inner, filesystem=fs)


def input_schema(path: str, columns: list[str]) -> pa.Schema:
    """The schema rows are read with: Parquet's own, or all-text for CSV (cells stay as written)."""
    if input_format(path) == "parquet":
        return _read_parquet_schema(path)
    return pa.schema([(name, pa.string()) for name in columns])


def count_rows(path: str) -> int:
    """The input's exact row count: a Parquet file's own, or a CSV read through once (one column kept)."""
    filesystem, inner = storage.resolve(path)
    with filesystem.open_input_file(inner) as f:
        if input_format(path) == "parquet":
            return pq.ParquetFile(f).metadata.num_rows
        first = read_columns(path)[0]
        reader = pacsv.open_csv(f, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                convert_options=pacsv.ConvertOptions(include_columns=[first],
                                                                     column_types={first: pa.string()}))
        return sum(batch.num_rows for batch in reader)


def csv_read_options(schema: pa.Schema) -> tuple[pacsv.ParseOptions, pacsv.ConvertOptions]:
    """How a CSV input is parsed: quoted fields may hold newlines, every cell stays the text written.

    An empty cell is the empty string, never null: an empty caption is a row error
    (`check_caption`), not a missing value.
    """
    return (
        pacsv.ParseOptions(newlines_in_values=True),
        pacsv.ConvertOptions(
            column_types=dict(zip(schema.names, schema.types)),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
