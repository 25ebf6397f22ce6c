"""Writing results: streamed to a hidden file beside the target, renamed when complete
(for an object store: staged locally, uploaded when complete).

A reader of OUTPUT therefore sees either nothing or the whole file, never a part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from . import storage
from .errors import OutputError


def output_format(path: str) -> str:
    name = storage.without_query(path).lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise OutputError(f"{path}: unknown output type (use a .csv or .parquet name)")


def check_output_path(path: str) -> None:
    """Fail before any work if the output cannot be written where asked."""
    output_format(path)
    if storage.is_object_store(path):
        if problem := _object_store_problem(path):
            raise OutputError(f"{path}: {problem}")
        return
    path = storage.localize(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the output folder {folder} does not exist")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: cannot write in {folder}")


def write_atomically(batches: Iterable[pa.Table], path: str, empty_schema: pa.Schema) -> Iterator[pa.Table]:
    """Write each batch as it passes through; the file appears at `path` only at the end.

    `empty_schema` gives the header of the file when the input had no rows.
    """
    fmt = output_format(path)
    path = storage.localize(path)
    name = os.path.basename(storage.without_query(path))
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=storage.staging_folder(path))
    os.close(fd)
    writer = None
    try:
        for batch in batches:
            if writer is None:
                writer = _open_writer(fmt, temp, batch.schema)
            writer.write_table(batch.cast(writer.schema) if fmt == "parquet" else batch)
            yield batch
        if writer is None:
            writer = _open_writer(fmt, temp, empty_schema)
        writer.close()
        writer = None
        _fsync(temp)
        storage.publish(temp, path)
    finally:
        if writer is not None:
            writer.close()
        if os.path.exists(temp):
            os.unlink(temp)


def _object_store_problem(path: str) -> str | None:
    try:
        return storage.check_writable_bucket(path)
    except (OSError, ValueError) as exc:  # an unreachable store or missing credentials
        return f"cannot reach the output's store: {exc}"


def write_durably(path: str, write: Callable[[str], None]) -> None:
    """`write(temp)` beside `path`, then fsync and rename: `path` exists whole or not at all."""
    temp = f"{path}.tmp"
    try:
        write(temp)
        _fsync(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    _fsync(os.path.dirname(os.path.abspath(path)))


def beside(path: str, suffix: str) -> str:
    """A name for a file kept next to `path` (before an object-store URL's options)."""
    base, sep, options = path.partition("?") if storage.is_object_store(path) else (path, "", "")
    return f"{base}{suffix}{sep}{options}"


def stats_path(output_path: str) -> str:
    return beside(output_path, ".stats.json")


def write_stats(output_path: str, stats: dict) -> str:
    """``<output>.stats.json``, written whole (see `write_whole`)."""
    return write_whole(stats_path(output_path), json.dumps(stats, indent=2) + "\n")


def write_whole(path: str, text: str) -> str:
    """A small text file at `path` (local or object store), written whole: renamed into
    place locally, one upload to an object store. Returns its local path or its URL."""
    path = storage.localize(path)

    def dump(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)

    if storage.is_object_store(path):
        staged = os.path.join(storage.staging_folder(path), f".tis-ray-{os.getpid()}.tmp")
        dump(staged)
        storage.publish(staged, path)
    else:
        write_durably(path, dump)
    return path


def _fsync(path: str) -> None:
    """Make a file (or a folder's entries) durable before it is relied on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_writer(fmt: str, path: str, schema: pa.Schema):
    if fmt == "parquet":
        return pq.ParquetWriter(path, schema)
    return pacsv.CSVWriter(path, schema)
