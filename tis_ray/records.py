"""Records in and results out: the row types, input validation and column choice.

Everything here runs before any Ray work starts, so a bad input is one clear
message, not a failed job.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import storage
from .errors import EMPTY_CAPTION, RowError

# Found by name, ignoring case, in this order: our own names, img2dataset's (url,
# caption), LAION's, DataComp's and COYO's (URL, TEXT), Hugging Face datasets' (image, text).
IMAGE_COLUMN_CANDIDATES = ("image_url", "url", "image", "image_path")
CAPTION_COLUMN_CANDIDATES = ("caption", "text")
# A column that holds the image itself wins over one that names it: img2dataset's
# Parquet output has both a `url` and the downloaded bytes in `jpg`.
IMAGE_BYTES_CANDIDATES = ("image", "jpg", "jpeg", "png", "webp", "img")


class InputError(Exception):
    """The input as a whole cannot be used; the message is meant for the user."""


@dataclass(frozen=True)
class ResultColumns:
    """The names of the columns tis-ray adds: ``similarity``, ``cosine``, ``error``, each after `prefix`.

    A prefix keeps them apart from input columns of the same name (LAION ships its own
    ``similarity``)."""

    prefix: str = ""

    @property
    def similarity(self) -> str:
        return f"{self.prefix}similarity"

    @property
    def cosine(self) -> str:
        return f"{self.prefix}cosine"

    @property
    def error(self) -> str:
        return f"{self.prefix}error"

    @property
    def names(self) -> tuple[str, str, str]:
        return self.similarity, self.cosine, self.error


@dataclass(frozen=True)
class Record:
    """One pair to score: an image (URL or path) and its caption."""

    image: str
    caption: str


@dataclass(frozen=True)
class ScoreResult:
    """The outcome for one `Record`: a similarity in [0, 1], or an error."""

    image: str
    caption: str
    similarity: float | None
    cosine: float | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


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


def image_bytes_columns(schema: pa.Schema) -> frozenset[str]:
    """The columns that hold images themselves: binary, or Hugging Face's ``{bytes, path}`` struct."""
    return frozenset(field.name for field in schema if is_image_bytes_type(field.type))


def is_image_bytes_type(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0


def check_result_names(columns: list[str], results: ResultColumns = ResultColumns()) -> None:
    """Refuse an input whose columns would be confused with the results tis-ray adds."""
    clashes = [c for c in results.names if c in columns]
    if clashes:
        example = ResultColumns("tis_")
        raise InputError(
            f"the input already has result column(s) {', '.join(clashes)}; rename them, or name tis-ray's "
            f"own apart with --prefix (--prefix {example.prefix} writes {example.similarity}, {example.error})"
        )


def pick_columns(
    columns: list[str], image_column: str | None = None, caption_column: str | None = None,
    *, results: ResultColumns = ResultColumns(), bytes_columns: frozenset[str] = frozenset(),
) -> tuple[str, str]:
    """Choose the image and caption columns: the ones asked for, else common names in any case.

    Of `bytes_columns` (those that hold the images themselves), one with an image name
    is chosen before any column of references."""
    check_result_names(columns, results)
    holding = [c for c in columns if c in bytes_columns]
    image = image_column is None and _find(holding, IMAGE_BYTES_CANDIDATES, "--image-column")
    if not image:
        image = _pick(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image-column")
    caption = _pick(columns, caption_column, CAPTION_COLUMN_CANDIDATES, "caption", "--caption-column")
    if image == caption:
        raise InputError(f"the image and caption columns are the same column {image!r}")
    return image, caption


def _pick(columns: list[str], asked: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    if asked is not None:
        if asked not in columns:
            raise InputError(f"no {what} column {asked!r} in the input (columns: {', '.join(columns)})")
        return asked
    if found := _find(columns, candidates, flag):
        return found
    raise InputError(
        f"cannot find the {what} column: none of {', '.join(candidates)} (in any case) is among "
        f"the input's columns ({', '.join(columns)}); name it with {flag}"
    )


def _find(columns: list[str], candidates: tuple[str, ...], flag: str) -> str | None:
    """The first candidate among `columns`: spelt the same, else in another case (``URL``, ``Text``)."""
    for name in candidates:
        if name in columns:
            return name
        folded = [c for c in columns if c.casefold() == name]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise InputError(f"the input has several columns named {name!r} in different cases "
                             f"({', '.join(folded)}); choose one with {flag}")
    return None


def check_caption(caption: object) -> str:
    """The caption as text, or `RowError` when there is nothing to score."""
    if caption is None or (isinstance(caption, float) and caption != caption):
        # NaN is how a float column says "missing"; scoring the text "nan" would be wrong
        raise RowError(EMPTY_CAPTION, "the caption is missing")
    text = caption if isinstance(caption, str) else str(caption)
    if not text.strip():
        raise RowError(EMPTY_CAPTION, "the caption is empty")
    return text
