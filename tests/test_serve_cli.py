"""The service as an operator runs it: `tis-ray serve` in the foreground, and the
shipped Serve config deployed with the real `serve deploy` to a `ray start` head."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, loopback_ray_env
from reference import reference_similarities

from tis_ray.errors import error_kind

BIN = Path(sys.executable).parent


def _post(url: str, payload: dict, timeout: float = 60):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def _wait_for(url: str, payload: dict, seconds: float, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + seconds
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited early:\n{process.stdout.read()[-3000:]}")
        try:
            return _post(url, payload)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_tis_ray_serve_answers_and_stops_on_ctrl_c(tiny_model, image_server, photos):
    port = free_port()
    image_port = image_server.httpd.server_address[1]
    process = subprocess.Popen(
        [str(BIN / "tis-ray"), "serve", "--model", tiny_model, "--device", "cpu", "--dtype", "float32",
         "--port", str(port), "--allow-hosts", f"localhost:{image_port}"],
        env=loopback_ray_env(RAY_ADDRESS="local"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        payload = {"pairs": [
            {"image_url": f"http://localhost:{image_port}/photo/chelsea.jpg", "caption": "a cat"},
            {"image_url": f"http://127.0.0.1:{image_port}/photo/chelsea.jpg?not-allowed", "caption": "a cat"},
            {"image_url": f"http://0x7f000001:{image_port}/photo/chelsea.jpg?not-allowed", "caption": "a cat"},
        ]}
        status, body = _wait_for(f"http://127.0.0.1:{port}/v1/score", payload, 180, process)
        assert status == 200
        want = reference_similarities(tiny_model, [photos["chelsea"]], ["a cat"])[0]
        assert abs(body["results"][0]["similarity"] - want) <= 1e-4
        # Loopback by IP, in two spellings: refused before any connection (the server saw neither).
        # Other internal forms (169.254.169.254, ...) are checked through netguard itself, never dialled.
        assert [error_kind(r["error"]) for r in body["results"][1:]] == ["blocked_address", "blocked_address"]
        assert "/photo/chelsea.jpg?not-allowed" not in image_server.requests
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "shutting down" in output


def test_shipped_serve_config_deploys_with_serve_deploy(ray_head, tiny_model, photos, tmp_path):
    config = yaml.safe_load((REPO / "deploy" / "serve-cpu.yaml").read_text())
    http_port = free_port()
    config["http_options"]["port"] = http_port
    app = config["applications"][0]
    app["args"]["model"] = tiny_model  # the offline stand-in for the hub model
    app["args"]["dtype"] = "float32"
    app["deployments"][0]["ray_actor_options"]["num_cpus"] = 0.5
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(path), "-a", ray_head["dashboard"]],
                            env=loopback_ray_env(), capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    image = base64.b64encode(photos["coffee"].read_bytes()).decode()
    status, body = _wait_for(f"http://127.0.0.1:{http_port}/v1/score",
                             {"pairs": [{"image_base64": image, "caption": "a cup of coffee"}]}, 180)
    assert status == 200
    want = reference_similarities(tiny_model, [photos["coffee"]], ["a cup of coffee"])[0]
    assert abs(body["results"][0]["similarity"] - want) <= 1e-4
    state = subprocess.run([str(BIN / "serve"), "status", "-a", ray_head["dashboard"]],
                           env=loopback_ray_env(), capture_output=True, text=True, timeout=60)
    assert "RUNNING" in state.stdout, state.stdout + state.stderr

    # README: batch size and wait change "without restarting replicas". The same file with a new
    # user_config, deployed again: /v1/model shows the new values, served by the same processes.
    replicas = _replica_processes(ray_head["dashboard"])
    assert replicas, "no running ScoringService replica"
    app["deployments"][0]["user_config"] = {"max_batch_size": 7, "batch_wait_ms": 250}
    path.write_text(yaml.safe_dump(config))
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(path), "-a", ray_head["dashboard"]],
                            env=loopback_ray_env(), capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    deadline = time.monotonic() + 120
    while (shown := _get_json(f"http://127.0.0.1:{http_port}/v1/model")) and (
            shown["max_batch_size"], shown["batch_wait_ms"]) != (7, 250.0):
        assert time.monotonic() < deadline, f"the new user_config never showed: {shown}"
        time.sleep(1)
    assert _replica_processes(ray_head["dashboard"]) == replicas


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _replica_processes(dashboard: str) -> set[tuple[str, int]]:
    """(actor id, pid) of every live ScoringService replica, from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, detail=True, limit=1000, raise_on_missing_output=False)
    return {(a.actor_id, a.pid) for a in actors if a.state == "ALIVE" and "ScoringService" in a.class_name}


@pytest.mark.parametrize("name", ["serve-gpu.yaml", "serve-cpu.yaml"])
def test_shipped_serve_configs_validate_against_serve_schema(name):
    from ray.serve.schema import ServeDeploySchema

    from tis_ray.serve import APP_ARGS, ServeArgs

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy" / name).read_text()))
    app = config.applications[0]
    assert app.import_path == "tis_ray.serve:build_app"
    assert set(app.args) <= set(APP_ARGS)
    ServeArgs.model_validate(app.args)  # what Serve does with them before it calls build_app
    deployment = app.deployments[0]
    assert deployment.name == "ScoringService"
    assert set(deployment.user_config) == {"max_batch_size", "batch_wait_ms"}
    assert (deployment.ray_actor_options.num_gpus or 0) == (1 if "gpu" in name else 0)
