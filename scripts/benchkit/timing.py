"""Timing helpers the model measurements share (`gpu_parts`, `scorer_overhead`): seconds spent in
wrapped callables by name, the scorer's tokenizer timed in place, and a clock fence for CUDA."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class Timers:
    """Seconds spent inside each wrapped callable, by name, since the last `reset`; and counts a
    wrapper may keep beside them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()

    def wrap(self, name: str, call: Callable) -> Callable:
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed

    def ms(self, name: str) -> float:
        return 1000 * self.seconds.get(name, 0.0)


class TimedTokenizer:
    """A scorer's tokenizer with its calls timed under ``"tokenize"``; everything else passes
    through, so the scorer's own code runs unchanged (nothing of it is copied to be timed)."""

    def __init__(self, tokenizer, timers: Timers):
        self._tokenizer = tokenizer
        self._call = timers.wrap("tokenize", tokenizer.__call__)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work (CUDA runs
    kernels asynchronously; a CPU has nothing queued)."""
    if device == "cuda":
        torch.cuda.synchronize()
