"""The online API's request and response shapes (JSON, versioned under /v1).

Pydantic validates shape and types, so a malformed request is a 4xx that names the
field; per-item problems (a URL that cannot be fetched, bytes that are not an
image) are per-item errors in a 200 response.
"""

from __future__ import annotations

import base64
import functools
from typing import TYPE_CHECKING, Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    model_validator,
)

from . import errors
from .config import FetchConfig
from .errors import RowError

if TYPE_CHECKING:
    from fastapi import FastAPI

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


# What a caller is told about a failed pair: its kind and one of these fixed details, filled
# only with the service's own limits. A row error's own detail can hold what the fetch saw
# behind the service (an upstream reason phrase, a banner, an internal address); it is logged.
_PUBLIC_DETAILS = {
    errors.INVALID_URL: "the URL, or a redirect's Location, is not a valid http(s) URL",
    errors.UNSUPPORTED_SCHEME: "only http and https URLs are fetched",
    errors.BLOCKED_ADDRESS: "the service does not fetch from this host or port "
                            "(internal addresses, ports other than the allowed ones, hosts off the allowlist)",
    errors.TIMEOUT: "no complete image within {cfg.timeout_s:g}s",
    errors.CONNECTION_ERROR: "the connection failed, or the reply was not valid HTTP",
    errors.TOO_MANY_REDIRECTS: "more than {cfg.max_redirects} redirects",
    errors.TOO_LARGE: "the image is over {cfg.max_bytes} bytes",
    errors.DECODE_ERROR: "not a supported image (JPEG, PNG, GIF, WebP, BMP, TIFF), or a corrupt one",
    errors.DECOMPRESSION_BOMB: "the image is over the limit of {cfg.max_pixels} pixels",
    errors.EMPTY_CAPTION: "the caption is missing or only white space",
    errors.MISSING_IMAGE: "the image is missing",
    errors.OPTED_OUT: "the image's host opts out of AI use (X-Robots-Tag)",
    errors.INTERNAL_ERROR: "an internal error; it is in the service's log",
}


def public_error_text(error: RowError, cfg: FetchConfig) -> str:
    """``"<kind>: <detail>"`` with a detail that says nothing about what is behind the service."""
    if error.kind.startswith("http_"):
        return f"{error.kind}: the image host answered HTTP {error.kind[5:]}"
    detail = _PUBLIC_DETAILS.get(error.kind, _PUBLIC_DETAILS[errors.INTERNAL_ERROR])
    return f"{error.kind}: {detail.format(cfg=cfg)}"


class ModelInfo(BaseModel):
    model: str
    device: str
    dtype: str
    max_pairs: int
    max_body_bytes: int
    max_caption_chars: int
    max_image_bytes: int
    max_pixels: int
    max_batch_size: int
    batch_wait_ms: float


# /v1/score in the OpenAPI schema: the route reads its body itself (see `request_checks`), so
# FastAPI sees no body model; this names `ScoreRequest` and the refusals `request_checks` makes.
SCORE_ROUTE_DOCS = {
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}}},
    "responses": {"401": {"description": "API key missing or wrong"}, "413": {"description": "body too large"},
                  "415": {"description": "the body is not sent as application/json"},
                  "422": {"description": "malformed request; `detail` names the field"}},
}


def publish_request_schema(app: FastAPI, max_pairs: int) -> None:
    """Make ``app.openapi()`` include `ScoreRequest`, with `max_pairs` as its ``maxItems``.

    Called again with each replica's own limit: the cached schema is dropped so that the
    next ``/openapi.json`` is built with it."""
    app.openapi_schema = None
    app.openapi = functools.partial(_openapi_with_request_schema, app, max_pairs)


def _openapi_with_request_schema(app: FastAPI, max_pairs: int) -> dict:
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    request_schema = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request_schema["properties"]["pairs"]["maxItems"] = max_pairs
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schema.pop("$defs", {}))
    components["ScoreRequest"] = request_schema
    app.openapi_schema = schema
    return schema
