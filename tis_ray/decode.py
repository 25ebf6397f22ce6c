"""Bytes to an RGB Pillow image, safely: real image formats only, bombs refused.

Runs in a worker thread, off the event loop. Pillow releases the GIL while it
decodes, so a few threads keep a core busy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import errors
from .errors import RowError

# Formats a caption dataset really holds. Anything else (EPS, PDF, PSD, ICNS, ...)
# is refused before Pillow runs its parser on it.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG also opens MPO

# `decode_image` enforces its own pixel limit with a row error, so Pillow's warning
# for the same condition is only noise (and catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# What Pillow raises for a corrupt or cut-short file, in the header as well as the data.
CORRUPT_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error)


def decode_image(data: bytes, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode the first frame, apply EXIF orientation and return it as RGB.

    With `min_side`, a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, done by
    libjpeg in the DCT domain, several times faster) as long as both sides stay at
    least `min_side`. Other formats are always decoded whole.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise RowError(errors.DECODE_ERROR, f"not a supported image ({_sniff(data)})") from None
    except Image.DecompressionBombError as exc:
        raise RowError(errors.DECOMPRESSION_BOMB, str(exc)) from None
    except CORRUPT_IMAGE_ERRORS as exc:
        # Image.open turns only some header errors into UnidentifiedImageError: a header
        # cut short ("Truncated File Read") or one a plugin rejects raises the others.
        raise RowError(errors.DECODE_ERROR, f"corrupt image header: {exc}") from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise RowError(
            errors.DECOMPRESSION_BOMB, f"{image.width}x{image.height} is over the limit of {max_pixels} pixels"
        )
    if image.width < 1 or image.height < 1:
        raise RowError(errors.DECODE_ERROR, "the image has no pixels")
    if min_side and image.format == "JPEG":
        image.draft(None, (min_side, min_side))
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # not a copy: one full-size buffer fewer per decode
        return to_rgb(image)
    except CORRUPT_IMAGE_ERRORS as exc:
        raise RowError(errors.DECODE_ERROR, f"corrupt or truncated {image.format} image: {exc}") from None


# Images at least this large give their memory back to the system once decoded (see below).
TRIM_ABOVE_PIXELS = 4_000_000


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


def release_decode_memory(pixels: int) -> None:
    """After a decode of `pixels` pixels, hand glibc's freed heap back to the system.

    glibc keeps the freed buffers of a large decode for reuse: 16 concurrent
    6300x6300 PNGs left a process 512 MiB above where it began, for good, and
    `malloc_trim(0)` brought it back to its start (docs/reliability.md, Security).
    Small images do not call it, so the common path pays nothing.
    """
    if _malloc_trim is not None and pixels >= TRIM_ABOVE_PIXELS:
        _malloc_trim(0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white.

    White matches transformers' own ``convert_to_rgb``; 16- and 32-bit integer
    images are scaled down, not clipped (Pillow's ``convert`` would clip them).
    """
    if image.mode == "RGB" and "transparency" not in image.info:  # an RGB PNG may have a tRNS colour key
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _scale_to_8bit(image)
    if image.mode == "La":  # premultiplied grey (a TIFF with associated alpha): Pillow converts it only to LA
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")  # no copy of a full-size buffer
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(array, 0, 255)
    else:
        top = 65535 if array.max(initial=0) <= 65535 else float(array.max())
        scaled = np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round()
    return Image.fromarray(scaled.astype(np.uint8), "L")


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if head.startswith(b"%!ps"):
        return "PostScript"
    if head.startswith(b"%pdf"):
        return "PDF"
    if not data:
        return "empty body"
    return f"{len(data)} bytes of unknown type"
