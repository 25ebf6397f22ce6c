"""The independent reference: transformers' own processors and models, float32.

No tis-ray code is used here: images are opened with plain Pillow, preprocessed by
the checkpoint's processor, and embedded by `get_image_features` / `get_text_features`
(CLIP, `reference_cosines`), or run through the documented
``model(**processor(text=..., images=..., ...))`` with ``AutoProcessor`` and ``AutoModel``
(every family, `library_outputs`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, CLIPModel, CLIPProcessor

from tis_ray.preprocess import PreprocessSpec, min_decode_side


@lru_cache(maxsize=4)
def _load(model_dir: str):
    return CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval(), CLIPProcessor.from_pretrained(model_dir)


@torch.inference_mode()
def reference_cosines(model_dir: str, images: list[Path | Image.Image], captions: list[str]) -> list[float]:
    model, processor = _load(model_dir)
    pil = [Image.open(i).convert("RGB") if isinstance(i, (str, Path)) else i.convert("RGB") for i in images]
    inputs = processor(text=captions, images=pil, return_tensors="pt", padding=True, truncation=True)
    image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    image = torch.nn.functional.normalize(image, dim=-1)
    text = torch.nn.functional.normalize(text, dim=-1)
    return (image * text).sum(-1).tolist()


def reference_similarities(model_dir: str, images, captions) -> list[float]:
    return [round((c + 1) / 2, 4) for c in reference_cosines(model_dir, images, captions)]


# How far tis-ray's default similarity may sit from this reference. Images decoded whole
# go through exactly the processor's preprocessing: only float rounding differs. A JPEG
# whose sides both reach twice the smallest side a reduced decode may leave
# (`preprocess.min_decode_side`: the model's 224) is decoded at 1/2 scale or less by
# default, and its documented bound is 2e-3 (docs/benchmarks.md).
EXACT_TOLERANCE = 1e-4
REDUCED_DECODE_TOLERANCE = 2e-3


def decoded_reduced(image: Path) -> bool:
    """Whether tis-ray's default decode of `image` is a reduced-size one (libjpeg's 1/2 is the
    first step below whole, taken once both sides are at least twice the allowed side)."""
    with Image.open(image) as opened:
        return opened.format == "JPEG" and min(opened.size) >= 2 * min_decode_side(PreprocessSpec())


def tolerance(image: Path) -> float:
    return REDUCED_DECODE_TOLERANCE if decoded_reduced(image) else EXACT_TOLERANCE


# What each family's model card passes to the processor for text.
DOCUMENTED_TEXT = {"clip": dict(padding=True), "siglip": dict(padding="max_length", max_length=64),
                   "siglip2": dict(padding="max_length", max_length=64)}


@lru_cache(maxsize=8)
def library(model_dir: str):
    """The checkpoint's model (float32, eval) and processor, as transformers loads them."""
    return AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoProcessor.from_pretrained(model_dir)


@torch.inference_mode()
def library_outputs(name: str, model_dir: str, images: list[Image.Image], captions: list[str]):
    """The documented computation for family `name`; pair i is (images[i], captions[i])."""
    model, processor = library(model_dir)
    inputs = processor(text=list(captions), images=images, truncation=True, return_tensors="pt",
                       **DOCUMENTED_TEXT[name])
    return inputs, model(**inputs)


def library_cosines(outputs) -> np.ndarray:
    return (outputs.image_embeds * outputs.text_embeds).sum(-1).numpy()


# Photos of tests/conftest.py's `photos` and a caption each: the family tests' pairs.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina")
LONG_CAPTION = "distant galaxies " * 50  # past every family's context (CLIP 77, SigLIP 64 tokens)
CAPTIONS = (
    "A portrait of an astronaut.",
    "a tabby cat, looking to the side!",
    "a cup of coffee on a saucer",
    "A ROCKET lifting off",
    LONG_CAPTION,  # truncated, as the processor truncates it
    "a fundus photograph of a retina",
)
# |ours - library|: the bound for similarity and probability.
SCORE_TOLERANCE = 1e-4


def photos_rgb(photos) -> list[Image.Image]:
    return [Image.open(photos[name]).convert("RGB") for name in PHOTOS]
