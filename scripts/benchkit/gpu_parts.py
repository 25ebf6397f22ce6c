"""The model alone, per dtype and batch size, with its time split into image encode,
tokenise and text encode, its peak GPU memory, and each dtype's drift from float32.

The scorer is tis-ray's own (`scorer.make_scorer`): `embed_images` (upload, normalise,
image tower) and `embed_texts` (tokenise, text tower) are timed as the pipeline calls them.
Tokenising is timed inside `embed_texts` by wrapping the scorer's tokenizer, so no part of
the scorer is copied here; text encode is the rest of `embed_texts`. On CUDA every timed
part is bracketed by `torch.cuda.synchronize()`, and each setting runs one untimed batch
first (allocation, kernel selection). Images are the workload's own, prepared before the
clock starts and cycled (see `model_only`); captions are the workload's, cycled.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import torch

from tis_ray.config import ModelConfig
from tis_ray.scorer import DualEncoderScorer, cosine_rows, make_scorer

from .model_only import prepared_images
from .timing import TimedTokenizer, Timers, synchronize


@dataclass(frozen=True)
class ModelTimes:
    """One (dtype, batch size) setting: seconds spent in each part over `pairs` pairs."""

    dtype: str
    batch_size: int
    pairs: int
    image_seconds: float
    tokenise_seconds: float
    text_seconds: float
    peak_gpu_mib: float | None  # torch.cuda.max_memory_allocated over the setting, weights included

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / (self.image_seconds + self.tokenise_seconds + self.text_seconds)


def set_tf32(enabled: bool) -> None:
    """TF32 off makes float32 the real float32 reference (Ampere and later use TF32 for float32
    convolutions by default, and for matmuls where a library turned it on)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_flags() -> dict[str, bool]:
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def measure_dtype(workload, model: str, device: str, dtype: str, batch_sizes: tuple[int, ...],
                  pairs: int) -> tuple[list[ModelTimes], dict[int, np.ndarray]]:
    """Every batch size for one dtype, one model load: the times, and each batch size's cosines
    (pair i: prepared image i mod N, caption i mod M), for the drift between dtypes."""
    scorer = make_scorer(ModelConfig(model=model, device=device, dtype=dtype))
    timers = Timers()
    scorer.tokenizer = TimedTokenizer(scorer.tokenizer, timers)
    images = prepared_images(workload, scorer.preprocess)
    captions = [workload.captions[i % len(workload.captions)] for i in range(pairs)]
    rows, cosines = [], {}
    try:
        for batch_size in batch_sizes:
            times, cosines[batch_size] = _measure(scorer, timers, images, captions, batch_size)
            rows.append(times)
    finally:
        del scorer
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows, cosines


def _measure(scorer: DualEncoderScorer, timers: Timers, images: np.ndarray, captions: list[str],
             batch_size: int) -> tuple[ModelTimes, np.ndarray]:
    """`timers` holds the seconds of the scorer's (wrapped) tokenizer under ``"tokenize"``."""
    cuda = scorer.device == "cuda"
    if cuda:
        synchronize(scorer.device)
        torch.cuda.reset_peak_memory_stats()
    warm_up = captions[:batch_size]
    scorer.embed_images(images[np.arange(len(warm_up)) % len(images)])
    scorer.embed_texts(warm_up)
    image_s = tokenise_s = text_s = 0.0
    cosines = []
    for start in range(0, len(captions), batch_size):
        batch = captions[start : start + batch_size]
        pixels = images[np.arange(start, start + len(batch)) % len(images)]
        synchronize(scorer.device)
        clock = time.perf_counter()
        image_embeddings = scorer.embed_images(pixels)
        synchronize(scorer.device)
        middle = time.perf_counter()
        tokenised_before = timers.seconds.get("tokenize", 0.0)
        text_embeddings, _ = scorer.embed_texts(batch)
        synchronize(scorer.device)
        text_and_tokenise = time.perf_counter() - middle
        tokenise = timers.seconds.get("tokenize", 0.0) - tokenised_before
        image_s += middle - clock
        tokenise_s += tokenise
        text_s += text_and_tokenise - tokenise
        cosines.append(cosine_rows(image_embeddings, text_embeddings))
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    times = ModelTimes(scorer.dtype_name, batch_size, len(captions), image_s, tokenise_s, text_s, peak)
    return times, np.concatenate(cosines)


def max_similarity_drift(cosine: np.ndarray, reference: np.ndarray) -> float:
    """max |delta similarity| over the pairs, similarity being (cos + 1) / 2 before rounding."""
    return float(np.max(np.abs(cosine.astype(np.float64) - reference.astype(np.float64))) / 2)
