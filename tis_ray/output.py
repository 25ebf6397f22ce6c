"""Writing results: streamed to a hidden file beside the target, renamed when complete
(for an object store: staged locally, uploaded when complete).

A reader of OUTPUT therefore sees either nothing or the whole file, never a part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .errors import OutputError


@dataclass(frozen=True)
class OutputFile:
    """A results file, named and resolved once: the filesystem that holds it, the path inside it
    and its format, for the writer (`write_atomically`) and for `--retry-errors`, which reads a
    previous one back."""

    path: str  # as the user named it: for messages
    filesystem: pafs.FileSystem
    inner: str  # the path inside `filesystem`: a local absolute path, or bucket/key
    format: str  # "csv" or "parquet", from the name

    @classmethod
    def of(cls, path: str) -> OutputFile:
        name = storage.without_query(path).lower()
        if name.endswith(".csv"):
            fmt = "csv"
        elif name.endswith((".parquet", ".pq")):
            fmt = "parquet"
        else:
            raise OutputError(f"{path}: unknown output type (use a .csv or .parquet name)")
        try:
            filesystem, inner = storage.resolve(path)
        except (OSError, ValueError) as exc:  # an unreachable store or missing credentials
            raise OutputError(f"{path}: cannot reach the output's store: {exc}") from None
        return cls(path, filesystem, inner, fmt)

    @property
    def in_object_store(self) -> bool:
        return not isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def staging_folder(self) -> str:
        """Where the file is written first: beside it, or locally for an object store (uploaded whole)."""
        return tempfile.gettempdir() if self.in_object_store else os.path.dirname(self.inner)


def check_output_path(path: str) -> OutputFile:
    """The output, resolved; `OutputError` before any work if it cannot be written where asked."""
    output = OutputFile.of(path)
    if output.in_object_store:
        try:
            problem = storage.check_writable_bucket(output.filesystem, output.inner)
        except (OSError, ValueError) as exc:  # an unreachable store or missing credentials
            problem = f"cannot reach the output's store: {exc}"
        if problem:
            raise OutputError(f"{path}: {problem}")
        return output
    folder = os.path.dirname(output.inner)
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the output folder {folder} does not exist")
    if os.path.isdir(output.inner):
        raise OutputError(f"{path}: is a folder")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: cannot write in {folder}")
    return output


def write_atomically(batches: Iterable[pa.Table], output: OutputFile, empty_schema: pa.Schema) -> Iterator[pa.Table]:
    """Write each batch as it passes through; the file appears at `output` only at the end.

    `empty_schema` gives the header of the file when the input had no rows.
    """
    name = os.path.basename(output.inner)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=output.staging_folder)
    os.close(fd)
    writer = None
    try:
        for batch in batches:
            if writer is None:
                writer = _open_writer(output.format, temp, batch.schema)
            writer.write_table(batch.cast(writer.schema) if output.format == "parquet" else batch)
            yield batch
        if writer is None:
            writer = _open_writer(output.format, temp, empty_schema)
        writer.close()
        writer = None
        _fsync(temp)
        storage.publish(temp, output.filesystem, output.inner)
    finally:
        if writer is not None:
            writer.close()
        if os.path.exists(temp):
            os.unlink(temp)


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
        staged = os.path.join(tempfile.gettempdir(), f".tis-ray-{os.getpid()}.tmp")
        dump(staged)
        storage.publish(staged, *storage.resolve(path))
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
