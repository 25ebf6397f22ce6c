"""The family's own library, used as documented: the reference that batch and fidelity tests
compare tis-ray's numbers with (see tests/test_families.py's docstring for the computation).

Nothing here re-derives what the code under test computes: similarities come from the
model's own ``image_embeds`` and ``text_embeds``, probabilities from ``sigmoid(logits_per_image)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

# What each family's model card passes to the processor for text.
DOCUMENTED_TEXT = {"clip": dict(padding=True), "siglip": dict(padding="max_length", max_length=64),
                   "siglip2": dict(padding="max_length", max_length=64)}
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
# |ours - library|: the bound for similarity and probability, and the float32
# rounding a cosine or an embedding may carry (the same bound test_scorer.py holds CLIP to).
SCORE_TOLERANCE = 1e-4
COSINE_TOLERANCE = 1e-5
PIXEL_TOLERANCE = 1e-5  # tests/test_preprocess.py's bound against the processor's pixel_values
# Rounding to 4 decimals may leave two equal scores a float's width over 1e-4 apart.
ROUNDING_SLACK = 1e-9


@lru_cache(maxsize=8)
def library(model_dir: str):
    return AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoProcessor.from_pretrained(model_dir)


@torch.inference_mode()
def library_outputs(name: str, model_dir: str, images: list[Image.Image], captions: list[str]):
    """The documented computation; pair i is (images[i], captions[i])."""
    model, processor = library(model_dir)
    inputs = processor(text=list(captions), images=images, truncation=True, return_tensors="pt",
                       **DOCUMENTED_TEXT[name])
    return inputs, model(**inputs)


def library_cosines(outputs) -> np.ndarray:
    return (outputs.image_embeds * outputs.text_embeds).sum(-1).numpy()


def photos_rgb(photos) -> list[Image.Image]:
    return [Image.open(photos[name]).convert("RGB") for name in PHOTOS]
