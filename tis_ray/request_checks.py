"""Whether a ``POST /v1/score`` is let in: API key, ``Content-Type``, body size, then shape.

Each check raises `errors.RequestRejected` (a 4xx and a FastAPI-style ``detail`` whose
``loc`` names the header or field) and needs no Ray, so the service's handler is a call
and a ``except``, and every check is tested with a plain starlette `Request`
(tests/test_request_checks.py). The body is read by `read_body`, not by FastAPI, so that
an oversized one is cut off while it streams in instead of being held whole first.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi.encoders import jsonable_encoder
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import RequestRejected
from .http_api import Pair, ScoreRequest


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may bring; a deployment sets both through its app args."""

    max_pairs: int = 256
    max_body_bytes: int = 32 * 1024 * 1024


def check_api_key(headers: Headers, api_key: str | None) -> None:
    """401 unless ``Authorization: Bearer <api_key>``; with no key set, every caller is let in."""
    if not api_key:
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    # compare_digest: how long the comparison takes says nothing about how much of the key matched.
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestRejected.at(
            401, ["header", "Authorization"], "missing or wrong API key (send 'Authorization: Bearer <key>')",
            "unauthorized",
        )


def check_content_type(headers: Headers) -> None:
    """415 unless the body is sent as ``application/json`` (parameters such as charset allowed)."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestRejected.at(
            415, ["header", "Content-Type"], f"send the body as application/json, not {media_type or 'no type'}",
            "unsupported_media_type",
        )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body; 413 once it is over `max_bytes`: by its declared length before any of it is
    read, else as soon as the chunks streamed so far cross the cap (a chunked body declares none)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _body_too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _body_too_large(max_bytes)
    return bytes(body)


def _body_too_large(max_bytes: int) -> RequestRejected:
    return RequestRejected.at(413, ["body"], f"the body is over {max_bytes} bytes", "too_large")


def parse_pairs(body: bytes, max_pairs: int) -> list[Pair]:
    """The pairs of a `ScoreRequest` body; 422 with FastAPI's own ``detail`` shape (``loc`` under
    ``body``) when it does not parse, or when it holds more than `max_pairs` pairs."""
    try:
        parsed = ScoreRequest.model_validate_json(body)
    except ValidationError as exc:
        # No input, context or docs URL: the caller sent the input, and the rest is noise.
        detail = jsonable_encoder(exc.errors(include_url=False, include_context=False, include_input=False))
        for item in detail:
            item["loc"] = ["body", *item["loc"]]
        raise RequestRejected(422, detail) from None
    if len(parsed.pairs) > max_pairs:
        raise RequestRejected.at(
            422, ["body", "pairs"], f"{len(parsed.pairs)} pairs is over the limit of {max_pairs}", "too_many",
        )
    return parsed.pairs


async def accepted_pairs(request: Request, api_key: str | None, limits: ServiceLimits) -> list[Pair]:
    """The request's pairs once every check has passed. The order is the caller's: who is
    asking (401), then how the body is sent (415), then how big (413), then what it says (422);
    no byte of the body is read for a caller without the key."""
    check_api_key(request.headers, api_key)
    check_content_type(request.headers)
    return parse_pairs(await read_body(request, limits.max_body_bytes), limits.max_pairs)


def rejection_response(rejected: RequestRejected) -> JSONResponse:
    """The 4xx a caller gets: ``{"detail": [...]}``, the shape FastAPI gives its own 422s."""
    return JSONResponse({"detail": rejected.detail}, status_code=rejected.status)
