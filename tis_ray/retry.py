"""``--retry-errors``: pick the rows of a previous output worth trying again, merge new results in.

Pure Arrow logic: which rows failed with a retryable kind (`errors.is_retryable`),
and a merge that puts the re-scored rows back at their own positions, every other
row untouched.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .columns import CAPTION_TRUNCATED, COSINE, PROBABILITY, SIMILARITY, ResultColumns
from .errors import InputError, error_kind, is_retryable
from .output import OutputFile


def read_previous_output(previous: OutputFile, input_schema: pa.Schema,
                         results: ResultColumns = ResultColumns()) -> pa.Table:
    """A previous output of the same input: its input columns typed as the input's, then the results."""
    try:
        if previous.format == "parquet":
            table = pq.read_table(previous.inner, filesystem=previous.filesystem)
        else:
            numbers = {results.of(kind, model): pa.float64() for model in results.models or (None,)
                       for kind in (SIMILARITY, COSINE, PROBABILITY)}
            flags = {results.of(CAPTION_TRUNCATED, model): pa.bool_() for model in results.models or (None,)}
            types = {**dict(zip(input_schema.names, input_schema.types, strict=True)), **numbers, **flags,
                     results.error: pa.string()}
            with previous.filesystem.open_input_stream(previous.inner) as stream:
                table = pacsv.read_csv(
                    stream,
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    # the writer quotes every string and leaves nulls empty: "" and null stay apart
                    convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                         quoted_strings_can_be_null=False),
                )
    except FileNotFoundError:
        raise InputError(f"{previous.path}: no such file (the previous output to retry)") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{previous.path}: cannot read the previous output: {exc}") from None
    # The cosines are there or not as the previous run was asked; the new rows follow it.
    cosines = {results.of(COSINE, model) for model in results.models or (None,)}
    expected = [*input_schema.names, *(name for name in results.written if name not in cosines)]
    found = [name for name in table.column_names if name not in cosines]
    if found != expected:
        raise InputError(f"{previous.path}: its columns ({', '.join(table.column_names)}) are not this input's columns "
                         f"followed by the results ({', '.join(expected)}); is it the output of this input?")
    return table


def retryable_rows(previous: pa.Table, results: ResultColumns = ResultColumns()) -> list[int]:
    """Positions of the rows whose error kind is worth trying again."""
    return [i for i, error in enumerate(previous.column(results.error).to_pylist())
            if is_retryable(error_kind(error))]


def inputs_of(previous: pa.Table, rows: list[int], results: ResultColumns = ResultColumns()) -> pa.Table:
    """The input columns of `rows`, as the scoring pipeline takes them."""
    inputs = previous.drop_columns([c for c in results.names if c in previous.column_names])
    return inputs.take(pa.array(rows, pa.int64()))


def merge(previous: pa.Table, rows: list[int], rescored: pa.Table) -> pa.Table:
    """`previous` with row ``rows[k]`` replaced by ``rescored[k]``; same order, same columns."""
    if rescored.num_rows != len(rows):
        raise ValueError(f"{rescored.num_rows} re-scored rows for {len(rows)} retried")
    rescored = rescored.select(previous.column_names).cast(previous.schema)
    combined = pa.concat_tables([previous, rescored])
    index = np.arange(previous.num_rows)
    index[rows] = previous.num_rows + np.arange(len(rows))
    return combined.take(pa.array(index))
