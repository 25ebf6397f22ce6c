"""The scale-to-zero Serve config, deployed with the real `serve deploy` to a `ray start`
head on loopback: no replica while idle, and a request after the idle delay still
succeeds (a cold start: a replica starts and loads the model for it)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, loopback_ray_env
from reference import reference_similarities

BIN = Path(sys.executable).parent
CONFIG = REPO / "deploy" / "serve-scale-to-zero.yaml"


def test_the_scale_to_zero_config_validates_against_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    from tis_ray.serve import APP_ARGS

    app = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text())).applications[0]
    assert app.import_path == "tis_ray.serve:build_app" and set(app.args) <= set(APP_ARGS)
    scaling = app.deployments[0].autoscaling_config
    assert scaling["min_replicas"] == 0 and scaling["downscale_to_zero_delay_s"] <= 600


def _app(dashboard: str) -> dict:
    """The application's status, as `serve status` reports it."""
    done = subprocess.run([str(BIN / "serve"), "status", "-a", dashboard], env=loopback_ray_env(),
                          capture_output=True, text=True, timeout=60)
    return ((yaml.safe_load(done.stdout) or {}).get("applications") or {}).get("tis-ray") or {}


def _replicas(dashboard: str) -> dict[str, int]:
    """The deployment's replicas by state."""
    return (_app(dashboard).get("deployments") or {}).get("ScoringService", {}).get("replica_states") or {}


def _score(url: str, payload: dict) -> tuple[dict, float]:
    """One request (waiting as long as a cold start takes) and its seconds."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read()), time.monotonic() - started


def _wait_until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(2)


@pytest.mark.integration
def test_scales_to_zero_when_idle_and_answers_from_zero(ray_head, tiny_model, photos, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    http_port = free_port()
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app = config["applications"][0]
    app["args"].update(model=tiny_model, device="cpu", dtype="float32")  # the offline, CPU stand-in
    deployment = app["deployments"][0]
    deployment["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
    # The shipped idle delay, shortened; one replica up at first, so the scale-down is seen.
    deployment["autoscaling_config"].update(downscale_to_zero_delay_s=5, initial_replicas=1)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(path), "-a", ray_head["dashboard"]],
                            env=loopback_ray_env(), capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    url = f"http://127.0.0.1:{http_port}/v1/score"
    payload = {"pairs": [{"image_base64": base64.b64encode(photos["rocket"].read_bytes()).decode(),
                          "caption": "a rocket"}]}
    want = reference_similarities(tiny_model, [photos["rocket"]], ["a rocket"])[0]
    try:
        _wait_until(lambda: _app(ray_head["dashboard"]).get("status") == "RUNNING", 180, "running app")
        # Idle from the start: once the idle delay has passed, the replica goes.
        _wait_until(lambda: not _replicas(ray_head["dashboard"]), 180, "scale-down to zero replicas")
        body, seconds = _score(url, payload)  # from zero: a replica starts and loads the model for it
        assert abs(body["results"][0]["similarity"] - want) <= 1e-4
        assert _replicas(ray_head["dashboard"]).get("RUNNING") == 1
        print(f"cold start: {seconds:.1f} s")  # docs/integrations.md records what it measured
    finally:
        subprocess.run([str(BIN / "serve"), "shutdown", "-y", "-a", ray_head["dashboard"]],
                       env=loopback_ray_env(), capture_output=True, timeout=120)

