"""What the scorer's path costs per batch beyond the model itself, on this machine.

For one batch of the benchmark workload (distinct real-photo JPEGs, captions of realistic,
varied length) it times, each round:

(i)  the bare model calls as transformers documents them: a pre-made pixel tensor to
     ``get_image_features``, pre-tokenised ids (the family's documented padding) to
     ``get_text_features``;
(ii) the path a batch job takes: ``ScoreStage.__call__`` on the Arrow batch the fetch stage
     hands on (built by ``FetchStage`` itself, outside the clock), which calls ``score()``.

``overhead_ms_per_batch`` is (ii) - (i). On a CPU the model takes seconds a batch, so that
difference carries the model's own run-to-run noise; the time *outside* the model calls
within (ii) is measured directly (the model, the tokenizer and the row hashing are wrapped in
timers for the call) and is the steadier figure. Building the fetched batch needs Ray's tensor
column type; without Ray only ``score()`` is timed (as Serve calls it), and the stage figures
are None.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tis_ray import scorer as scorer_module
from tis_ray.config import FetchConfig, ModelConfig
from tis_ray.prepare import bytes_to_pixels
from tis_ray.score_stage import ScoreStage
from tis_ray.scorer import DualEncoderScorer, normalize

from .timing import TimedTokenizer, Timers, synchronize
from .workload import WorkloadSpec, build

CACHE = Path.home() / ".cache" / "tis-ray-bench"
FETCH_ROWS = 32  # rows per fetch call (`PipelineConfig.fetch_batch_size`): a scorer batch is many of these
WARM_ROWS = 16  # one small call down each path first: allocation and lazy set-up are not steady state


def _counting_text_positions(call: Callable, counts: dict[str, int]) -> Callable:
    """`call` (a text-model call) that adds the positions it is given (rows x padded length) to
    ``counts["text_positions"]``: the text tower's work, whatever else runs on the machine."""
    def counted(**inputs):
        counts["text_positions"] = counts.get("text_positions", 0) + int(inputs["input_ids"].numel())
        return call(**inputs)
    return counted


@contextmanager
def _timed_internals(scorer: DualEncoderScorer, timers: Timers) -> Iterator[None]:
    """Time the scorer's model calls, tokenizer calls, pixel normalisation and blake2b row hashing
    while inside (each is looked up at call time: a method, an attribute, module globals)."""
    model, tokenizer, blake2b, pixel_normalize = scorer.model, scorer.tokenizer, hashlib.blake2b, normalize
    model.get_image_features = timers.wrap("image_model", model.get_image_features)
    model.get_text_features = timers.wrap("text_model", _counting_text_positions(model.get_text_features,
                                                                                 timers.counts))
    scorer.tokenizer = TimedTokenizer(tokenizer, timers)
    hashlib.blake2b = timers.wrap("hash", blake2b)  # type: ignore[misc]
    scorer_module.normalize = timers.wrap("normalize", pixel_normalize)  # type: ignore[assignment]
    try:
        yield
    finally:
        del model.get_image_features, model.get_text_features  # the class's methods again
        scorer.tokenizer, hashlib.blake2b = tokenizer, blake2b  # type: ignore[misc]
        scorer_module.normalize = pixel_normalize


def _image_bytes_and_captions(rows: int) -> tuple[list[bytes], list[str]]:
    workload = build(WorkloadSpec(pairs=rows), CACHE)
    return [(workload.image_dir / name).read_bytes() for name in workload.names], workload.captions


def _fetched_batch(images: list[bytes], captions: list[str], spec) -> pa.Table | None:
    """The batch as the fetch stage hands it on (pieces of `FETCH_ROWS`, joined as Ray Data joins
    blocks into a batch); None without Ray, whose tensor column type the stage's output uses."""
    try:
        from tis_ray.fetch_stage import FetchStage
    except ImportError:
        return None

    async def fetch_all() -> pa.Table:
        stage = FetchStage(image_column="image", caption_column="caption", base_dir="/", fetch=FetchConfig(),
                           specs=(spec,))
        pieces = [await stage.prepare(pa.table({"image": images[start:start + FETCH_ROWS],
                                                "caption": captions[start:start + FETCH_ROWS]}), "/")
                  for start in range(0, len(images), FETCH_ROWS)]
        await stage.preparer.close()
        return pa.concat_tables(pieces)

    return asyncio.run(fetch_all())


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def measure(model: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 1024,
            rounds: int = 3, with_stage: bool = True) -> dict:
    """Median ms per batch of `batch_size` pairs over `rounds`: the bare model calls, the stage and
    `score()`, their differences, and the split of the time outside the model. `with_stage=False` leaves
    the batch stage out (it needs Ray's tensor column), as a Ray-free caller must."""
    stage = ScoreStage.one_model("caption", ModelConfig(model=model, device=device, dtype=dtype), with_cosine=False)
    scorer = stage.scorers[0]
    images, captions = _image_bytes_and_captions(batch_size)
    batch = _fetched_batch(images, captions, scorer.preprocess) if with_stage else None
    if batch is not None:
        pixels = np.concatenate([chunk.to_numpy() for chunk in batch.column("__tis_pixels").chunks])
    else:
        pixels = np.stack([bytes_to_pixels(data, scorer.preprocess, FetchConfig().max_pixels) for data in images])

    with torch.inference_mode():
        pixel_values = normalize(torch.from_numpy(pixels).to(scorer.device), scorer.preprocess).to(scorer.dtype)
        tokens = scorer.tokenizer(captions, padding=scorer.text_padding, truncation=True,
                                  max_length=scorer.max_text_tokens, return_tensors="pt").to(scorer.device)
    text_inputs = {name: tokens[name] for name in ("input_ids", "attention_mask") if name in tokens}
    real_tokens = tokens["attention_mask"].sum().item() if "attention_mask" in tokens else None

    def bare(rows: slice) -> tuple[float, float]:
        with torch.inference_mode():
            synchronize(scorer.device)
            started = time.perf_counter()
            scorer.model.get_image_features(pixel_values=pixel_values[rows])
            synchronize(scorer.device)
            middle = time.perf_counter()
            scorer.model.get_text_features(**{name: value[rows] for name, value in text_inputs.items()})
            synchronize(scorer.device)
            return 1000 * (middle - started), 1000 * (time.perf_counter() - middle)

    timers = Timers()
    score_timers = Timers()

    def through_path(rows: int) -> float:
        timers.reset()
        score_timers.reset()
        real_score = scorer.score
        scorer.score = score_timers.wrap("score", real_score)  # type: ignore[method-assign]
        try:
            with _timed_internals(scorer, timers):
                started = time.perf_counter()
                if batch is not None:
                    stage(batch.slice(0, rows))
                else:
                    scorer.score(pixels[:rows], captions[:rows])
                synchronize(scorer.device)
                return 1000 * (time.perf_counter() - started)
        finally:
            del scorer.score  # the class's method again

    bare(slice(0, WARM_ROWS))
    through_path(WARM_ROWS)
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        image_ms, text_ms = bare(slice(None))
        path_ms = through_path(batch_size)
        model_ms = timers.ms("image_model") + timers.ms("text_model")
        for name, value in {
            "bare_image_ms": image_ms, "bare_text_ms": text_ms, "bare_ms": image_ms + text_ms,
            "path_ms": path_ms, "score_ms": score_timers.ms("score"),
            "image_model_in_path_ms": timers.ms("image_model"), "text_model_in_path_ms": timers.ms("text_model"),
            "outside_model_ms": path_ms - model_ms, "tokenize_ms": timers.ms("tokenize"),
            "hash_ms": timers.ms("hash"), "normalize_ms": timers.ms("normalize"),
            "rest_ms": path_ms - model_ms - sum(timers.ms(name) for name in ("tokenize", "hash", "normalize")),
        }.items():
            samples.setdefault(name, []).append(value)
    copy_started = time.perf_counter()
    pixels.copy()
    one_copy_ms = 1000 * (time.perf_counter() - copy_started)

    medians = {name: _median(values) for name, values in samples.items()}
    return {
        "model": model, "runtime": f"{scorer.device}/{scorer.dtype_name}", "batch_size": batch_size,
        "rounds": rounds, "path": "ScoreStage.__call__" if batch is not None else "score() (no Ray: no fetched batch)",
        **medians,
        "overhead_ms_per_batch": round(medians["path_ms"] - medians["bare_ms"], 1),
        "stage_overhead_ms": round(medians["path_ms"] - medians["bare_ms"], 1) if batch is not None else None,
        "score_overhead_ms": round(medians["score_ms"] - medians["bare_ms"], 1),
        "one_pixel_copy_ms": round(one_copy_ms, 1),
        "padded_text_tokens": int(tokens["input_ids"].numel()),  # (i)'s text positions: one documented call
        "text_positions_in_path": timers.counts["text_positions"],
        "real_text_tokens": real_tokens,
        "samples": {name: [round(v, 1) for v in values] for name, values in samples.items()},
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.device, args.dtype, args.batch_size, args.rounds), indent=1))
