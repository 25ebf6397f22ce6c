"""The online service: real Ray Serve on 127.0.0.1, a real HTTP client, real photos."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import pytest
from conftest import PHOTOS, free_port, loopback_ray_env
from loopback import RawServer
from PIL import Image

from tis_ray import score_pairs
from tis_ray.config import SERVE_MAX_PIXELS, FetchConfig
from tis_ray.errors import error_kind
from tis_ray.serve import ScoringService, ServeArgs

API_KEY = "s3cret-test-key"
GUARDED_MAX_BYTES = 100_000  # the "guarded" app's caps: small, so that real photos cross them
GUARDED_MAX_PIXELS = 1_000_000


def batch_pairs(image_server, photos) -> list[tuple[str, str]]:
    return [
        (image_server.url("photo/chelsea.jpg"), "a cat"),
        (image_server.url("photo/rocket.jpg"), "a rocket lifting off"),
        (image_server.url("redirect/1/coffee.jpg"), "a cup of coffee"),
        (str(photos["retina"]), "an eye"),
    ]


@pytest.fixture(scope="module")
def batch_results(local_ray, tiny_model, image_server, photos):
    """The batch pipeline's results for `batch_pairs`, computed before Serve starts: the
    three replicas below and a batch job on the same 2-CPU Ray would need its last CPU."""
    return list(score_pairs(batch_pairs(image_server, photos), model=tiny_model, device="cpu",
                            dtype="float32", fetch=FetchConfig(timeout_s=3)))


@pytest.fixture(scope="module")
def upstream():
    """A loopback host that misbehaves as an internal one might: a 403 with a telling reason
    phrase, an SSH banner instead of HTTP, and an image its owner opted out of AI use."""
    server = UpstreamServer()
    yield server
    server.close()


class UpstreamServer(RawServer):
    REASON = "Forbidden-internal-build-7f3a tenant=acme"
    BANNER = b"SSH-2.0-OpenSSH_9.6 build-host-secret\r\n"

    def __init__(self):
        super().__init__(self._reply)

    def _reply(self, conn):
        path = conn.recv(65536).split(b" ", 2)[1].decode()
        if path == "/secret-403":
            conn.sendall(f"HTTP/1.1 403 {self.REASON}\r\nContent-Length: 0\r\n\r\n".encode())
        elif path == "/banner":
            conn.sendall(self.BANNER)
        elif path == "/noai":
            body = (PHOTOS / "chelsea.jpg").read_bytes()
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Robots-Tag: noai\r\nContent-Type: image/jpeg\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


OPEN_BATCHING = {"max_batch_size": 16, "batch_wait_ms": 50}


def deploy_open(tiny_model, image_server, upstream, user_config: dict) -> None:
    """Deploy (or redeploy) the "open" app: loopback allowed on the test servers' ports."""
    from ray import serve

    base = {"model": tiny_model, "device": "cpu", "dtype": "float32", "timeout_s": 3}
    ports = [image_server.httpd.server_address[1], upstream.port]
    serve.run(ScoringService.options(ray_actor_options={"num_cpus": 0.25}, user_config=user_config).bind(
        **ServeArgs.model_validate({**base, "allow_hosts": ["127.0.0.1"], "allow_ports": ports}).service_options()),
        name="open", route_prefix="/open")


@pytest.fixture(scope="module")
def service(local_ray, tiny_model, monkeypatch_module, batch_results, image_server, upstream):
    """Three apps on one Serve instance: loopback allowed (on the test servers' ports), default
    guard with small caps (only the name localhost, on the image server's port), and API-key
    protected."""
    from ray import serve

    port = free_port()
    image_port = image_server.httpd.server_address[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = {"model": tiny_model, "device": "cpu", "dtype": "float32", "timeout_s": 3}
    small = {"num_cpus": 0.25}
    deploy_open(tiny_model, image_server, upstream, OPEN_BATCHING)
    serve.run(ScoringService.options(ray_actor_options=small).bind(
        **ServeArgs.model_validate({**base, "allow_hosts": [f"localhost:{image_port}"], "max_body_bytes": 200_000,
                                    "max_pairs": 8, "max_image_bytes": GUARDED_MAX_BYTES,
                                    "max_pixels": GUARDED_MAX_PIXELS}).service_options()),
        name="guarded", route_prefix="/guarded")
    monkeypatch_module.setenv("TIS_API_KEY", API_KEY)
    serve.run(ScoringService.options(ray_actor_options=small).bind(**ServeArgs.model_validate(base).service_options()),
              name="keyed", route_prefix="/keyed")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def call(url: str, payload=None, headers=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_health_ready_model_and_docs(service, tiny_model):
    assert call(f"{service}/open/healthz") == (200, {"status": "ok"})
    assert call(f"{service}/open/readyz")[1]["status"] == "ready"
    status, info = call(f"{service}/open/v1/model")
    assert status == 200 and info["model"] == tiny_model and info["dtype"] == "float32" and info["max_pairs"] == 256
    status, spec = call(f"{service}/open/openapi.json")
    assert status == 200 and "/v1/score" in spec["paths"] and "ScoreRequest" in spec["components"]["schemas"]
    with urllib.request.urlopen(f"{service}/open/docs", timeout=30) as response:
        assert response.status == 200 and b"swagger" in response.read().lower()


def test_scores_equal_the_batch_pipeline(service, image_server, photos, tiny_model, batch_results):
    urls = batch_pairs(image_server, photos)[:3]
    payload = {"pairs": [{"image_url": u, "caption": c} for u, c in urls]
               + [{"image_base64": base64.b64encode(photos["retina"].read_bytes()).decode(), "caption": "an eye"}]}
    status, body = call(f"{service}/open/v1/score", payload)
    assert status == 200 and body["model"] == tiny_model, body
    assert len(body["results"]) == 4
    for online, offline in zip(body["results"], batch_results):
        assert online["error"] is None and offline.error is None
        assert abs(online["similarity"] - offline.similarity) <= 1e-4
        assert abs(online["cosine"] - offline.cosine) <= 1e-4
        assert online["similarity"] == round((online["cosine"] + 1) / 2, 4)


def test_one_bad_pair_is_one_error(service, image_server):
    payload = {"pairs": [
        {"image_url": image_server.url("photo/chelsea.jpg"), "caption": "a cat"},
        {"image_url": image_server.url("status/404"), "caption": "gone"},
        {"image_url": image_server.url("photo/coffee.jpg"), "caption": "   "},
        {"image_base64": base64.b64encode(b"<html>not an image</html>").decode(), "caption": "html"},
        {"image_url": "file:///etc/passwd", "caption": "a local file"},
        {"image_url": "/etc/passwd", "caption": "a local path"},
    ]}
    status, body = call(f"{service}/open/v1/score", payload)
    assert status == 200
    kinds = [error_kind(r["error"]) for r in body["results"]]
    assert kinds == [None, "http_404", "empty_caption", "decode_error", "unsupported_scheme", "unsupported_scheme"]
    assert body["results"][0]["similarity"] is not None
    assert all(r["similarity"] is None for r in body["results"][1:])


def _prometheus_value(port: int, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            values[key] = values.get(key, 0.0) + float(value)
    return values


def test_concurrent_clients_are_batched(service, image_server, ray_metrics_port):
    names = ["chelsea", "coffee", "rocket", "astronaut"]

    async def client(session, i):
        payload = {"pairs": [{"image_url": image_server.url(f"photo/{names[i % 4]}.jpg"), "caption": f"photo {i % 4}"}]}
        async with session.post(f"{service}/open/v1/score", json=payload) as response:
            return response.status, await response.json()

    async def run_clients():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(*(client(session, i) for i in range(32)))

    responses = asyncio.run(run_clients())
    assert all(status == 200 for status, _ in responses)
    by_photo: dict[int, float] = {}
    for i, (_, body) in enumerate(responses):
        result = body["results"][0]
        assert result["error"] is None
        assert by_photo.setdefault(i % 4, result["similarity"]) == result["similarity"]  # same pair, same score

    deadline = time.monotonic() + 60
    while True:  # Ray exports metrics every few seconds
        counts = _prometheus_value(ray_metrics_port, "ray_tis_batch_size_count")
        singles = _prometheus_value(ray_metrics_port, 'ray_tis_batch_size_bucket')
        total = sum(v for k, v in counts.items() if 'application="open"' in k)
        ones = sum(v for k, v in singles.items() if 'application="open"' in k and 'le="1.0"' in k)
        if total >= 1 or time.monotonic() > deadline:
            break
        time.sleep(2)
    pairs = sum(v for k, v in _prometheus_value(ray_metrics_port, "ray_tis_batch_size_sum").items()
                if 'application="open"' in k)
    assert total >= 1, "the batch-size histogram was never exported"
    assert total > ones, f"every batch had one pair ({total} batches)"
    assert pairs / total > 1


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "127.1", "0x7f.0.0.1", "[::ffff:127.0.0.1]"])
def test_internal_addresses_are_refused_without_a_connection(service, image_server, host):
    port = image_server.httpd.server_address[1]
    marker = f"ssrf-{abs(hash(host))}"
    url = f"http://{host}:{port}/photo/chelsea.jpg?{marker}"
    status, body = call(f"{service}/guarded/v1/score", {"pairs": [{"image_url": url, "caption": "a cat"}]})
    assert status == 200
    assert error_kind(body["results"][0]["error"]) == "blocked_address", body
    assert not [p for p in image_server.requests if marker in p]


def test_redirect_from_an_allowed_host_to_loopback_is_refused(service, image_server):
    port = image_server.httpd.server_address[1]
    target = urllib.parse.quote(f"http://127.0.0.1:{port}/photo/chelsea.jpg?redirected", safe="")
    allowed = f"http://localhost:{port}/photo/coffee.jpg"
    redirecting = f"http://localhost:{port}/goto?url={target}"
    status, body = call(f"{service}/guarded/v1/score", {"pairs": [
        {"image_url": allowed, "caption": "coffee"}, {"image_url": redirecting, "caption": "a cat"}]})
    assert status == 200
    assert body["results"][0]["error"] is None  # the allowlisted name itself works
    assert error_kind(body["results"][1]["error"]) == "blocked_address"
    assert "/photo/chelsea.jpg?redirected" not in image_server.requests


@pytest.mark.parametrize("raw, status, loc", [
    (b"{not json", 422, ["body"]),
    (json.dumps({"pairs": [{"image_url": "http://x.test/a.jpg"}]}).encode(), 422,
     ["body", "pairs", 0, "url", "caption"]),
    (json.dumps({"pairs": [{"caption": "no image"}]}).encode(), 422, ["body", "pairs", 0, "url", "image_url"]),
    (json.dumps({"pairs": [{"image_base64": "!!not base64!!", "caption": "x"}]}).encode(), 422,
     ["body", "pairs", 0, "base64", "image_base64"]),
    (json.dumps({"pairs": [{"image_base64": "aGVsbG8", "caption": "x"}]}).encode(), 422,
     ["body", "pairs", 0, "base64", "image_base64"]),
    (json.dumps({"pairs": [{"image_url": "http://x.test/a.jpg", "image_base64": "aGVsbG8=", "caption": "x"}]}).encode(),
     422, ["body", "pairs", 0, "base64", "image_url"]),
    (json.dumps({"pairs": [{"image_url": "http://x.test/a.jpg", "caption": "x" * 10_001}]}).encode(), 422,
     ["body", "pairs", 0, "url", "caption"]),
    (json.dumps({"pairs": [{"image_url": "http://x.test/a.jpg", "caption": "x"}] * 9}).encode(), 422,
     ["body", "pairs"]),
    (json.dumps({"pairs": []}).encode(), 422, ["body", "pairs"]),
    (json.dumps({"pairs": [{"image_base64": "A" * 300_000, "caption": "x"}]}).encode(), 413, ["body"]),
    (json.dumps([1, 2]).encode(), 422, ["body"]),
])
def test_bad_requests_get_a_4xx_that_names_the_field(service, raw, status, loc):
    got, body = call(f"{service}/guarded/v1/score", raw=raw)
    assert got == status, body
    assert any(item["loc"] == loc for item in body["detail"]), body
    assert all(item["msg"] for item in body["detail"])


def test_api_key_is_required_when_set(service, image_server):
    payload = {"pairs": [{"image_base64": base64.b64encode((image_server.url("x")).encode()).decode(), "caption": "x"}]}
    assert call(f"{service}/keyed/v1/score", payload)[0] == 401
    assert call(f"{service}/keyed/v1/score", payload, {"Authorization": "Bearer wrong"})[0] == 401
    status, body = call(f"{service}/keyed/v1/score", payload, {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and error_kind(body["results"][0]["error"]) == "decode_error"
    assert call(f"{service}/keyed/healthz")[0] == 200
    assert call(f"{service}/open/v1/score", payload)[0] == 200  # the other apps have no key


# --- the service's own guards (see also tests/test_security.py) -------------------------------


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_inline_images_are_held_to_the_byte_and_pixel_caps(service):
    noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))  # ~120 KB as PNG
    wide = Image.new("RGB", (1100, 1000), (10, 200, 30))  # 1.1 M pixels, a few KB
    fits = Image.new("RGB", (1000, 1000), (10, 200, 30))
    pairs = [{"image_base64": _png_base64(image), "caption": "x"} for image in (noise, wide, fits)]
    assert len(base64.b64decode(pairs[0]["image_base64"])) > GUARDED_MAX_BYTES
    status, body = call(f"{service}/guarded/v1/score", {"pairs": pairs})
    assert status == 200, body
    errors = [r["error"] for r in body["results"]]
    assert errors[0] == f"too_large: the image is over {GUARDED_MAX_BYTES} bytes"
    assert errors[1] == f"decompression_bomb: the image is over the limit of {GUARDED_MAX_PIXELS} pixels"
    assert errors[2] is None and body["results"][2]["similarity"] is not None
    info = call(f"{service}/guarded/v1/model")[1]
    assert (info["max_image_bytes"], info["max_pixels"]) == (GUARDED_MAX_BYTES, GUARDED_MAX_PIXELS)
    assert call(f"{service}/open/v1/model")[1]["max_pixels"] == SERVE_MAX_PIXELS  # the service default


def test_error_texts_tell_nothing_about_what_is_behind_the_service(service, upstream):
    payload = {"pairs": [{"image_url": upstream.url("secret-403"), "caption": "x"},
                         {"image_url": upstream.url("banner"), "caption": "x"}]}
    status, body = call(f"{service}/open/v1/score", payload)
    assert status == 200
    texts = [r["error"] for r in body["results"]]
    assert texts[0] == "http_403: the image host answered HTTP 403"
    assert error_kind(texts[1]) == "connection_error"
    for secret in ("7f3a", "acme", "Forbidden", "SSH", "OpenSSH", "secret"):
        assert secret not in json.dumps(body), body


def test_a_port_the_policy_does_not_allow_is_refused_without_a_connection(service, upstream, image_server):
    # "guarded" allows localhost on the image server's port only: the upstream's port is refused.
    marker = "port-policy-check"
    status, body = call(f"{service}/guarded/v1/score", {"pairs": [
        {"image_url": f"http://localhost:{upstream.port}/noai?{marker}", "caption": "x"},
        {"image_url": f"http://127.0.0.1:{image_server.httpd.server_address[1]}/photo/chelsea.jpg?{marker}",
         "caption": "x"}]})
    assert status == 200
    assert [error_kind(r["error"]) for r in body["results"]] == ["blocked_address", "blocked_address"]
    assert not [p for p in image_server.requests if marker in p]


def test_opted_out_images_are_not_scored(service, upstream):
    status, body = call(f"{service}/open/v1/score", {"pairs": [{"image_url": upstream.url("noai"), "caption": "x"}]})
    assert status == 200
    assert body["results"][0]["error"] == "opted_out: the image's host opts out of AI use (X-Robots-Tag)"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_gets_415(service, content_type):
    import http.client

    where = urllib.parse.urlsplit(f"{service}/open/v1/score")
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request("POST", where.path, body=b'{"pairs": []}', headers=headers)  # http.client adds no type
    response = connection.getresponse()
    assert response.status == 415
    assert json.loads(response.read())["detail"][0]["loc"] == ["header", "Content-Type"]
    connection.close()
    ok = call(f"{service}/open/v1/score", raw=b'{"pairs": []}',
              headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok[0] == 422  # past the type check: an empty list is the body's own fault


def test_the_metric_names_in_the_readme_are_the_ones_ray_exports(service, image_server, ray_metrics_port):
    """A Prometheus query written from README.md finds the series, once a pair was scored and one failed."""
    from conftest import REPO

    status, body = call(f"{service}/open/v1/score", {"pairs": [
        {"image_url": image_server.url("photo/chelsea.jpg"), "caption": "a cat"},
        {"image_url": image_server.url("status/404"), "caption": "gone"}]})
    assert status == 200 and body["results"][1]["error"].startswith("http_404")

    documented = set(re.findall(r"`(ray_tis_[a-z_]+)`", (REPO / "README.md").read_text()))
    assert {"ray_tis_pairs_scored_total", "ray_tis_pair_errors_total", "ray_tis_batch_size_count"} <= documented
    deadline = time.monotonic() + 60
    while True:  # Ray exports metrics every few seconds
        exported = {name for name in documented  # a histogram's own name stands for its _bucket series
                    if _prometheus_value(ray_metrics_port, name + "{")
                    or _prometheus_value(ray_metrics_port, name + "_bucket{")}
        if exported == documented or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert exported == documented
    errors_by_kind = _prometheus_value(ray_metrics_port, "ray_tis_pair_errors_total{")
    assert errors_by_kind and all(re.search(r'kind="[a-z_0-9]+"', key) for key in errors_by_kind), errors_by_kind


def test_a_new_user_config_applies_to_the_running_app(service, tiny_model, image_server, upstream, monkeypatch):
    """README: batch size and wait are the deployment's ``user_config``. Redeploying the
    running app with new values: `/v1/model` shows them, and the wait is real: a lone pair
    waits out a 1.5 s batch window (by the test's clock) and no longer does once the window
    is back to 50 ms. (A Python `serve.run` gives each deploy a new code version, so Serve
    starts a new replica here; that a config file's `serve deploy` keeps it is shown in
    test_serve_cli.py.)"""
    monkeypatch.delenv("TIS_API_KEY", raising=False)  # the open app was built without a key
    pair = {"pairs": [{"image_url": image_server.url("photo/chelsea.jpg"), "caption": "a cat"}]}

    def timed_score() -> float:
        started = time.monotonic()
        status, body = call(f"{service}/open/v1/score", pair)
        assert status == 200 and body["results"][0]["error"] is None, body
        return time.monotonic() - started

    timed_score()  # warm: the first request pays for connections, not batching
    try:
        deploy_open(tiny_model, image_server, upstream, {"max_batch_size": 3, "batch_wait_ms": 1500})
        info = call(f"{service}/open/v1/model")[1]
        assert (info["max_batch_size"], info["batch_wait_ms"]) == (3, 1500.0)
        assert timed_score() >= 1.4  # a batch of one is sent only when the 1.5 s window closes
    finally:
        deploy_open(tiny_model, image_server, upstream, OPEN_BATCHING)
    info = call(f"{service}/open/v1/model")[1]
    assert (info["max_batch_size"], info["batch_wait_ms"]) == (16, 50.0)
    assert timed_score() < 1.4


# A replica's decode threads come from the CPUs Ray reserved for it: read, as a replica reads
# them, in actors given 0.5 and 2 CPUs (a Ray of its own with 2 free CPUs, so neither waits).
RESERVED_CPUS_PROBE = """
import ray
from tis_ray.serve import replica_decode_threads
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
class Replica:  # an actor, as a Serve replica is
    def threads(self):
        return replica_decode_threads()
for cpus in (0.5, 2):
    replica = ray.remote(num_cpus=cpus)(Replica).remote()
    print(cpus, ray.get(replica.threads.remote()))
    ray.kill(replica)
"""


def test_a_replicas_decode_threads_follow_the_cpus_it_reserves():
    ran = subprocess.run([sys.executable, "-c", RESERVED_CPUS_PROBE], env=loopback_ray_env(),
                         capture_output=True, text=True, timeout=240)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["0.5", "1", "2", "2"]  # at least one thread; one per whole CPU
