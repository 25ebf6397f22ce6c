"""A durable checkpoint of a running job, so that an interrupted job can be resumed.

Scored rows arrive in input order. They are flushed to ``<output>.parts/`` as
Parquet part files named by the contiguous row range they cover
(``part-<start>-<end>.parquet``); each part is written under a temporary name,
fsync'ed and renamed, so a part either exists whole or not at all. A manifest
records what the rows were scored from (the input's path, size and modification
time, and the settings that change results); a resume with anything different is
refused. At the end the parts are joined into the output and the folder removed. For
an object-store output the folder is kept in the working folder instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .config import CHANGES_RESULTS, FetchConfig, ModelConfig, PipelineConfig
from .errors import InputError
from .output import write_durably
from .tables import TableFile

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PART_NAME = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")
FLUSH_ROWS = 50_000  # a part at least this often, whatever the time


@dataclass(frozen=True)
class JobIdentity:
    """What a checkpoint's rows were scored from; a resume must match it exactly."""

    input_path: str
    input_size: int
    input_mtime_ns: int
    settings: dict  # the settings that change results: model, device, dtype, columns, fetch limits

    @classmethod
    def of(cls, file: TableFile, settings: dict) -> JobIdentity:
        """A table input's identity: its path inside its filesystem, size and change time as it was opened."""
        return cls(file.inner, file.size, file.mtime_ns, settings)

    def differences(self, other: JobIdentity) -> list[str]:
        """Human-readable names of what differs (empty when the two match)."""
        mine, theirs = asdict(self), asdict(other)
        settings_mine, settings_theirs = mine.pop("settings"), theirs.pop("settings")
        changed = [f"{key} ({theirs[key]} then, {mine[key]} now)" for key in mine if mine[key] != theirs[key]]
        keys = sorted(set(settings_mine) | set(settings_theirs))
        changed += [f"{key} ({settings_theirs.get(key)!r} then, {settings_mine.get(key)!r} now)"
                    for key in keys if settings_mine.get(key) != settings_theirs.get(key)]
        return changed


def result_settings(settings: FetchConfig | ModelConfig | PipelineConfig) -> dict:
    """The fields of a settings dataclass (`config`) that change results, by name and value: what a
    resume must find unchanged. Each field is declared `result_setting` or `shape_setting`; one
    declared as neither is refused here, so a new setting cannot be left out of the check unseen."""
    found = {}
    for field in dataclasses.fields(settings):
        if CHANGES_RESULTS not in field.metadata:
            raise TypeError(f"{type(settings).__name__}.{field.name}: declare it with config.result_setting or "
                            "config.shape_setting (does its value change a job's results?)")
        if field.metadata[CHANGES_RESULTS]:
            found[field.name] = getattr(settings, field.name)
    return found


def checkpoint_dir(output_path: str) -> str:
    """Beside a local output; in the working folder for an object-store output (parts are local files)."""
    if storage.is_object_store(output_path):
        return os.path.abspath(f"{os.path.basename(storage.without_query(output_path))}.parts")
    return f"{storage.localize(output_path)}.parts"


class Checkpoint:
    """The ``<output>.parts/`` folder: parts covering rows ``[0, rows_done)``, in order."""

    def __init__(self, folder: str, every_s: float):
        self.folder = folder
        self.every_s = every_s
        self.parts = _list_parts(folder)
        self.rows_done = self.parts[-1][1] if self.parts else 0
        self.rows_at_start = self.rows_done
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._last_flush = time.monotonic()

    @classmethod
    def open(cls, output_path: str, identity: JobIdentity, *, resume: bool, every_s: float) -> Checkpoint:
        """Start a checkpoint, or pick up the one an interrupted run left (only with `resume`)."""
        folder = checkpoint_dir(output_path)
        if os.path.isdir(folder):
            if not resume:
                raise InputError(
                    f"{folder} holds the checkpoint of an interrupted run writing {output_path}; "
                    "run again with --resume to finish it, or delete that folder to start over"
                )
            found = _read_manifest(folder)
            changed = identity.differences(found)
            if changed:
                raise InputError(
                    f"cannot resume from {folder}: it was written for a different job ({'; '.join(changed)}); "
                    "delete that folder to start over"
                )
            _remove_temporaries(folder)
        else:
            os.makedirs(folder)
            write_durably(os.path.join(folder, MANIFEST),
                          lambda path: _write_json(path, {"format": FORMAT_VERSION, **asdict(identity)}))
        return cls(folder, every_s)

    def add(self, batch: pa.Table) -> None:
        """Buffer the next rows in order; make them durable every `every_s` seconds (or FLUSH_ROWS rows)."""
        self._buffer.append(batch)
        self._buffered_rows += batch.num_rows
        if self._buffered_rows >= FLUSH_ROWS or time.monotonic() - self._last_flush >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one durable part."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer, promote_options="permissive")
        self._buffer, self._buffered_rows = [], 0
        if table.num_rows == 0:
            return
        start, end = self.rows_done, self.rows_done + table.num_rows
        path = os.path.join(self.folder, f"part-{start:012d}-{end:012d}.parquet")
        write_durably(path, lambda temp: pq.write_table(table, temp))
        self.parts.append((start, end, path))
        self.rows_done = end

    def tables(self) -> Iterator[pa.Table]:
        """Every part, in row order."""
        for _, _, path in self.parts:
            yield pq.read_table(path)

    def remove(self) -> None:
        shutil.rmtree(self.folder)


def _list_parts(folder: str) -> list[tuple[int, int, str]]:
    parts = sorted(
        (int(m.group(1)), int(m.group(2)), os.path.join(folder, name))
        for name in os.listdir(folder) if (m := PART_NAME.match(name))
    )
    expected = 0
    for start, end, path in parts:
        if start != expected:
            raise InputError(f"{folder}: the checkpoint is damaged (rows {expected} to {start} are missing before "
                             f"{os.path.basename(path)}); delete that folder to start over")
        expected = end
    return parts


def _read_manifest(folder: str) -> JobIdentity:
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path) as f:
            data = json.load(f)
        if data.pop("format") != FORMAT_VERSION:
            raise ValueError("written by another version of tis-ray")
        return JobIdentity(**data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{folder}: not a usable checkpoint ({exc}); delete that folder to start over") from None


def _remove_temporaries(folder: str) -> None:
    """Drop what a killed run was half-way through writing."""
    for name in os.listdir(folder):
        if name.endswith(".tmp"):
            os.unlink(os.path.join(folder, name))


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
