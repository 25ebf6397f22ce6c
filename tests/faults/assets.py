"""The image files the fault cases serve, built with Pillow from the real photos.

Each `Asset` carries the file's bytes and, for a valid image, what a viewer sees
(`visible`), worked out without tis-ray: from the pixels the file was made from, or
by transformers' own `convert_to_rgb`. The reference scores that picture.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from transformers.image_transforms import convert_to_rgb

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "images"


@dataclass(frozen=True)
class Asset:
    data: bytes
    visible: Image.Image | None  # None: not a usable image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@cache
def photo(name: str = "chelsea") -> Asset:
    data = (PHOTOS / f"{name}.jpg").read_bytes()
    return Asset(data, Image.open(io.BytesIO(data)).convert("RGB"))


def _photo_rgb(name: str = "chelsea") -> Image.Image:
    return photo(name).visible


@cache
def truncated_jpeg() -> Asset:
    data = photo("astronaut").data
    return Asset(data[: len(data) // 2], None)


@cache
def png() -> Asset:
    image = _photo_rgb("coffee")
    return Asset(encode(image, "PNG"), image)


@cache
def cmyk_jpeg() -> Asset:
    data = encode(_photo_rgb("rocket").convert("CMYK"), "JPEG", quality=95)
    return Asset(data, Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow's own CMYK -> RGB


@cache
def png_16_bit() -> Asset:
    """Gray 16-bit made as 8-bit gray x 257, so the 8-bit picture is known exactly."""
    gray = _photo_rgb("chelsea").convert("L")
    wide = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
    image = Image.fromarray(wide)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    return Asset(data, gray.convert("RGB"))


@cache
def palette_png_with_transparency() -> Asset:
    image = _photo_rgb("astronaut").quantize(64)
    image.info["transparency"] = 0  # every pixel of palette entry 0 is see-through
    data = encode(image, "PNG", transparency=0)
    return Asset(data, Image.fromarray(convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)))


@cache
def exif_rotated_jpeg() -> Asset:
    """Stored turned 90 degrees counter-clockwise with orientation 6 ("rotate 90 clockwise to show")."""
    stored = _photo_rgb("coffee").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    as_stored = Image.open(io.BytesIO(data)).convert("RGB")
    return Asset(data, as_stored.transpose(Image.Transpose.ROTATE_270))


@cache
def animated_gif() -> Asset:
    first = _photo_rgb("chelsea")
    data = encode(first, "GIF", save_all=True, append_images=[ImageOps.invert(first)], duration=100, loop=0)
    return Asset(data, Image.open(io.BytesIO(data)).convert("RGB"))  # a GIF opens on frame 0


@cache
def webp() -> Asset:
    data = encode(_photo_rgb("rocket"), "WEBP", quality=90)
    return Asset(data, Image.open(io.BytesIO(data)).convert("RGB"))


@cache
def one_pixel() -> Asset:
    image = Image.new("RGB", (1, 1), (200, 30, 60))
    return Asset(encode(image, "PNG"), image)


@cache
def wide_strip() -> Asset:
    """10000 x 50: a strip of the photo, stretched."""
    image = _photo_rgb("astronaut").resize((10_000, 50))
    data = encode(image, "PNG", optimize=True)
    return Asset(data, Image.open(io.BytesIO(data)).convert("RGB"))


@cache
def decompression_bomb() -> Asset:
    """A valid 1-bit PNG of 12000 x 12000 (144 M pixels) in a few kB."""
    side = 12_000
    raw = b"".join(b"\0" + bytes(side // 8) for _ in range(side))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return Asset(data, None)


HTML = Asset(b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>", None)
EPS = Asset(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n",
            None)
