"""scripts/gpu_check.sh: it runs where it will be run, so the one GPU machine we are lent is not
spent finding out that it does not.

The lent machine has torch and transformers but no Ray, no pydantic, no install of tis-ray and
no package registry; only the working tree travels. So: the Ray-free part runs with `ray` and
`pydantic` made unimportable; `--smoke` runs both parts from a copy of the tree (tracked and
untracked-but-not-ignored files, what travels) with the copy's own tis_ray; and without CUDA
the check fails in one line instead of passing having checked nothing. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tis_ray.config import ModelConfig, PipelineConfig
from tis_ray.pool_sizing import plan_pools

REPO = Path(__file__).resolve().parents[1]
SMOKE_DTYPES, SMOKE_BATCH_SIZES, SMOKE_PAIRS = ("bfloat16", "float32"), (8, 16), 48


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Generated model and images, shared by the runs of this module."""
    return tmp_path_factory.mktemp("gpu-check-cache")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check runs instead")
def test_without_cuda_the_check_fails_in_one_line(tmp_path):
    done = run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 1
    lines = (done.stdout + done.stderr).splitlines()
    if torch.version.cuda is None:
        assert lines == [f"gpu_check: no CUDA device: torch {torch.__version__} was built without CUDA"]
    else:
        assert len(lines) == 1 and lines[0].startswith(f"gpu_check: no CUDA device: torch {torch.__version__} (CUDA ")
    assert not (tmp_path / "out").exists()


def test_ray_free_part_runs_where_ray_and_pydantic_cannot_be_imported(tmp_path, cache):
    blocked = tmp_path / "blocked"
    for name in ("ray", "pydantic"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by test_gpu_check')\n")
    env = {"PYTHONPATH": str(blocked)}
    for name in ("ray", "pydantic"):  # the block itself works, so the run below proves something
        probe = run([sys.executable, "-c", f"import {name}"], tmp_path, **env)
        assert probe.returncode == 1 and f"{name} is blocked by test_gpu_check" in probe.stderr

    out = tmp_path / "out"
    done = run([sys.executable, "scripts/gpu_check.py", "--smoke", "--out", str(out), "--cache-dir", str(cache)],
               REPO, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pipeline part skipped: Ray is not installed here" in done.stdout
    assert json.loads((out / "pipeline.json").read_text())["skipped"] == "Ray is not installed here"

    part = json.loads((out / "ray_free.json").read_text())
    imports = part["third_party_imports"]
    assert {"torch", "transformers", "numpy", "PIL"} <= set(imports)
    assert not {"ray", "pydantic"} & set(imports)
    assert not set(imports) & sys.stdlib_module_names and not {"tis_ray", "bench", "benchkit"} & set(imports)
    assert f"Ray-free part imported: {', '.join(imports)}" in done.stdout

    rows = part["model_only"]
    assert [(r["dtype"], r["batch_size"]) for r in rows] == [(d, b) for d in SMOKE_DTYPES for b in SMOKE_BATCH_SIZES]
    for r in rows:
        seconds = r["image_seconds"] + r["tokenise_seconds"] + r["text_seconds"]
        assert min(r["image_seconds"], r["tokenise_seconds"], r["text_seconds"]) > 0
        assert r["pairs_per_second"] == pytest.approx(r["pairs"] / seconds)
        assert r["peak_gpu_mib"] is None  # on CPU there is no GPU memory to report
        drift = r["max_abs_delta_similarity_vs_float32"]
        # bfloat16 keeps 8 bits of mantissa: its scores move, but by far less than their spread
        assert drift is None if r["dtype"] == "float32" else 0 < drift < 0.05
    assert part["tf32"] == {"matmul": False, "cudnn": False}
    overhead = part["scorer_overhead"]  # score() against the bare model calls, without Ray
    assert overhead["batch_size"] == max(SMOKE_BATCH_SIZES) and overhead["stage_overhead_ms"] is None
    assert overhead["score_overhead_ms"] == pytest.approx(overhead["score_ms"] - overhead["bare_ms"], abs=0.1)

    decode, feed = part["decode"], part["feed"]
    assert decode["images"] == SMOKE_PAIRS and decode["workers"] == os.cpu_count() and decode["reduced_decode"]
    assert decode["images_per_second"] == pytest.approx(decode["images"] / decode["seconds"])
    best = max((r for r in rows if r["dtype"] == "bfloat16"), key=lambda r: r["pairs_per_second"])
    assert (feed["model_pairs_per_second"], feed["model_batch_size"]) == (best["pairs_per_second"], best["batch_size"])
    slower, faster = sorted((decode["images_per_second"], best["pairs_per_second"]))
    assert feed["limit"] == ("decode" if decode["images_per_second"] == slower else "model")
    assert feed["ratio"] == pytest.approx(faster / slower)
    assert ("decode is the limit" if feed["limit"] == "decode" else "the model is the limit") in done.stdout


def copy_of_the_tree(folder: Path) -> Path:
    """What travels to the GPU machine: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    return folder


def test_smoke_runs_both_parts_from_a_copy_of_the_tree_without_an_install(tmp_path, cache):
    tree = copy_of_the_tree(tmp_path / "tree")
    done = run(["bash", str(tree / "scripts" / "gpu_check.sh"), "--smoke", "--cache-dir", str(cache)],
               tmp_path)  # started from another folder
    assert done.returncode == 0, done.stderr[-3000:]

    out = tree / "build" / "gpu-check"  # the default --out: written, and ignored by git
    ray_free, pipeline = (json.loads((out / name).read_text()) for name in ("ray_free.json", "pipeline.json"))
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=tree,
                               capture_output=True, text=True, check=True).stdout
    assert untracked == ""
    assert ray_free["tis_ray_source"] == str((tree / "tis_ray").resolve())  # the copy's, not the installed one
    # Ray and pydantic are installed here; the Ray-free part still loads neither (the pipeline part runs after it)
    assert not {"ray", "pydantic"} & set(ray_free["third_party_imports"])

    model_only = {r["batch_size"]: r["pairs_per_second"] for r in ray_free["model_only"] if r["dtype"] == "bfloat16"}
    rows = pipeline["rows"]
    assert [r["batch_size"] for r in rows] == list(SMOKE_BATCH_SIZES)
    model = str(Path(cache) / "model-tiny")
    for r in rows:
        planned = plan_pools(ModelConfig(model=model, device="cpu", dtype="bfloat16"),
                             PipelineConfig(batch_size=r["batch_size"]), pipeline["resources"], rows=SMOKE_PAIRS)
        assert (r["fetch_actors"], r["scorer_actors"]) == (planned.fetch_actors, 1)
        assert r["scored"] == r["pairs"] == SMOKE_PAIRS and r["errors"] == {}
        assert r["runtime"] == "cpu/bfloat16"
        assert r["model_only_pairs_per_second"] == model_only[r["batch_size"]]
        assert r["steady_pairs_per_second"] > 0
        assert r["steady_over_model_only"] == pytest.approx(r["steady_pairs_per_second"] / model_only[r["batch_size"]])
    assert "| bfloat16 | 16 | " in done.stdout.split("| start-up s |")[1]  # the pipeline table was printed
