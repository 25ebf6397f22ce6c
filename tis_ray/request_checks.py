"""Whether a ``POST /v1/score`` or ``/v1/rank`` is let in: API key, ``Content-Type``, body
size, then shape, item count and model names.

Each check raises `errors.RequestRejected` (a 4xx and a FastAPI-style ``detail`` whose
``loc`` names the header or field) and needs no Ray, so the service's handler is a call
and a ``except``, and every check is tested with a plain starlette `Request`
(tests/test_request_checks.py). The body is read by `read_body`, not by FastAPI, so that
an oversized one is cut off while it streams in instead of being held whole first.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from fastapi.encoders import jsonable_encoder
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import RequestRejected
from .http_api import RANK_REQUEST, RankCaptionsRequest, RankImagesRequest, ScoreRequest

Parsed = TypeVar("Parsed")


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


def _validated(body: bytes, validate: Callable[[bytes], Parsed]) -> Parsed:
    """`validate` applied to the body; 422 with FastAPI's own ``detail`` shape (``loc`` under
    ``body``) when it does not parse."""
    try:
        return validate(body)
    except ValidationError as exc:
        # No input, context or docs URL: the caller sent the input, and the rest is noise.
        detail = jsonable_encoder(exc.errors(include_url=False, include_context=False, include_input=False))
        for item in detail:
            item["loc"] = ["body", *item["loc"]]
        raise RequestRejected(422, detail) from None


def check_item_count(count: int, max_pairs: int, loc: list, what: str) -> None:
    """422 at `loc` when a request brings more than `max_pairs` items (pairs, captions or images)."""
    if count > max_pairs:
        raise RequestRejected.at(422, loc, f"{count} {what} is over the limit of {max_pairs}", "too_many")


def _model_name_problem(name: str, known: Sequence[str], earlier: Sequence[str]) -> dict | None:
    """What is wrong with a model name in a request (``msg`` and ``type``), if anything."""
    if name not in known:
        return {"msg": f"no model is named {name!r} (known: {', '.join(known)})", "type": "unknown_model"}
    if name in earlier:
        return {"msg": f"{name!r} is named twice", "type": "duplicate_model"}
    return None


def check_model_names(names: Sequence[str], known: Sequence[str], loc: list) -> None:
    """422 naming each name (at ``loc + [position]``) that the app does not serve or that comes
    twice, with the names it does serve."""
    detail = [{"loc": [*loc, position], **problem} for position, name in enumerate(names)
              if (problem := _model_name_problem(name, known, names[:position]))]
    if detail:
        raise RequestRejected(422, detail)


def parse_score_request(body: bytes, max_pairs: int, known_models: Sequence[str]) -> ScoreRequest:
    """A `ScoreRequest` with at most `max_pairs` pairs, naming only `known_models`; else 422."""
    parsed = _validated(body, ScoreRequest.model_validate_json)
    check_item_count(len(parsed.pairs), max_pairs, ["body", "pairs"], "pairs")
    if parsed.models is not None:
        check_model_names(parsed.models, known_models, ["body", "models"])
    return parsed


def parse_rank_request(body: bytes, max_pairs: int,
                       known_models: Sequence[str]) -> RankCaptionsRequest | RankImagesRequest:
    """A rank request (one image and captions, or one caption and images) with at most
    `max_pairs` items to rank, naming a model among `known_models` if any; else 422. A
    ``loc`` names the form as pydantic's own 422s do (``["body", "rank_captions", "captions"]``)."""
    parsed = _validated(body, RANK_REQUEST.validate_json)
    field = parsed.items_field
    check_item_count(len(getattr(parsed, field)), max_pairs, ["body", parsed.tag, field], field)
    problem = None if parsed.model is None else _model_name_problem(parsed.model, known_models, ())
    if problem:
        raise RequestRejected(422, [{"loc": ["body", parsed.tag, "model"], **problem}])
    return parsed


async def accepted_request(request: Request, api_key: str | None, limits: ServiceLimits,
                           parse: Callable[[bytes], Parsed]) -> Parsed:
    """The request's body, parsed by `parse`, once every check has passed. The order is the
    caller's: who is asking (401), then how the body is sent (415), then how big (413), then
    what it says (422, `parse`'s); no byte of the body is read for a caller without the key."""
    check_api_key(request.headers, api_key)
    check_content_type(request.headers)
    return parse(await read_body(request, limits.max_body_bytes))


def rejection_response(rejected: RequestRejected) -> JSONResponse:
    """The 4xx a caller gets: ``{"detail": [...]}``, the shape FastAPI gives its own 422s."""
    return JSONResponse({"detail": rejected.detail}, status_code=rejected.status)
