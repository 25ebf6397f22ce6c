"""The service under load, in a reduced and bounded form: real Ray Serve on 127.0.0.1, an
aiohttp client keeping many requests in flight, the tiny CLIP.

What a client may see (docs/reliability.md): a 200 whose body is a valid `ScoreResponse`;
a 503 when the replicas' queues are full (Serve's ``max_queued_requests``) or no replica
is up; a 500 for a request that was inside a replica when that replica died. Anything
else (a 200 with another body, a 4xx for a valid request, a dropped connection, a hang
past the client's timeout) is malformed, and there must be none.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
import ray._private.state  # the GCS actor table; the state API needs a dashboard this Ray does not run
from conftest import free_port
from figures import record_figures
from PIL import Image
from pydantic import ValidationError

from tis_ray.config import SERVE_MAX_ONGOING_REQUESTS, SERVE_MAX_QUEUED_REQUESTS
from tis_ray.http_api import ScoreResponse
from tis_ray.serve import ScoringService, ServeArgs

REQUEST_TIMEOUT_S = 60
RECOVERY_S = 180


@dataclass(frozen=True)
class Outcome:
    kind: str  # ok, shed (503), failed (500), malformed
    status: int | None
    latency_s: float
    detail: str = ""


@pytest.fixture(scope="module")
def service(local_ray, tiny_model):
    """Two apps: one with the shipped limits (`held`), one with tiny limits to overload (`tight`)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = ServeArgs.model_validate({"model": tiny_model, "device": "cpu", "dtype": "float32"}).service_options()
    small = {"num_cpus": 0.25}
    serve.run(ScoringService.options(ray_actor_options=small).bind(**args), name="held", route_prefix="/held")
    serve.run(ScoringService.options(ray_actor_options=small, max_ongoing_requests=4, max_queued_requests=8)
              .bind(**args), name="tight", route_prefix="/tight")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def payload(photos) -> dict:
    """One pair with a real photo, small, sent inline so the load is on the service alone."""
    with Image.open(photos["chelsea"]) as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize((96, 64)).save(buffer, format="JPEG")
    return {"pairs": [{"image_base64": base64.b64encode(buffer.getvalue()).decode(), "caption": "a cat"}]}


def classify(status: int, body: bytes) -> tuple[str, str]:
    if status == 200:
        try:
            response = ScoreResponse.model_validate_json(body)
        except ValidationError as exc:
            return "malformed", f"200 with an invalid body: {exc}"
        results = response.results
        if len(results) == 1 and results[0].error is None and results[0].similarity is not None:
            return "ok", ""
        return "malformed", f"200 without one score: {body[:200]!r}"
    if status == 503:
        return "shed", ""
    if status == 500:
        return "failed", body[:200].decode(errors="replace")
    return "malformed", f"{status}: {body[:200]!r}"


async def send_load(url: str, payload: dict, total: int, concurrency: int, on_outcome=None) -> list[Outcome]:
    """`total` requests, `concurrency` in flight at all times; every one ends within the timeout."""
    outcomes: list[Outcome] = []
    remaining = iter(range(total))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def worker(session: aiohttp.ClientSession):
        for _ in remaining:
            started = time.monotonic()
            try:
                async with session.post(url, json=payload) as response:
                    kind, detail = classify(response.status, await response.read())
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                kind, detail, status = "malformed", f"{type(exc).__name__}: {exc}", None
            outcomes.append(Outcome(kind, status, time.monotonic() - started, detail))
            if on_outcome is not None:
                on_outcome(outcomes)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return outcomes


def _no_malformed(outcomes: list[Outcome]) -> Counter:
    malformed = [o for o in outcomes if o.kind == "malformed"]
    assert not malformed, malformed[:5]
    return Counter(o.kind for o in outcomes)


def _percentile_ms(outcomes: list[Outcome], q: float) -> float:
    return round(1000 * float(np.percentile([o.latency_s for o in outcomes], q)), 1)


LOAD = {"requests": 400, "concurrency": 64}


def test_load_within_limits_is_all_answered(service, payload):
    started = time.monotonic()
    outcomes = asyncio.run(send_load(f"{service}/held/v1/score", payload, LOAD["requests"], LOAD["concurrency"]))
    seconds = time.monotonic() - started
    counts = _no_malformed(outcomes)
    assert counts == {"ok": LOAD["requests"]}, counts
    figures = {**LOAD, "ok": counts["ok"], "p50_ms": _percentile_ms(outcomes, 50),
               "p99_ms": _percentile_ms(outcomes, 99), "requests_per_s": round(len(outcomes) / seconds, 1),
               "max_ongoing_requests": SERVE_MAX_ONGOING_REQUESTS, "max_queued_requests": SERVE_MAX_QUEUED_REQUESTS}
    print(f"held load: {figures}")
    record_figures("serve_load", figures)


def test_overload_beyond_the_queue_is_answered_503(service, payload):
    outcomes = asyncio.run(send_load(f"{service}/tight/v1/score", payload, 200, 64))
    counts = _no_malformed(outcomes)
    # 64 in flight against 4 ongoing + 8 queued: the rest must be shed, and what is taken must be scored
    assert counts["shed"] > 0 and counts["ok"] > 0 and counts["failed"] == 0, counts
    figures = {"requests": 200, "concurrency": 64, "max_ongoing_requests": 4, "max_queued_requests": 8,
               "ok": counts["ok"], "shed_503": counts["shed"], "p99_ms": _percentile_ms(outcomes, 99)}
    print(f"overload: {figures}")
    record_figures("serve_overload", figures)


def _replica(app: str) -> int | None:
    """The pid of this Ray's live replica of `app`."""
    for info in ray._private.state.actors().values():
        if info["ActorClassName"] == f"ServeReplica:{app}:ScoringService" and info["State"] == "ALIVE" and info["Pid"]:
            return info["Pid"]
    return None


def test_replica_killed_under_load_recovers_without_malformed_responses(service, payload):
    url = f"{service}/held/v1/score"
    victim = _replica("held")
    assert victim is not None
    killed = []

    def kill_once_load_is_flowing(outcomes):
        if not killed and len(outcomes) >= 40:
            os.kill(victim, signal.SIGKILL)
            killed.append(len(outcomes))

    during = asyncio.run(send_load(url, payload, 300, 16, on_outcome=kill_once_load_is_flowing))
    assert killed, "the load ended before the replica was killed"
    deadline = time.monotonic() + RECOVERY_S
    after: list[Outcome] = []
    while not after or after[-1].kind != "ok":
        assert time.monotonic() < deadline, f"no recovery within {RECOVERY_S} s: {after[-3:]}"
        time.sleep(0.5)
        after += asyncio.run(send_load(url, payload, 1, 1))
    recovered_in_s = round(time.monotonic() + RECOVERY_S - deadline, 1)
    settled = asyncio.run(send_load(url, payload, 100, 16))
    counts = _no_malformed(during + after)
    assert _no_malformed(settled) == {"ok": 100}
    assert _replica("held") not in (None, victim)  # Serve started a new replica
    figures = {"requests_during": len(during), "killed_after": killed[0], "ok": counts["ok"],
               "failed_500": counts["failed"], "shed_503": counts["shed"], "malformed": 0,
               "seconds_to_recover_after_load": recovered_in_s, "requests_after_recovery_ok": 100}
    print(f"replica kill: {figures}")
    record_figures("serve_replica_kill", figures)
