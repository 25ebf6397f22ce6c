"""Image preprocessing of every supported family, split where the bytes are smallest.

The fetch actors resize (and crop, where the processor crops) to 8-bit pixels
(``resize_and_crop``); the scorer rescales and normalises on its own device
(``scorer.normalize``), so this module, and the fetch actors, need no torch. That ships
a quarter of the bytes of float32 between actors and is exactly what the checkpoint's
own image processor computes with transformers' PIL backend, read from its config:

- CLIP (``image_processing_clip``): shortest side to ``shortest_edge`` with
  ``int(size * long / short)`` for the long side, centre crop with a floor offset, zero
  padding where the image is smaller than the crop; bicubic.
- SigLIP and fixed-resolution SigLIP 2 (``image_processing_siglip``): straight to
  ``size`` (height x width) without keeping the aspect ratio, no crop; bicubic for
  SigLIP, bilinear for SigLIP 2 (each checkpoint's ``resample``); mean = std = 0.5.

Both resize the uint8 RGB image with PIL before rescaling, so the split loses nothing.
Settings this module does not implement are refused, not ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PreprocessSpec:
    shortest_edge: int | None = 224  # resize so the short side is this long ...
    resize_to: tuple[int, int] | None = None  # ... or to this (height, width)
    crop_size: tuple[int, int] | None = (224, 224)  # (height, width); None = no crop
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_image_processor(cls, processor) -> PreprocessSpec:
        """Read the settings of a loaded transformers image processor."""
        size = dict(processor.size) if getattr(processor, "do_resize", True) else {}
        crop = dict(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
        resize_to = (size["height"], size["width"]) if size.get("height") and size.get("width") else None
        shortest = size.get("shortest_edge") if resize_to is None else None
        # Limits this module does not implement would be silently ignored: refuse them instead.
        unsupported = resize_to is None and any(size.get(k) for k in ("longest_edge", "max_height", "max_width"))
        if unsupported or (resize_to is None and shortest is None and crop is None):
            raise ValueError(f"unsupported image processor size settings: {processor.size}")
        if getattr(processor, "do_pad", False):
            raise ValueError(f"unsupported image processor padding: pad_size {processor.pad_size}")
        # do_normalize=False is the identity: mean 0, std 1.
        normalizes = getattr(processor, "do_normalize", True)
        return cls(
            shortest_edge=shortest,
            resize_to=resize_to,
            crop_size=(crop["height"], crop["width"]) if crop else None,
            resample=int(processor.resample),
            rescale_factor=float(processor.rescale_factor) if processor.do_rescale else 1.0,
            image_mean=_per_channel(processor.image_mean) if normalizes else (0.0, 0.0, 0.0),
            image_std=_per_channel(processor.image_std) if normalizes else (1.0, 1.0, 1.0),
        )

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the arrays `resize_and_crop` returns."""
        if self.crop_size:
            return self.crop_size
        if self.resize_to:
            return self.resize_to
        raise ValueError("a shortest-edge resize without a crop has no fixed output size")


# A reduced-size JPEG decode keeps at least this many times the model's input side. Once
# was enough: against 2x, decode + resize 5.1 -> 3.0 ms of CPU per image on the benchmark
# mix, max |delta similarity| against the whole decode 3.2e-5 -> 1.4e-4 (docs/benchmarks.md).
DRAFT_OVERSAMPLE = 1


def min_decode_side(spec: PreprocessSpec, oversample: int = DRAFT_OVERSAMPLE) -> int | None:
    """The smallest side a reduced-size decode may leave; None where no resize follows."""
    if spec.resize_to:
        return max(spec.resize_to) * oversample
    if spec.shortest_edge:
        return spec.shortest_edge * oversample
    return None  # a crop at the source's own resolution: decoding smaller would change it


def resize_and_crop(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """An RGB image to a (height, width, 3) uint8 array, ready for `scorer.normalize`."""
    height, width = _resized_size(image.height, image.width, spec)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), resample=spec.resample)
    pixels = np.asarray(image, dtype=np.uint8)
    if spec.crop_size:
        pixels = _center_crop(pixels, spec.crop_size)
    return pixels


def _resized_size(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    if spec.resize_to:
        return spec.resize_to
    if spec.shortest_edge is None:
        return height, width
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.shortest_edge, int(spec.shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(pixels: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    height, width = pixels.shape[:2]
    crop_h, crop_w = crop
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + crop_h, left : left + crop_w]
    # Smaller than the crop: pad with zeros around the centre, as transformers does.
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w, pixels.shape[2]), dtype=pixels.dtype)
    pad_top, pad_left = ceil((new_h - height) / 2), ceil((new_w - width) / 2)
    padded[pad_top : pad_top + height, pad_left : pad_left + width] = pixels
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top) : max(0, top) + crop_h, max(0, left) : max(0, left) + crop_w]


def _per_channel(values) -> tuple[float, float, float]:
    """An image processor's mean or std as three floats (R, G, B); transformers also allows one for all."""
    red, green, blue = (values,) * 3 if isinstance(values, int | float) else values
    return float(red), float(green), float(blue)
