"""What a job did, counted from the rows it wrote: the CLI prints it at the end."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from .errors import error_kind


@dataclass
class JobSummary:
    model: str
    rows: int = 0
    scored: int = 0
    truncated_captions: int = 0
    errors: Counter = field(default_factory=Counter)
    runtimes: set = field(default_factory=set)  # "device/dtype" of the scorer actors
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def add(self, batch: pa.Table, error_column: pa.ChunkedArray, truncated: pa.ChunkedArray,
            runtime: pa.ChunkedArray) -> None:
        errors = [e for e in error_column.to_pylist() if e]
        self.rows += batch.num_rows
        self.scored += batch.num_rows - len(errors)
        self.errors.update(error_kind(e) for e in errors)
        self.truncated_captions += sum(truncated.to_pylist())
        self.runtimes.update(runtime.unique().to_pylist())
        self.seconds = time.monotonic() - self.started

    @property
    def pairs_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"rows: {self.rows}",
            f"scored: {self.scored}",
            f"errors: {sum(self.errors.values())}",
        ]
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))]
        lines += [
            f"truncated captions: {self.truncated_captions}",
            f"model: {self.model} on {', '.join(sorted(self.runtimes)) or 'no scorer run'}",
            f"time: {self.seconds:.1f}s ({self.pairs_per_second:.1f} pairs/s)",
        ]
        return "\n".join(lines)
