"""Peak memory of a process tree (a driver and the Ray processes it starts), from /proc.

PSS is summed, not RSS: Ray workers map the same shared object store and libraries,
and PSS splits each shared page between the processes that map it, so the sum is
what the job really holds. Linux only; elsewhere the figures are reported as None.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass
class MemoryPeaks:
    driver_mb: float | None = None
    ray_mb: float | None = None  # every descendant: GCS, raylet, workers, actors
    total_mb: float | None = None


class TreeMemorySampler:
    """Samples the tree under `root_pid` every `interval_s` on a thread until `stop`."""

    def __init__(self, root_pid: int, interval_s: float = 0.5):
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        if PROC.exists():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        driver = _pss_mb(self.root_pid)
        if driver is None:
            return
        ray = sum(_pss_mb(pid) or 0.0 for pid in descendants(self.root_pid))
        peaks = self.peaks
        peaks.driver_mb = max(peaks.driver_mb or 0.0, driver)
        peaks.ray_mb = max(peaks.ray_mb or 0.0, ray)
        peaks.total_mb = max(peaks.total_mb or 0.0, driver + ray)


def descendants(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _pss_mb(pid: int) -> float | None:
    try:
        for line in Path(PROC, str(pid), "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
