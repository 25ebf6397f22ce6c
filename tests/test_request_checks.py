"""The service's request checks and its OpenAPI schema, without Ray: each check is fed a
real starlette `Request` built from an ASGI scope, whose body arrives chunk by chunk through
a ``receive`` that counts what was read. FastAPI's own validation is the reference for the
422 ``detail``; openapi-spec-validator judges the published schema."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Annotated

import pytest
from fastapi import Body, FastAPI, Request
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from tis_ray.errors import RequestRejected
from tis_ray.http_api import (
    RANK_ROUTE_DOCS,
    SCORE_ROUTE_DOCS,
    RankCaptionsRequest,
    RankImagesRequest,
    RankRequest,
    ScoreRequest,
    publish_request_schema,
)
from tis_ray.request_checks import (
    ServiceLimits,
    accepted_request,
    check_api_key,
    check_content_type,
    parse_rank_request,
    parse_score_request,
    read_body,
    rejection_response,
)

KEY = "k3y-for-tests"
PAIR = {"image_url": "http://images.test/a.jpg", "caption": "a cat"}
MODELS = ("b32", "siglip")  # the names an app serves, in its order


def parse_pairs(body: bytes, max_pairs: int) -> list:
    return parse_score_request(body, max_pairs, MODELS).pairs


def accepted_pairs(request: Request, api_key: str | None, limits: ServiceLimits):
    return accepted_request(request, api_key, limits, lambda body: parse_pairs(body, limits.max_pairs))


class StreamedRequest:
    """A POST whose body comes in `chunks`; `chunks_read` counts what the app pulled."""

    def __init__(self, headers: dict[str, str], chunks: list[bytes]):
        self.chunks, self.chunks_read = chunks, 0
        scope = {"type": "http", "method": "POST", "path": "/v1/score", "query_string": b"",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        self.request = Request(scope, self._receive)

    async def _receive(self) -> dict:
        index = self.chunks_read
        self.chunks_read += 1
        return {"type": "http.request", "body": self.chunks[index], "more_body": index + 1 < len(self.chunks)}


def rejected(check) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        asyncio.run(check) if asyncio.iscoroutine(check) else check()
    return caught.value


def test_the_checks_import_no_ray():
    probe = "import sys, tis_ray.request_checks; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x",
                                           f"{KEY}"])
def test_a_wrong_or_missing_key_is_401_naming_the_header(authorization):
    headers = StreamedRequest({} if authorization is None else {"Authorization": authorization}, []).request.headers
    refusal = rejected(lambda: check_api_key(headers, KEY))
    assert refusal.status == 401 and refusal.detail[0]["loc"] == ["header", "Authorization"]


@pytest.mark.parametrize("authorization", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER  {KEY} "])
def test_the_key_passes_in_any_case_of_the_scheme(authorization):
    check_api_key(StreamedRequest({"Authorization": authorization}, []).request.headers, KEY)


def test_no_key_set_lets_every_caller_in():
    for api_key in (None, ""):
        check_api_key(StreamedRequest({}, []).request.headers, api_key)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_in_any_spelling_passes_the_type_check(content_type):
    check_content_type(StreamedRequest({"Content-Type": content_type}, []).request.headers)


@pytest.mark.parametrize("content_type, named", [("text/plain", "text/plain"), (None, "no type"),
                                                 ("application/x-www-form-urlencoded; a=b",
                                                  "application/x-www-form-urlencoded")])
def test_another_type_is_415_naming_it(content_type, named):
    headers = StreamedRequest({"Content-Type": content_type} if content_type else {}, []).request.headers
    refusal = rejected(lambda: check_content_type(headers))
    assert refusal.status == 415 and refusal.detail[0]["loc"] == ["header", "Content-Type"]
    assert refusal.detail[0]["msg"].endswith(f"not {named}")


def test_a_declared_length_over_the_cap_is_refused_before_any_chunk_is_read():
    sent = StreamedRequest({"Content-Length": "1001"}, [b"x" * 1001])
    refusal = rejected(read_body(sent.request, 1000))
    assert (refusal.status, refusal.detail[0]["loc"]) == (413, ["body"])
    assert sent.chunks_read == 0


@pytest.mark.parametrize("declared", [None, "10"])  # chunked, or a length that lies
def test_a_streamed_body_is_cut_off_at_the_chunk_that_crosses_the_cap(declared):
    chunk, cap = 100, 250
    sent = StreamedRequest({"Content-Length": declared} if declared else {}, [b"x" * chunk] * 10)
    refusal = rejected(read_body(sent.request, cap))
    assert refusal.status == 413
    assert sent.chunks_read == cap // chunk + 1  # the chunk that crossed it, and none after


def test_a_body_at_the_cap_is_read_whole():
    chunks = [b"ab", b"", b"cde", b"f"]
    sent = StreamedRequest({}, chunks)
    assert asyncio.run(read_body(sent.request, len(b"".join(chunks)))) == b"".join(chunks)


def _fastapi_detail(body: bytes, body_type=ScoreRequest) -> list[dict]:
    """What FastAPI itself answers when `body_type` is the route's declared body model."""
    reference = FastAPI()

    def take(request) -> None:  # pragma: no cover - only invalid bodies are sent
        raise AssertionError("a valid body reached the reference route")

    # Set here, not written in the signature: this module's annotations are strings, and
    # FastAPI could not resolve `body_type` from one.
    take.__annotations__["request"] = Annotated[body_type, Body()]
    reference.post("/reference")(take)

    response = TestClient(reference).post("/reference", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    return response.json()["detail"]


@pytest.mark.parametrize("payload", [
    {"pairs": [{"image_url": "http://x.test/a.jpg"}]},
    {"pairs": [{"caption": "no image"}]},
    {"pairs": [{"image_base64": "!!not base64!!", "caption": "x"}]},
    {"pairs": [{"image_url": "http://x.test/a.jpg", "image_base64": "aGVsbG8=", "caption": "x"}]},
    {"pairs": [{"image_url": "http://x.test/a.jpg", "caption": "x" * 10_001}]},
    {"pairs": []},
    {"pairs": "all of them"},
    [1, 2],
    {},
])
def test_a_malformed_body_gets_the_422_fastapi_itself_would_give(payload):
    body = json.dumps(payload).encode()
    refusal = rejected(lambda: parse_pairs(body, 256))
    assert refusal.status == 422
    # The same fields named; type and wording may differ (JSON-mode validation says "a valid
    # array" and "model_type" where FastAPI, validating parsed Python, says "a valid list" and
    # "model_attributes_type").
    assert [item["loc"] for item in refusal.detail] == [item["loc"] for item in _fastapi_detail(body)]
    assert all(item["msg"] and set(item) == {"loc", "msg", "type"} for item in refusal.detail)


def test_a_body_that_is_not_json_is_422_at_the_body():
    refusal = rejected(lambda: parse_pairs(b"{not json", 256))
    assert refusal.status == 422 and [item["loc"] for item in refusal.detail] == [["body"]]
    assert refusal.detail[0]["type"] == "json_invalid"


def test_the_pair_limit_counts_pairs():
    body = json.dumps({"pairs": [PAIR, {**PAIR, "caption": "a dog"}, {**PAIR, "caption": "a cow"}]}).encode()
    assert [pair.caption for pair in parse_pairs(body, 3)] == ["a cat", "a dog", "a cow"]
    refusal = rejected(lambda: parse_pairs(body, 2))
    assert (refusal.status, refusal.detail[0]["loc"]) == (422, ["body", "pairs"])
    assert "3 pairs" in refusal.detail[0]["msg"] and "limit of 2" in refusal.detail[0]["msg"]


def test_checks_run_in_the_callers_order_and_read_no_body_for_a_refused_caller():
    limits = ServiceLimits(max_pairs=1, max_body_bytes=64)
    oversized = [json.dumps({"pairs": [PAIR, PAIR]}).encode()]  # over both limits, and typed text/plain
    sent = StreamedRequest({"Content-Type": "text/plain"}, oversized)
    assert rejected(accepted_pairs(sent.request, KEY, limits)).status == 401
    sent = StreamedRequest({"Content-Type": "text/plain", "Authorization": f"Bearer {KEY}"}, oversized)
    assert rejected(accepted_pairs(sent.request, KEY, limits)).status == 415
    assert sent.chunks_read == 0
    sent = StreamedRequest({"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}, oversized)
    assert rejected(accepted_pairs(sent.request, KEY, limits)).status == 413
    roomy = ServiceLimits(max_pairs=1, max_body_bytes=1000)
    sent = StreamedRequest({"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}, oversized)
    assert rejected(accepted_pairs(sent.request, KEY, roomy)).status == 422
    sent = StreamedRequest({"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
                           [json.dumps({"pairs": [PAIR]}).encode()])
    assert [pair.image_url for pair in asyncio.run(accepted_pairs(sent.request, KEY, roomy))] == [PAIR["image_url"]]


def test_a_rejection_is_answered_with_its_status_and_detail():
    refusal = RequestRejected.at(413, ["body"], "the body is over 5 bytes", "too_large")
    response = rejection_response(refusal)
    assert response.status_code == 413
    assert json.loads(response.body) == {"detail": [{"loc": ["body"], "msg": "the body is over 5 bytes",
                                                     "type": "too_large"}]}


def _capped_lists(schema: dict) -> dict[str, int]:
    """The ``maxItems`` of each list a request brings, as the published schema says."""
    components = schema["components"]["schemas"]
    variants = [ref["$ref"].rsplit("/", 1)[1] for ref in components["RankRequest"]["oneOf"]]
    assert sorted(variants) == sorted([RankCaptionsRequest.__name__, RankImagesRequest.__name__])
    return {"pairs": components["ScoreRequest"]["properties"]["pairs"]["maxItems"],
            "captions": components[RankCaptionsRequest.__name__]["properties"]["captions"]["maxItems"],
            "images": components[RankImagesRequest.__name__]["properties"]["images"]["maxItems"]}


def test_the_published_schema_is_valid_openapi_with_each_limit_it_is_given():
    app = FastAPI(title="t", version="1")

    @app.post("/v1/score", openapi_extra=SCORE_ROUTE_DOCS)
    async def score(request: Request) -> dict:  # pragma: no cover - only the schema is read
        return {}

    @app.post("/v1/rank", openapi_extra=RANK_ROUTE_DOCS)
    async def rank(request: Request) -> dict:  # pragma: no cover - only the schema is read
        return {}

    publish_request_schema(app, 7)
    schema = app.openapi()
    validate(schema)  # every $ref resolves, the document is OpenAPI 3.x
    assert _capped_lists(schema) == {"pairs": 7, "captions": 7, "images": 7}
    assert schema["paths"]["/v1/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RankRequest"}
    assert app.openapi() is schema  # built once, then served from the cache
    publish_request_schema(app, 3)  # as a replica does with its own limit
    assert _capped_lists(app.openapi()) == {"pairs": 3, "captions": 3, "images": 3}
    served = TestClient(app).get("/openapi.json").json()
    assert _capped_lists(served) == {"pairs": 3, "captions": 3, "images": 3}


def _named_models(schema: dict) -> dict[str, dict]:
    """The non-null schema of each field where a request names models."""
    components = schema["components"]["schemas"]
    fields = {"models": components["ScoreRequest"]["properties"]["models"],
              "rank_captions": components[RankCaptionsRequest.__name__]["properties"]["model"],
              "rank_images": components[RankImagesRequest.__name__]["properties"]["model"]}
    return {name: next(b for b in field["anyOf"] if b["type"] != "null") for name, field in fields.items()}


def test_the_published_schema_allows_the_apps_own_model_names_each_once():
    app = FastAPI(title="t", version="1")
    publish_request_schema(app, 7)  # no names given (the module's own app before a replica has its models)
    named = _named_models(app.openapi())
    assert named["models"]["uniqueItems"] is True
    assert all("enum" not in schema for schema in (named["models"]["items"], named["rank_captions"],
                                                    named["rank_images"]))
    publish_request_schema(app, 7, MODELS)
    schema = app.openapi()
    validate(schema)
    named = _named_models(schema)
    assert named["models"]["items"]["enum"] == named["rank_captions"]["enum"] == named["rank_images"]["enum"] == [
        "b32", "siglip"]


# --- model names and /v1/rank -------------------------------------------------------------------

IMAGE = {"image_url": "http://images.test/a.jpg"}


def test_a_score_request_may_name_the_apps_models():
    body = json.dumps({"pairs": [PAIR], "models": ["siglip", "b32"]}).encode()
    assert parse_score_request(body, 256, MODELS).models == ["siglip", "b32"]
    assert parse_score_request(json.dumps({"pairs": [PAIR]}).encode(), 256, MODELS).models is None


@pytest.mark.parametrize("models, problems", [
    (["b32", "vit-h"], [(["body", "models", 1], "unknown_model")]),
    (["nope", "b32", "b32"], [(["body", "models", 0], "unknown_model"), (["body", "models", 2], "duplicate_model")]),
])
def test_an_unknown_or_repeated_model_name_is_422_naming_each_and_the_known_ones(models, problems):
    refusal = rejected(lambda: parse_score_request(json.dumps({"pairs": [PAIR], "models": models}).encode(),
                                                   256, MODELS))
    assert refusal.status == 422
    assert [(item["loc"], item["type"]) for item in refusal.detail] == problems
    unknown = [item["msg"] for item in refusal.detail if item["type"] == "unknown_model"]
    assert unknown and all("(known: b32, siglip)" in msg for msg in unknown)


def test_a_rank_request_is_one_image_with_captions_or_one_caption_with_images():
    by_image = parse_rank_request(json.dumps({"image": IMAGE, "captions": ["a", "b"]}).encode(), 256, MODELS)
    assert isinstance(by_image, RankCaptionsRequest) and by_image.captions == ["a", "b"] and by_image.model is None
    by_caption = parse_rank_request(json.dumps({"caption": "a cat", "images": [IMAGE, {"image_base64": "aGk="}],
                                                "model": "siglip"}).encode(), 256, MODELS)
    assert isinstance(by_caption, RankImagesRequest) and by_caption.model == "siglip"
    assert [image.image_bytes for image in by_caption.images] == [None, b"hi"]


@pytest.mark.parametrize("payload", [
    {"image": IMAGE, "caption": "both", "captions": ["a"]},
    {"captions": ["a"], "images": [IMAGE]},
    {},
    [IMAGE],
    {"image": IMAGE, "images": [IMAGE]},
    {"image": IMAGE, "captions": []},
    {"image": IMAGE, "captions": ["x" * 10_001]},
    {"image": {"image_url": "http://x.test/a.jpg", "caption": "x"}, "captions": ["a"]},
    {"caption": "a", "images": [{"image_base64": "!!"}]},
    {"caption": "a", "images": [IMAGE], "model": "has space"},
    {"caption": "a", "images": IMAGE},
])
def test_a_malformed_rank_body_gets_the_422_fastapi_itself_would_give(payload):
    body = json.dumps(payload).encode()
    refusal = rejected(lambda: parse_rank_request(body, 256, MODELS))
    assert refusal.status == 422
    assert [item["loc"] for item in refusal.detail] == [item["loc"] for item in _fastapi_detail(body, RankRequest)]
    assert all(item["msg"] and set(item) == {"loc", "msg", "type"} for item in refusal.detail)


@pytest.mark.parametrize("payload", [{}, {"image": IMAGE, "caption": "a"}])
def test_neither_or_both_of_image_and_caption_is_422_saying_what_to_send(payload):
    refusal = rejected(lambda: parse_rank_request(json.dumps(payload).encode(), 256, MODELS))
    [item] = refusal.detail
    assert item["loc"] == ["body"]
    assert "`image` with `captions`" in item["msg"] and "`caption` with `images`" in item["msg"]


@pytest.mark.parametrize("payload, loc, count", [
    ({"image": IMAGE, "captions": ["a", "b", "c"]}, ["body", "rank_captions", "captions"], "3 captions"),
    ({"caption": "a", "images": [IMAGE] * 3}, ["body", "rank_images", "images"], "3 images"),
])
def test_the_rank_limit_counts_the_ranked_items(payload, loc, count):
    body = json.dumps(payload).encode()
    assert parse_rank_request(body, 3, MODELS)
    refusal = rejected(lambda: parse_rank_request(body, 2, MODELS))
    assert (refusal.status, refusal.detail[0]["loc"], refusal.detail[0]["type"]) == (422, loc, "too_many")
    assert refusal.detail[0]["msg"] == f"{count} is over the limit of 2"


def test_a_rank_request_naming_an_unknown_model_is_422_at_its_model():
    refusal = rejected(lambda: parse_rank_request(
        json.dumps({"caption": "a", "images": [IMAGE], "model": "vit-h"}).encode(), 256, MODELS))
    assert refusal.detail == [{"loc": ["body", "rank_images", "model"], "type": "unknown_model",
                               "msg": "no model is named 'vit-h' (known: b32, siglip)"}]
