"""What each speed lever costs in accuracy, against float32 with every image decoded whole.

Scores the same pairs with the plain `ClipScorer` (no Ray: this is about numbers,
not speed) under each variant and reports max and mean |delta similarity|, where
similarity is (cos + 1) / 2 before rounding. Two sets: the real photos in
examples/images at their own sizes, and the first pairs of the workload.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from tis_ray.config import ModelConfig
from tis_ray.loading import resolve_device, resolve_dtype
from tis_ray.prepare import bytes_to_pixels
from tis_ray.scorer import ClipScorer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def real_photo_pairs() -> tuple[list[bytes], list[str]]:
    """Every example photo with every distinct caption of the example CSV."""
    with (EXAMPLES / "pairs.csv").open(encoding="utf-8") as f:
        captions = sorted({row["caption"] for row in csv.DictReader(f) if row["caption"].strip()})
    photos = sorted(p for p in (EXAMPLES / "images").glob("*.jpg") if p.name != "not_an_image.jpg")
    pairs = [(photo.read_bytes(), caption) for photo in photos for caption in captions]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def variants(device: str) -> list[tuple[str, str, bool]]:
    """(label, dtype, reduced_decode) for each lever and for both together."""
    fast = resolve_dtype("auto", device)
    fast_name = "bfloat16" if fast == torch.float32 else str(fast).removeprefix("torch.")
    return [
        ("reduced-size decode (float32)", "float32", True),
        (f"{fast_name} (whole decode)", fast_name, False),
        (f"{fast_name} + reduced-size decode", fast_name, True),
    ]


def run(workload, model: str, workload_pairs: int) -> list[dict]:
    device = resolve_device("auto")
    sets = {
        "real photos": real_photo_pairs(),
        "workload": ([(workload.image_dir / n).read_bytes() for n in workload.names[:workload_pairs]],
                     workload.captions[:workload_pairs]),
    }
    scorers = {dtype: ClipScorer(ModelConfig(model=model, dtype=dtype)) for dtype in
               {"float32", *(v[1] for v in variants(device))}}
    spec = scorers["float32"].preprocess

    def similarity(images: list[bytes], captions: list[str], dtype: str, reduced: bool) -> np.ndarray:
        pixels = np.stack([bytes_to_pixels(data, spec, 10**9, reduced) for data in images])
        cosine = np.concatenate([
            scorers[dtype].score(pixels[i : i + 64], captions[i : i + 64]).cosine for i in range(0, len(captions), 64)
        ])
        return (cosine.astype(np.float64) + 1) / 2

    rows = []
    for set_name, (images, captions) in sets.items():
        reference = similarity(images, captions, "float32", False)
        for label, dtype, reduced in variants(device):
            delta = np.abs(similarity(images, captions, dtype, reduced) - reference)
            rows.append({"set": set_name, "pairs": len(captions), "lever": label,
                         "max_abs_delta": float(delta.max()), "mean_abs_delta": float(delta.mean())})
    return rows
