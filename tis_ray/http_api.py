"""The online API's request and response shapes (JSON, versioned under /v1).

Pydantic validates shape and types, so a malformed request is a 4xx that names the
field; per-item problems (a URL that cannot be fetched, bytes that are not an
image) are per-item errors in a 200 response. ``POST /v1/score`` takes pairs,
``POST /v1/rank`` one image and captions or one caption and images; both may name
the app's models (``GET /v1/models``).
"""

from __future__ import annotations

import base64
import functools
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    model_validator,
)

from . import errors
from .config import FetchConfig
from .errors import RowError

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_CAPTION_CHARS = 10_000


BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# What a Serve app calls each of its models (its config's `models`, a request's `models` or
# `model`): short, and safe to echo back in an error or to use in a column name.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN, description="a name that GET /v1/models lists")]
Caption = Annotated[str, Field(max_length=MAX_CAPTION_CHARS)]


class UrlImage(BaseModel):
    """An image by http(s) URL."""

    model_config = ConfigDict(extra="forbid")

    image_url: str = Field(..., max_length=8192, description="http(s) URL of the image")

    @property
    def image_bytes(self) -> None:
        return None


class Base64Image(BaseModel):
    """An image sent inline (its file's bytes, standard padded base64)."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(..., pattern=BASE64_PATTERN,
                              description="the image file's bytes, base64 (RFC 4648, padded)")
    _image_bytes: bytes = PrivateAttr(b"")  # decoded once, by validation

    @model_validator(mode="after")
    def _decode(self) -> Base64Image:
        self._image_bytes = base64.b64decode(self.image_base64, validate=True)
        return self

    @property
    def image_bytes(self) -> bytes:
        return self._image_bytes


class UrlPair(UrlImage):
    """An image by http(s) URL, and its caption."""

    caption: Caption


class Base64Pair(Base64Image):
    """An image sent inline (its file's bytes, standard padded base64), and its caption."""

    caption: Caption


def _image_kind(value) -> str:
    return "base64" if isinstance(value, dict) and "image_base64" in value else "url"


Image = Annotated[
    Annotated[UrlImage, Tag("url")] | Annotated[Base64Image, Tag("base64")], Discriminator(_image_kind)
]
Pair = Annotated[
    Annotated[UrlPair, Tag("url")] | Annotated[Base64Pair, Tag("base64")], Discriminator(_image_kind)
]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: list[Pair] = Field(..., min_length=1)
    models: list[ModelName] | None = Field(
        None, min_length=1,
        description="the models to score with, each named once; each result then holds `scores` by model "
                    "name. Without it the default model scores, and each result holds its scores itself.")


class RankCaptionsRequest(BaseModel):
    """One image, and the captions to rank by how well each describes it."""

    model_config = ConfigDict(extra="forbid")
    tag: ClassVar[str] = "rank_captions"  # where pydantic's 422s put this form's fields
    items_field: ClassVar[str] = "captions"  # the list that is ranked

    image: Image
    captions: list[Caption] = Field(..., min_length=1)
    model: ModelName | None = Field(None, description="the model to rank with; the default model if unset")


class RankImagesRequest(BaseModel):
    """One caption, and the images to rank by how well it describes each."""

    model_config = ConfigDict(extra="forbid")
    tag: ClassVar[str] = "rank_images"
    items_field: ClassVar[str] = "images"

    caption: Caption
    images: list[Image] = Field(..., min_length=1)
    model: ModelName | None = Field(None, description="the model to rank with; the default model if unset")


def _rank_kind(value) -> str | None:
    """Which form a rank body is, by whether it brings one image or one caption; None (a 422
    at the body, saying what to send) where it brings both or neither."""
    if not isinstance(value, dict) or ("image" in value) == ("caption" in value):
        return None
    return RankCaptionsRequest.tag if "image" in value else RankImagesRequest.tag


RankRequest = Annotated[
    Annotated[RankCaptionsRequest, Tag(RankCaptionsRequest.tag)]
    | Annotated[RankImagesRequest, Tag(RankImagesRequest.tag)],
    Discriminator(_rank_kind, custom_error_type="rank_form",
                  custom_error_message="send `image` with `captions` (one image, captions to rank) or `caption` "
                                       "with `images` (one caption, images to rank): one of `image` and `caption`"),
]
RANK_REQUEST = TypeAdapter(RankRequest)


class ModelScore(BaseModel):
    similarity: float = Field(..., description="round((cosine + 1) / 2, 4)")
    cosine: float
    probability: float | None = Field(
        None, description="the match probability of the model's trained pair head (SigLIP: sigmoid(logit_scale * "
                          "cosine + logit_bias)); null for a family without one (CLIP)")


class PairResult(BaseModel):
    similarity: float | None = Field(None, description="round((cosine + 1) / 2, 4); null when the pair failed")
    cosine: float | None = None
    probability: float | None = Field(None, description="as in `ModelScore`; null for CLIP and when the pair failed")
    error: str | None = Field(None, description="'<kind>: <detail>' when the pair failed")


class ScoreResponse(BaseModel):
    """The answer to a request without `models`: the default model's scores, in request order."""

    model: str
    results: list[PairResult]


class ModelsPairResult(BaseModel):
    scores: dict[str, ModelScore] | None = Field(None, description="by model name; null when the pair failed")
    error: str | None = Field(None, description="'<kind>: <detail>' when the pair failed")


class ModelsScoreResponse(BaseModel):
    """The answer to a request with `models`: each pair's scores by each named model, in request order."""

    models: dict[str, str] = Field(..., description="each model name asked for, and its checkpoint")
    results: list[ModelsPairResult]


class RankedItem(BaseModel):
    index: int = Field(..., description="the item's position in the request's `captions` or `images`")
    similarity: float | None = Field(None, description="round((cosine + 1) / 2, 4); null when the item failed")
    cosine: float | None = None
    probability: float | None = Field(None, description="as in `ModelScore`; null for CLIP and when the item failed")
    error: str | None = Field(None, description="'<kind>: <detail>' when the item failed")


class RankResponse(BaseModel):
    name: str = Field(..., description="the model that ranked")
    model: str = Field(..., description="its checkpoint")
    results: list[RankedItem] = Field(
        ..., description="the scored items, most similar first (equal ones in request order), then the failed ones")


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


class ServedModelInfo(BaseModel):
    name: str = Field(..., description="what a request's `models` or `model` calls it")
    model: str = Field(..., description="the checkpoint: a hub id or a folder")
    family: str = Field(..., description="clip or siglip (SigLIP 2 fixed-resolution checkpoints included)")
    device: str
    dtype: str
    context_length: int = Field(..., description="text tokens a caption is cut to")
    image_size: tuple[int, int] = Field(..., description="(height, width) of the pixels the model sees")


class ModelsResponse(BaseModel):
    default: str = Field(..., description="the model that scores a request naming none")
    models: list[ServedModelInfo]


def _route_docs(request_schema: str) -> dict:
    """A route in the OpenAPI schema whose body it reads itself (see `request_checks`), so that
    FastAPI sees no body model: this names the request schema and the refusals `request_checks` makes."""
    body_schema = {"$ref": f"#/components/schemas/{request_schema}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        "responses": {"401": {"description": "API key missing or wrong"}, "413": {"description": "body too large"},
                      "415": {"description": "the body is not sent as application/json"},
                      "422": {"description": "malformed request; `detail` names the field"}},
    }


SCORE_ROUTE_DOCS = _route_docs("ScoreRequest")
RANK_ROUTE_DOCS = _route_docs("RankRequest")

# The published request schemas, and in each the lists `max_pairs` caps and the fields that
# name models (each allowed only the app's own names, each once).
_REQUEST_SCHEMAS: dict[str, TypeAdapter] = {"ScoreRequest": TypeAdapter(ScoreRequest), "RankRequest": RANK_REQUEST}
_CAPPED_LISTS = {"ScoreRequest": "pairs", RankCaptionsRequest.__name__: "captions",
                 RankImagesRequest.__name__: "images"}
_MODEL_NAME_FIELDS = {"ScoreRequest": "models", RankCaptionsRequest.__name__: "model",
                      RankImagesRequest.__name__: "model"}


def publish_request_schema(app: FastAPI, max_pairs: int, model_names: tuple[str, ...] = ()) -> None:
    """Make ``app.openapi()`` include `ScoreRequest` and `RankRequest`, with `max_pairs` as the
    ``maxItems`` of their lists and, where given, `model_names` as the names a request may use.

    Called again with each replica's own limit and models: the cached schema is dropped so
    that the next ``/openapi.json`` is built with them."""
    app.openapi_schema = None
    app.openapi = functools.partial(  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
        _openapi_with_request_schema, app, max_pairs, model_names)


def _openapi_with_request_schema(app: FastAPI, max_pairs: int, model_names: tuple[str, ...]) -> dict:
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, adapter in _REQUEST_SCHEMAS.items():
        request_schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        components.update(request_schema.pop("$defs", {}))
        components[name] = request_schema
    for name, field in _CAPPED_LISTS.items():
        components[name]["properties"][field]["maxItems"] = max_pairs
    for name, field in _MODEL_NAME_FIELDS.items():
        # The field is optional: its schema is anyOf [the names, null].
        (given,) = [branch for branch in components[name]["properties"][field]["anyOf"] if branch["type"] != "null"]
        if given["type"] == "array":
            given["uniqueItems"] = True
            given = given["items"]
        if model_names:
            given["enum"] = list(model_names)
    app.openapi_schema = schema
    return schema
