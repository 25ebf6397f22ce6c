"""How many images per second the CPUs turn into model-ready pixels: tis-ray's own decode path
(`prepare.bytes_to_pixels_per_spec`: decode, reduced-size JPEG decode as shipped, resize, crop)
on every core at once, one worker process per core.

No network and no Ray: the JPEGs are read from disk (page cache) in the workers, so this is
the feed rate a GPU gets at best from this machine's CPUs, to set against the model's rate.
Workers are spawned (not forked from a process that may hold a CUDA context) and all of them
have started and decoded one image before the clock starts.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

from tis_ray.config import FetchConfig
from tis_ray.prepare import bytes_to_pixels_per_spec
from tis_ray.preprocess import PreprocessSpec

STARTUP_TIMEOUT_S = 300  # every worker imports numpy, Pillow and tis_ray first


@dataclass(frozen=True)
class DecodeRate:
    images: int
    workers: int
    seconds: float
    reduced_decode: bool

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def measure(paths: list[Path], spec: PreprocessSpec, workers: int) -> DecodeRate:
    """Decode every file in `paths` once on `workers` processes, with the shipped limits and reduced
    decode (`FetchConfig`'s defaults); time from the first to the last."""
    fetch = FetchConfig()
    context = multiprocessing.get_context("spawn")
    started = context.Barrier(workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                             initargs=((spec,), fetch.max_pixels, fetch.reduced_decode, started)) as pool:
        # One task per worker, each waiting at the barrier until all have one: every worker is up.
        list(pool.map(_warm_up, [str(p) for p in paths[:1]] * workers))
        clock = time.perf_counter()
        decoded = sum(pool.map(_decode, [str(p) for p in paths], chunksize=4))
        seconds = time.perf_counter() - clock
    return DecodeRate(images=decoded, workers=workers, seconds=seconds, reduced_decode=fetch.reduced_decode)


# The worker's settings, set once by `_start` in each worker process.
_specs: tuple[PreprocessSpec, ...] = ()
_max_pixels = 0
_reduced_decode = True
_started: Barrier | None = None


def _start(specs: tuple[PreprocessSpec, ...], max_pixels: int, reduced_decode: bool, started: Barrier) -> None:
    global _specs, _max_pixels, _reduced_decode, _started
    _specs, _max_pixels, _reduced_decode, _started = specs, max_pixels, reduced_decode, started


def _warm_up(path: str) -> int:
    decoded = _decode(path)
    assert _started is not None
    _started.wait(STARTUP_TIMEOUT_S)
    return decoded


def _decode(path: str) -> int:
    bytes_to_pixels_per_spec(Path(path).read_bytes(), _specs, _max_pixels, _reduced_decode)
    return 1
