"""The progress of a `score` job, as the user wants it: rows done of the total, rows/s,
time left and errors so far by kind.

It is counted from the result batches the driver already receives (`api.score_file`
reads every batch to checkpoint it), so it costs no extra work on the cluster. On a
terminal one line is redrawn a few times a second; elsewhere (a log file, `ray job
logs`) a plain line is written every `every_s` seconds, so logs show progress without
carriage returns. Either way the last line holds the final counts. Rows/s, and the
time left from it, count from the first results, not from the start-up before them.

The total comes from the input: a Parquet file's own row count, or a CSV counted in a
background thread while the job starts (the line shows ``?`` until it is known).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

import pyarrow as pa
import pyarrow.compute as pc

from .errors import error_kind

REDRAW_S = 0.25  # a terminal line is redrawn this often
SHOWN_KINDS = 4  # error kinds named on the line; the rest are counted as "other"


class ProgressLine:
    def __init__(self, stream: TextIO, *, terminal: bool, every_s: float = 30.0):
        self.stream = stream
        self.terminal = terminal
        self.every_s = REDRAW_S if terminal else every_s
        self.total: int | None = None
        self.done = 0
        self.errors: Counter = Counter()
        self.started = time.monotonic()
        # When the first results came back, and the rows done then: the rate is measured from
        # there, so the minutes of start-up (actors, model) do not make the time left too long.
        self._first: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.error_column = "error"  # the result column counted, as named at `start` (--prefix changes it)
        self._width = 0  # of the last line drawn on the terminal, to blank what a shorter one leaves

    def start(self, count_total: Callable[[], int | None], error_column: str = "error", done: int = 0) -> None:
        """Begin at `done` rows (carried over from a checkpoint); the total is counted in the background
        (None: not known before the input is read, as for shards)."""
        self.error_column = error_column
        self.done = done
        self.started = time.monotonic()
        threading.Thread(target=self._count, args=(count_total,), daemon=True, name="tis-progress-total").start()
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="tis-progress")
        self._ticker.start()

    def add(self, batch: pa.Table) -> None:
        """Count a batch of result rows (it has the error column named at `start`)."""
        errors = batch.column(self.error_column)
        failed = errors.filter(pc.fill_null(pc.not_equal(errors, ""), False)).to_pylist()
        with self._lock:
            self.done += batch.num_rows
            self.errors.update(error_kind(e) for e in failed)
            if self._first is None:
                self._first = (time.monotonic(), self.done)

    def finish(self) -> None:
        """Stop redrawing and write the final line."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._write(final=True)

    def line(self, now: float | None = None) -> str:
        now = now or time.monotonic()
        with self._lock:
            done, total, errors, first = self.done, self.total, Counter(self.errors), self._first
        elapsed = now - self.started
        rate = (done - first[1]) / (now - first[0]) if first and done > first[1] and now > first[0] else None
        parts = [f"{done:,}/{'?' if total is None else f'{total:,}'} rows"]
        if total:
            parts[0] += f" ({100 * done / total:.1f}%)"
        parts.append("- rows/s" if rate is None else f"{rate:,.1f} rows/s")
        if total is not None and rate:
            parts.append(f"ETA {_clock(max(0, total - done) / rate)}")
        parts.append(f"elapsed {_clock(elapsed)}")
        parts.append(f"errors {sum(errors.values()):,}{_kinds(errors)}")
        return "tis-ray: " + " | ".join(parts)

    def _count(self, count_total: Callable[[], int | None]) -> None:
        try:
            total = count_total()
        except Exception:  # noqa: BLE001 - the total is a nicety; the job goes on without it
            return
        with self._lock:
            self.total = total

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write(final=False)

    def _write(self, final: bool) -> None:
        text = self.line()
        if self.terminal:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _kinds(errors: Counter) -> str:
    if not errors:
        return ""
    common = errors.most_common(SHOWN_KINDS)
    other = sum(errors.values()) - sum(c for _, c in common)
    named = [f"{kind} {count:,}" for kind, count in common] + ([f"other {other:,}"] if other else [])
    return f" ({', '.join(named)})"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
