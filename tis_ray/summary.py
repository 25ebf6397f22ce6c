"""What a job did, counted from the rows it wrote: the CLI prints it, the stats file keeps it."""

from __future__ import annotations

import datetime
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from . import __version__, storage
from .columns import RUNTIME, TRUNCATED
from .errors import error_kind


@dataclass
class JobSummary:
    model: str | list[dict]  # the model's id, or each model's name and id where a job has several
    error_column: str = "error"  # its name in the rows counted (see `columns.ResultColumns`)
    rows: int = 0
    scored: int = 0
    truncated_captions: int = 0
    errors: Counter = field(default_factory=Counter)
    runtimes: set = field(default_factory=set)  # "device/dtype" of the scorer actors' models
    carried_over: int = 0  # rows taken from a checkpoint or a previous output, not scored by this run
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    first_rows_seconds: float | None = None  # start-up: until the first rows came back
    first_rows: int = 0  # how many rows this run scored in that first batch
    stats_file: str | None = None  # where the stats were written, once they are

    def add(self, batch: pa.Table) -> None:
        """Count a batch of result rows (with the internal columns; a null runtime: not scored here)."""
        errors = [e for e in batch.column(self.error_column).to_pylist() if e]
        self.rows += batch.num_rows
        self.scored += batch.num_rows - len(errors)
        self.errors.update(error_kind(e) for e in errors)
        self.truncated_captions += sum(1 for t in batch.column(TRUNCATED).to_pylist() if t)
        self.runtimes.update(part for r in batch.column(RUNTIME).unique().to_pylist() if r for part in r.split("; "))
        self.seconds = time.monotonic() - self.started

    def arrived(self, rows: int) -> None:
        """Note when this run's first scored rows came back from Ray: the end of start-up."""
        if self.first_rows_seconds is None and rows:
            self.first_rows_seconds, self.first_rows = time.monotonic() - self.started, rows

    @property
    def scored_now(self) -> int:
        return self.rows - self.carried_over

    @property
    def pairs_per_second(self) -> float:
        """Rows this run produced per second (rows carried over cost nothing)."""
        return self.scored_now / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_pairs_per_second(self) -> float | None:
        """Rows per second after the first rows came back: the rate once actors and model are up."""
        if self.first_rows_seconds is None or self.seconds <= self.first_rows_seconds:
            return None
        return (self.scored_now - self.first_rows) / (self.seconds - self.first_rows_seconds)

    def format(self) -> str:
        lines = [
            f"rows: {self.rows}",
            f"scored: {self.scored}",
            f"errors: {sum(self.errors.values())}",
        ]
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.carried_over:
            lines.append(f"carried over: {self.carried_over} (scored now: {self.scored_now})")
        lines += [
            f"truncated captions: {self.truncated_captions}",
            f"model: {self._model_text} on {', '.join(sorted(self.runtimes)) or 'no scorer run'}",
            f"time: {self.seconds:.1f}s ({self.pairs_per_second:.1f} pairs/s)",
        ]
        return "\n".join(lines)

    @property
    def _model_text(self) -> str:
        if isinstance(self.model, str):
            return self.model
        return ", ".join(f"{m['name']}={m['model']}" for m in self.model)

    def stats(self, *, input_path: str, output_path: str, mode: str) -> dict:
        """The content of ``<output>.stats.json``; ``mode`` is fresh, resumed or retry_errors."""
        devices = sorted({r.split("/", 1)[0] for r in self.runtimes})
        dtypes = sorted({r.split("/", 1)[1] for r in self.runtimes})
        return {
            "tool": "tis-ray",
            "version": __version__,
            "input": _where(input_path),
            "output": _where(output_path),
            "mode": mode,
            "rows": self.rows,
            "outcomes": {"scored": self.scored, "error": sum(self.errors.values())},
            "errors_by_kind": dict(sorted(self.errors.items())),
            "truncated_captions": self.truncated_captions,
            "rows_carried_over": self.carried_over,
            "rows_scored_now": self.scored_now,
            "model": self.model,
            "device": ", ".join(devices) or None,
            "dtype": ", ".join(dtypes) or None,
            "seconds": round(self.seconds, 3),
            "pairs_per_second": round(self.pairs_per_second, 2),
            "seconds_to_first_rows": None if self.first_rows_seconds is None else round(self.first_rows_seconds, 3),
            "steady_pairs_per_second": None if self.steady_pairs_per_second is None else round(
                self.steady_pairs_per_second, 2),
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }


def _where(path: str) -> str:
    """A path made absolute, or an object-store URL without its options and credentials."""
    if storage.is_object_store(path):
        parts = urlsplit(path)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    return os.path.abspath(storage.localize(path))
