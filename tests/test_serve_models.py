"""A Serve app with two models (the tiny CLIP and the tiny SigLIP): real Ray Serve on
127.0.0.1, a real HTTP client, real photos from a loopback image server that counts its
requests. Every score is held to its family's own library: CLIP to tests/reference.py's
`reference_similarities`, SigLIP to transformers' documented
``model(**processor(text=..., images=..., padding="max_length"))`` (`library_outputs`)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from reference import (
    decoded_reduced,
    library,
    library_cosines,
    library_outputs,
    reference_similarities,
    tolerance,
)

from tis_ray.errors import error_kind
from tis_ray.serve import ScoringService, ServeArgs

API_KEY = "models-test-key"
MAX_PAIRS = 4
MAX_BODY_BYTES = 1_000_000
# Rounding to 4 decimals may leave two equal scores a float's width over their bound apart.
ROUNDING_SLACK = 1e-9
PROBABILITY_TOLERANCE = 1e-4  # the bound for SigLIP's probability against the library


def probability_bound(model_dir: str, image) -> float:
    """The issue's 1e-4 for an image decoded whole; for one decoded at reduced size, where the
    similarity may move by `tolerance` (2e-3), what that moves the probability by at most: the
    sigmoid's slope (at most 1/4) times the pair head's scale times the cosine's move (2x)."""
    if not decoded_reduced(image):
        return PROBABILITY_TOLERANCE
    scale = float(library(model_dir)[0].logit_scale.exp())
    return 0.25 * scale * 2 * tolerance(image)


@pytest.fixture(scope="module")
def service(local_ray, tiny_model, siglip_model, image_server):
    """Two apps: "two" serves the tiny CLIP (as "clip", the default) and the tiny SigLIP (as
    "sig") in one replica; "sig" serves the SigLIP alone (as a one-model config names it) and
    wants an API key. Both may fetch from the image server's port on 127.0.0.1 only."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    guard = {"allow_hosts": ["127.0.0.1"], "allow_ports": [image_server.port], "timeout_s": 3,
             "max_pairs": MAX_PAIRS, "max_body_bytes": MAX_BODY_BYTES, "device": "cpu", "dtype": "float32"}
    small = {"num_cpus": 0.25}
    two = ServeArgs.model_validate({**guard, "models": [{"name": "clip", "model": tiny_model},
                                                        {"name": "sig", "model": siglip_model, "dtype": "float32"}]})
    serve.run(ScoringService.options(ray_actor_options=small).bind(**two.service_options()),
              name="two", route_prefix="/two")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIS_API_KEY", API_KEY)
    keyed = ServeArgs.model_validate({**guard, "model": siglip_model}).service_options()
    mp.undo()
    serve.run(ScoringService.options(ray_actor_options=small).bind(**keyed), name="sig", route_prefix="/sig")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def call(url: str, payload=None, headers=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


def siglip_reference(model_dir: str, images: list, captions: list[str]) -> tuple[list[float], np.ndarray]:
    """SigLIP's similarities (from the library's own embeddings) and sigmoid(logits_per_image)."""
    _, outputs = library_outputs("siglip", model_dir, [rgb(i) for i in images], captions)
    similarities = [round((c + 1) / 2, 4) for c in library_cosines(outputs).tolist()]
    return similarities, torch.sigmoid(outputs.logits_per_image).diagonal().numpy()


PHOTO_PAIRS = [("chelsea", "a cat"), ("rocket", "a rocket lifting off"), ("coffee", "a cup of coffee"),
               ("astronaut", "a portrait of an astronaut")]


def test_models_lists_both_with_family_and_sizes(service, tiny_model, siglip_model, photos):
    status, listed = call(f"{service}/two/v1/models")
    assert status == 200 and listed["default"] == "clip"
    assert [(m["name"], m["model"], m["family"]) for m in listed["models"]] == [
        ("clip", tiny_model, "clip"), ("sig", siglip_model, "siglip")]
    for entry in listed["models"]:
        model, processor = library(entry["model"])
        assert (entry["device"], entry["dtype"]) == ("cpu", "float32")
        assert entry["context_length"] == model.config.text_config.max_position_embeddings
        pixel_values = processor.image_processor(images=[rgb(photos["rocket"])], return_tensors="np")["pixel_values"]
        assert entry["image_size"] == list(pixel_values.shape[-2:])
    assert call(f"{service}/two/v1/model")[1]["model"] == tiny_model  # the default model, as before
    assert call(f"{service}/sig/v1/models")[1] == {"default": "default", "models": [
        {"name": "default", "model": siglip_model, "family": "siglip", "device": "cpu", "dtype": "float32",
         "context_length": listed["models"][1]["context_length"], "image_size": listed["models"][1]["image_size"]}]}


def test_two_models_score_each_pair_as_their_libraries_do(service, image_server, photos, tiny_model, siglip_model):
    marker = "two-models-score"
    pairs = [{"image_url": image_server.url(f"photo/{name}.jpg?{marker}-{i}"), "caption": caption}
             for i, (name, caption) in enumerate(PHOTO_PAIRS[:3])]
    name, caption = PHOTO_PAIRS[3]
    pairs.append({"image_base64": base64.b64encode(photos[name].read_bytes()).decode(), "caption": caption})
    status, body = call(f"{service}/two/v1/score", {"pairs": pairs, "models": ["sig", "clip"]})
    assert status == 200, body
    assert body["models"] == {"sig": siglip_model, "clip": tiny_model}
    images = [photos[name] for name, _ in PHOTO_PAIRS]
    captions = [caption for _, caption in PHOTO_PAIRS]
    clip_want = reference_similarities(tiny_model, images, captions)
    sig_want, probability_want = siglip_reference(siglip_model, images, captions)
    for i, result in enumerate(body["results"]):
        assert result["error"] is None and list(result["scores"]) == ["sig", "clip"], result
        clip, sig = result["scores"]["clip"], result["scores"]["sig"]
        bound = tolerance(images[i]) + ROUNDING_SLACK
        assert abs(clip["similarity"] - clip_want[i]) <= bound and clip["probability"] is None
        assert abs(sig["similarity"] - sig_want[i]) <= bound
        assert abs(sig["probability"] - probability_want[i]) <= probability_bound(siglip_model, images[i])
        for score in (clip, sig):
            assert score["similarity"] == round((score["cosine"] + 1) / 2, 4)
    # Each image was fetched once, though two models scored it.
    assert [image_server.count(f"photo/{name}.jpg?{marker}-{i}") for i, (name, _) in
            enumerate(PHOTO_PAIRS[:3])] == [1, 1, 1]


def test_a_request_without_models_keeps_its_shape_and_gets_the_default(service, image_server, photos):
    pair = {"image_url": image_server.url("photo/chelsea.jpg"), "caption": "a cat"}
    status, plain = call(f"{service}/two/v1/score", {"pairs": [pair]})
    assert status == 200 and set(plain) == {"model", "results"}
    [result] = plain["results"]
    assert set(result) == {"similarity", "cosine", "probability", "error"} and result["probability"] is None
    named = call(f"{service}/two/v1/score", {"pairs": [pair], "models": ["clip"]})[1]
    assert {k: result[k] for k in ("similarity", "cosine")} == {
        k: named["results"][0]["scores"]["clip"][k] for k in ("similarity", "cosine")}
    # A SigLIP app's one model gives its probability in the same shape.
    status, sig = call(f"{service}/sig/v1/score", {"pairs": [pair]}, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200
    want = call(f"{service}/two/v1/score", {"pairs": [pair], "models": ["sig"]})[1]["results"][0]["scores"]["sig"]
    assert {k: sig["results"][0][k] for k in ("similarity", "probability")} == {
        k: want[k] for k in ("similarity", "probability")}


def assert_ranked_like_the_reference(ranked: list[dict], want: dict[int, float], bounds: dict[int, float]) -> None:
    """`ranked` holds each scored item (by request index) once, most similar first, each equal to
    `want` within its bound; where two reference scores are within their bounds of each other the
    order may go either way."""
    assert sorted(r["index"] for r in ranked) == sorted(want)
    for result in ranked:
        assert abs(result["similarity"] - want[result["index"]]) <= bounds[result["index"]], result
    cosines = [r["cosine"] for r in ranked]
    assert cosines == sorted(cosines, reverse=True)
    for higher, lower in zip(ranked, ranked[1:], strict=False):
        slack = bounds[higher["index"]] + bounds[lower["index"]]
        assert want[higher["index"]] >= want[lower["index"]] - slack


def test_rank_captions_for_one_image(service, image_server, photos, siglip_model):
    url = image_server.url("photo/rocket.jpg?rank-captions")
    captions = ["a rocket lifting off", "a cat on a sofa", "   ", "smoke and fire at a launch pad"]
    assert len(captions) == MAX_PAIRS
    status, body = call(f"{service}/two/v1/rank", {"image": {"image_url": url}, "captions": captions, "model": "sig"})
    assert status == 200, body
    assert (body["name"], body["model"]) == ("sig", siglip_model)
    # The blank caption fails on its own, after the ranked ones, keeping its index.
    *ranked, failed = body["results"]
    assert failed["index"] == 2 and error_kind(failed["error"]) == "empty_caption" and failed["similarity"] is None
    scored = [0, 1, 3]
    similarities, probabilities = siglip_reference(siglip_model, [photos["rocket"]] * 3, [captions[i] for i in scored])
    bound = tolerance(photos["rocket"]) + ROUNDING_SLACK
    assert_ranked_like_the_reference(ranked, dict(zip(scored, similarities, strict=True)), dict.fromkeys(scored, bound))
    probability_of = dict(zip(scored, probabilities, strict=True))
    for result in ranked:
        assert abs(result["probability"] - probability_of[result["index"]]) <= PROBABILITY_TOLERANCE
    assert image_server.count("photo/rocket.jpg?rank-captions") == 1  # one image, fetched once


def test_rank_images_for_one_caption(service, image_server, photos, tiny_model):
    images = [{"image_url": image_server.url("photo/chelsea.jpg")}, {"image_url": image_server.url("photo/coffee.jpg")},
              {"image_url": image_server.url("status/404")},
              {"image_base64": base64.b64encode(photos["astronaut"].read_bytes()).decode()}]
    status, body = call(f"{service}/two/v1/rank", {"caption": "a cat", "images": images})
    assert status == 200, body
    assert (body["name"], body["model"]) == ("clip", tiny_model)  # no model named: the default
    *ranked, failed = body["results"]
    assert failed["index"] == 2 and error_kind(failed["error"]) == "http_404" and failed["similarity"] is None
    assert all(r["probability"] is None and r["error"] is None for r in ranked)  # CLIP has no pair head
    shown = {0: photos["chelsea"], 1: photos["coffee"], 3: photos["astronaut"]}
    want = reference_similarities(tiny_model, list(shown.values()), ["a cat"] * len(shown))
    assert_ranked_like_the_reference(ranked, dict(zip(shown, want, strict=True)),
                                     {i: tolerance(photo) + ROUNDING_SLACK for i, photo in shown.items()})


def test_rank_is_held_to_the_same_fetch_guard(service, image_server):
    """The name localhost is not on the app's allowlist (only 127.0.0.1 is): refused, no connection."""
    marker = "rank-guard"
    status, body = call(f"{service}/two/v1/rank", {"caption": "a cat", "images": [
        {"image_url": f"http://localhost:{image_server.port}/photo/chelsea.jpg?{marker}"},
        {"image_url": "file:///etc/passwd"}]})
    assert status == 200
    assert sorted(error_kind(r["error"]) for r in body["results"]) == ["blocked_address", "unsupported_scheme"]
    assert not [p for p in image_server.requests if marker in p]


def test_rank_and_score_need_the_key_where_one_is_set(service, photos):
    payload = {"image": {"image_base64": base64.b64encode(photos["chelsea"].read_bytes()).decode()},
               "captions": ["a cat", "a dog"]}
    assert call(f"{service}/sig/v1/rank", payload)[0] == 401
    assert call(f"{service}/sig/v1/rank", payload, {"Authorization": "Bearer wrong"})[0] == 401
    status, body = call(f"{service}/sig/v1/rank", payload, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and body["name"] == "default" and len(body["results"]) == 2
    assert call(f"{service}/sig/v1/models")[0] == 200  # what is served is no secret, as /v1/model


IMAGE = {"image_url": "http://images.test/a.jpg"}


@pytest.mark.parametrize("route, payload, status, loc, says", [
    ("score", {"pairs": [{**IMAGE, "caption": "x"}], "models": ["clip", "vit-h"]}, 422, ["body", "models", 1],
     "no model is named 'vit-h' (known: clip, sig)"),
    ("score", {"pairs": [{**IMAGE, "caption": "x"}], "models": ["sig", "sig"]}, 422, ["body", "models", 1],
     "'sig' is named twice"),
    ("score", {"pairs": [{**IMAGE, "caption": "x"}], "models": []}, 422, ["body", "models"], None),
    ("score", {"pairs": [{**IMAGE, "caption": "x"}], "model": "sig"}, 422, ["body", "model"], None),
    ("rank", {"image": IMAGE, "caption": "x", "captions": ["x"]}, 422, ["body"], "`image` with `captions`"),
    ("rank", {"captions": ["x"], "images": [IMAGE]}, 422, ["body"], "`caption` with `images`"),
    ("rank", {"image": IMAGE, "captions": ["x"] * (MAX_PAIRS + 1)}, 422, ["body", "rank_captions", "captions"],
     f"{MAX_PAIRS + 1} captions is over the limit of {MAX_PAIRS}"),
    ("rank", {"caption": "x", "images": [IMAGE] * (MAX_PAIRS + 1)}, 422, ["body", "rank_images", "images"],
     f"{MAX_PAIRS + 1} images is over the limit of {MAX_PAIRS}"),
    ("rank", {"caption": "x", "images": [IMAGE], "model": "vit-h"}, 422, ["body", "rank_images", "model"],
     "no model is named 'vit-h' (known: clip, sig)"),
    ("rank", {"caption": "x", "images": [IMAGE], "models": ["sig"]}, 422, ["body", "rank_images", "models"], None),
    ("rank", {"image": IMAGE, "captions": []}, 422, ["body", "rank_captions", "captions"], None),
    ("rank", {"image": {"image_base64": "A" * MAX_BODY_BYTES}, "captions": ["x"]}, 413, ["body"], None),
])
def test_bad_requests_get_a_4xx_that_names_the_field(service, route, payload, status, loc, says):
    got, body = call(f"{service}/two/v1/{route}", payload)
    assert got == status, body
    named = [item for item in body["detail"] if item["loc"] == loc]
    assert named and all(item["msg"] for item in body["detail"]), body
    assert says is None or says in named[0]["msg"]


def test_rank_refuses_a_body_that_is_not_json(service):
    got, body = call(f"{service}/two/v1/rank", raw=b'{"caption": "x", "images": []}',
                     headers={"Content-Type": "text/plain"})
    assert got == 415 and body["detail"][0]["loc"] == ["header", "Content-Type"]


def test_the_openapi_schema_publishes_both_requests(service):
    status, spec = call(f"{service}/two/openapi.json")
    assert status == 200
    assert {"/v1/score", "/v1/rank", "/v1/models"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert schemas["ScoreRequest"]["properties"]["pairs"]["maxItems"] == MAX_PAIRS
    assert schemas["RankCaptionsRequest"]["properties"]["captions"]["maxItems"] == MAX_PAIRS
    assert schemas["RankImagesRequest"]["properties"]["images"]["maxItems"] == MAX_PAIRS
    models = next(b for b in schemas["ScoreRequest"]["properties"]["models"]["anyOf"] if b["type"] == "array")
    assert models["items"]["enum"] == ["clip", "sig"]  # the names this app serves
