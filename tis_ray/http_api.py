"""The online API's request and response shapes (JSON, versioned under /v1).

Pydantic validates shape and types, so a malformed request is a 4xx that names the
field; per-item problems (a URL that cannot be fetched, bytes that are not an
image) are per-item errors in a 200 response.
"""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator

MAX_CAPTION_CHARS = 10_000


BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class UrlPair(BaseModel):
    """An image by http(s) URL, and its caption."""

    model_config = ConfigDict(extra="forbid")

    image_url: str = Field(..., max_length=8192, description="http(s) URL of the image")
    caption: str = Field(..., max_length=MAX_CAPTION_CHARS)

    @property
    def image_bytes(self) -> None:
        return None


class Base64Pair(BaseModel):
    """An image sent inline (its file's bytes, standard padded base64), and its caption."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(..., pattern=BASE64_PATTERN, description="the image file's bytes, base64 (RFC 4648, padded)")
    caption: str = Field(..., max_length=MAX_CAPTION_CHARS)
    _image_bytes: bytes = PrivateAttr(b"")  # decoded once, by validation

    @model_validator(mode="after")
    def _decode(self) -> Base64Pair:
        self._image_bytes = base64.b64decode(self.image_base64, validate=True)
        return self

    @property
    def image_bytes(self) -> bytes:
        return self._image_bytes


def _pair_kind(value) -> str:
    return "base64" if isinstance(value, dict) and "image_base64" in value else "url"


Pair = Annotated[
    Annotated[UrlPair, Tag("url")] | Annotated[Base64Pair, Tag("base64")], Discriminator(_pair_kind)
]


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
