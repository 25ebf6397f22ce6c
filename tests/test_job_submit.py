"""The batch job as a user submits it to a cluster: `ray job submit` with a working
directory and a runtime environment, against a real `ray start` head on loopback."""

from __future__ import annotations

import json
import subprocess

from conftest import REPO, loopback_ray_env
from job_rows import check_scored, read_scored_csv, sample_rows, write_pairs_csv
from jobs import assert_stats_add_up


def test_ray_job_submit_scores_a_file_on_the_cluster(ray_head, tiny_model, image_server, photos, tmp_path):
    rows = sample_rows(image_server, photos)
    write_pairs_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "pairs.scored.csv"
    runtime_env = {"env_vars": {"TIS_MODEL": tiny_model}}  # the model reaches the job as a user passes it
    job = subprocess.run(
        ["ray", "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "tis_ray", "score", str(tmp_path / "pairs.csv"), "-o", str(out),
         "--device", "cpu", "--dtype", "float32", "--timeout", "5", "--retries", "1"],
        env=loopback_ray_env(), capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout, job.stdout[-3000:]
    assert f"rows: {len(rows)}" in job.stdout and f"model: {tiny_model} on cpu/float32" in job.stdout
    check_scored(read_scored_csv(out), rows, tiny_model, photos)
    assert_stats_add_up(out, len(rows))


def test_the_head_refuses_clients_without_its_token(ray_head, tmp_path):
    """Ray's token authentication is on (its default), so the Jobs API, which runs code on the
    cluster, is closed to anyone who reaches the port without the token."""
    import urllib.error
    import urllib.request

    from conftest import ray_token_header

    jobs = f"{ray_head['dashboard']}/api/jobs/"
    try:
        urllib.request.urlopen(jobs, timeout=10)
        raise AssertionError("the Jobs API answered a request without the token")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401
    with urllib.request.urlopen(urllib.request.Request(jobs, headers=ray_token_header()), timeout=10) as ok:
        assert ok.status == 200

    # The CLI of someone who has no token (no RAY_AUTH_* settings, a HOME without ~/.ray/auth_token)
    # sends none, and the head refuses it.
    env = {k: v for k, v in loopback_ray_env(HOME=str(tmp_path)).items() if not k.startswith("RAY_AUTH_")}
    listed = subprocess.run(["ray", "job", "list", "--address", ray_head["dashboard"]],
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode != 0
    assert "unauthorized" in (listed.stdout + listed.stderr).lower(), listed.stderr[-2000:]
    # With it, as README says: the same command works.
    listed = subprocess.run(["ray", "job", "list", "--address", ray_head["dashboard"]],
                            env=loopback_ray_env(HOME=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
