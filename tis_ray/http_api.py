"""The online API's request and response shapes (JSON, versioned under /v1).

Pydantic validates shape and types, so a malformed request is a 4xx that names the
field; per-item problems (a URL that cannot be fetched, bytes that are not an
image) are per-item errors in a 200 response.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

MAX_CAPTION_CHARS = 10_000


class Pair(BaseModel):
    """One image (by URL or inline base64) and its caption."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, max_length=8192, description="http(s) URL of the image")
    image_base64: str | None = Field(None, description="the image file's bytes, base64-encoded")
    caption: str = Field(..., max_length=MAX_CAPTION_CHARS)

    _image_bytes: bytes | None = PrivateAttr(None)  # decoded once, by validation

    @model_validator(mode="after")
    def _one_image(self) -> Pair:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of image_url or image_base64")
        if self.image_base64 is not None:
            self._image_bytes = decode_base64(self.image_base64)
        return self

    @property
    def image_bytes(self) -> bytes | None:
        return self._image_bytes


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: list[Pair] = Field(..., min_length=1)


class PairResult(BaseModel):
    similarity: float | None = Field(None, description="round((cosine + 1) / 2, 4); null when the pair failed")
    cosine: float | None = None
    error: str | None = Field(None, description="'<kind>: <detail>' when the pair failed")


class ScoreResponse(BaseModel):
    model: str
    results: list[PairResult]


class ModelInfo(BaseModel):
    model: str
    device: str
    dtype: str
    max_pairs: int
    max_body_bytes: int
    max_caption_chars: int
    max_image_bytes: int
    max_batch_size: int
    batch_wait_ms: float


def decode_base64(value: str) -> bytes:
    """Strict base64 (standard alphabet, padding optional); ValueError if it is not."""
    text = "".join(value.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image_base64 is not valid base64") from None
