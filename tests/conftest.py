"""Shared fixtures: tiny CLIP and SigLIP checkpoints built by our own script, real photos,
real HTTP servers on 127.0.0.1 with failure modes (tests/loopback.py), and one local Ray per session."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback import PHOTOS, ImageServer, free_port

REPO = Path(__file__).resolve().parent.parent

# Ray's default for local clusters is token authentication. The suite keeps it on for every
# Ray it starts and shares one token the way a user shares it with each shell and node
# (README, "On a Ray cluster"): RAY_AUTH_MODE=token, so that clients such as `ray job submit`
# send it too (Ray 2.60's clients only send it in token mode), and RAY_AUTH_TOKEN.
os.environ["RAY_AUTH_MODE"] = "token"
RAY_TOKEN = os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))


def ray_token_header() -> dict[str, str]:
    """What an HTTP client of the dashboard (Jobs API, Serve's REST API) must send."""
    return {"Authorization": f"Bearer {RAY_TOKEN}"}
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina")


def build_test_model(tmp_path_factory, arch: str) -> str:
    """A random-weight checkpoint in Hugging Face format, built by scripts/make_test_model.py."""
    out = tmp_path_factory.mktemp("models") / arch
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_test_model.py"), str(out), "--arch", arch],
        check=True, capture_output=True,
    )
    return str(out)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-weight CLIP (openai/clip-vit-base-patch32's tokenizer and preprocessing)."""
    return build_test_model(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def siglip_model(tmp_path_factory) -> str:
    """A random-weight SigLIP (google/siglip-base-patch16-224's layout and preprocessing)."""
    return build_test_model(tmp_path_factory, "siglip-tiny")


@pytest.fixture(scope="session")
def siglip2_model(tmp_path_factory) -> str:
    """A random-weight fixed-resolution SigLIP 2 (google/siglip2-base-patch16-224's layout)."""
    return build_test_model(tmp_path_factory, "siglip2-tiny")


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Real photographs shipped in examples/images (scikit-image sample data)."""
    return {name: PHOTOS / f"{name}.jpg" for name in PHOTO_NAMES}


PACED_ROWS = 128
PACED_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


@dataclass(frozen=True)
class PacedJob:
    """An input whose row i is fetched from /paced/<i>/<photo> on `server` (set ``server.pace_s``
    to slow it down), and the output of one uninterrupted run, scored in batches of 8."""

    server: ImageServer
    source: Path
    rows: int
    uninterrupted: bytes


@pytest.fixture(scope="session")
def paced_job(tmp_path_factory, tiny_model, local_ray):
    """For the tests that interrupt or fault a job and compare it with an uninterrupted run."""
    import csv

    from tis_ray import score_file
    from tis_ray.config import ModelConfig, PipelineConfig

    server = ImageServer()
    folder = tmp_path_factory.mktemp("paced")
    source = folder / "pairs.csv"
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "image_url", "caption"])
        for i in range(PACED_ROWS):
            photo = PACED_PHOTOS[i % len(PACED_PHOTOS)]
            writer.writerow([i, server.url(f"paced/{i}/{photo}.jpg"), f"photo {i}, a {photo}"])
    score_file(str(source), str(folder / "uninterrupted.csv"), progress=False,
               model=ModelConfig(model=tiny_model, device="cpu", dtype="float32"),
               pipeline=PipelineConfig(batch_size=8))
    yield PacedJob(server, source, PACED_ROWS, (folder / "uninterrupted.csv").read_bytes())
    server.close()


@pytest.fixture(scope="session")
def image_server():
    """One image server for the whole session: for tests that count only their own requests."""
    with ImageServer() as server:
        yield server


@pytest.fixture
def loopback():
    """A fresh image server per test, for tests that assert what reached it at all: its
    request log and connection count start empty."""
    with ImageServer() as server:
        yield server


@pytest.fixture
def hop_server():
    """A second fresh image server, for a redirect's first hop (``/goto?url=<next hop>``)
    when `loopback` is the server that must see nothing."""
    with ImageServer() as server:
        yield server


def loopback_ray_env(**extra) -> dict:
    """The environment for Ray processes of a cluster that lives on 127.0.0.1.

    Ray swaps a 127.0.0.1 cluster address for the machine's outward IP unless told
    this is a single-machine cluster; that flag keeps every Ray connection on loopback.
    """
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}


@pytest.fixture(scope="session")
def ray_metrics_port() -> int:
    """Where the session's Ray serves Prometheus metrics, on 127.0.0.1."""
    return free_port()


@pytest.fixture(scope="session")
def local_ray(ray_metrics_port):
    """One real local Ray for the whole session (2 CPUs, like the CI machine)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _metrics_export_port=ray_metrics_port,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real head started with `ray start --head --block` on loopback, as an operator
    starts one, for the tests that talk to a cluster through Ray's own CLIs (`serve
    deploy`, `ray job submit`). Stopped by killing that command's process group, so
    only this head's processes end (`ray stop` would end every Ray on the machine).
    It keeps its files in a temp folder of its own (short: socket paths must fit in
    107 bytes): in /tmp/ray, its address file would make every bare `ray.init()` on
    this machine join it, and, left behind by the killed head, try a dead cluster."""
    gcs, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    temp_dir = tempfile.mkdtemp(prefix="rayhead-")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
             # their defaults are fixed ports, which another Ray on this machine may hold
             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=loopback_ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                probe = urllib.request.Request(f"{address}/api/version", headers=ray_token_header())
                with urllib.request.urlopen(probe, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"ray start failed:\n{log.read_text()[-3000:]}") from None
                time.sleep(1)
        yield {"dashboard": address, "gcs": f"127.0.0.1:{gcs}"}
    finally:
        # SIGTERM ends Ray's processes in a few seconds; `ray start --block` itself
        # lingers for half a minute, so the group gets SIGKILL after a short grace.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
