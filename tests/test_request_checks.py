"""The service's request checks and its OpenAPI schema, without Ray: each check is fed a
real starlette `Request` built from an ASGI scope, whose body arrives chunk by chunk through
a ``receive`` that counts what was read. FastAPI's own validation is the reference for the
422 ``detail``; openapi-spec-validator judges the published schema."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from tis_ray.errors import RequestRejected
from tis_ray.http_api import SCORE_ROUTE_DOCS, ScoreRequest, publish_request_schema
from tis_ray.request_checks import (
    ServiceLimits,
    accepted_pairs,
    check_api_key,
    check_content_type,
    parse_pairs,
    read_body,
    rejection_response,
)

KEY = "k3y-for-tests"
PAIR = {"image_url": "http://images.test/a.jpg", "caption": "a cat"}


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


def _fastapi_detail(body: bytes) -> list[dict]:
    """What FastAPI itself answers when `ScoreRequest` is the route's declared body model."""
    reference = FastAPI()

    @reference.post("/reference")
    def take(request: ScoreRequest) -> None:  # pragma: no cover - only invalid bodies are sent
        raise AssertionError("a valid body reached the reference route")

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


def test_the_published_schema_is_valid_openapi_with_each_limit_it_is_given():
    app = FastAPI(title="t", version="1")

    @app.post("/v1/score", openapi_extra=SCORE_ROUTE_DOCS)
    async def score(request: Request) -> dict:  # pragma: no cover - only the schema is read
        return {}

    publish_request_schema(app, 7)
    schema = app.openapi()
    validate(schema)  # every $ref resolves, the document is OpenAPI 3.x
    assert schema["components"]["schemas"]["ScoreRequest"]["properties"]["pairs"]["maxItems"] == 7
    assert app.openapi() is schema  # built once, then served from the cache
    publish_request_schema(app, 3)  # as a replica does with its own limit
    assert app.openapi()["components"]["schemas"]["ScoreRequest"]["properties"]["pairs"]["maxItems"] == 3
    served = TestClient(app).get("/openapi.json").json()
    assert served["components"]["schemas"]["ScoreRequest"]["properties"]["pairs"]["maxItems"] == 3
