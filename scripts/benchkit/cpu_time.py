"""CPU seconds used by a process and everything it starts (the Ray processes of a job), from /proc.

Sampled on a thread, because a job's actors exit before it returns: each process counts
with the last CPU time it was seen with, so one that exits between two samples loses at
most `interval_s` of its CPU. Linux only; elsewhere the figure is None.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .memory import PROC, descendants

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class TreeCpu:
    """``with TreeCpu() as cpu: ...`` then ``cpu.seconds``: the tree's CPU time within the block;
    ``cpu.since(t)``: the part of it used after ``time.monotonic()`` was `t` (to the nearest sample)."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 0.2):
        self.root_pid = root_pid or os.getpid()
        self.interval_s = interval_s
        self.seconds: float | None = None
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._series: list[tuple[float, float]] = []  # (time.monotonic(), CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeCpu:
        if PROC.exists():
            self._start = self._sample()
            self._last = dict(self._start)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        self._record()
        self.seconds = self._series[-1][1]

    def since(self, moment: float) -> float | None:
        """CPU seconds used from the first sample at or after `moment` to the end."""
        if self.seconds is None:
            return None
        before = max((used for at, used in self._series if at <= moment), default=0.0)
        return self.seconds - before

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self) -> None:
        self._last.update(self._sample())
        # A process started within the block counts from zero.
        used = sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())
        self._series.append((time.monotonic(), used))

    def _sample(self) -> dict[int, float]:
        found = {}
        for pid in [self.root_pid, *descendants(self.root_pid)]:
            if (cpu := _cpu_seconds(pid)) is not None:
                found[pid] = cpu
        return found


def _cpu_seconds(pid: int) -> float | None:
    """User + system time of `pid` (its threads included)."""
    try:
        fields = Path(PROC, str(pid), "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat(5)
