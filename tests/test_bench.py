"""scripts/bench.py --quick and scripts/gpu_check.sh run end to end, so neither can rot.

No timing is asserted: these check that every contender ran on every row, that the
report holds what it claims, and that tis-ray's scores agree with the baseline's
(the challenge approach, plain transformers) on the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHON": sys.executable}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_bench_quick_measures_every_contender_and_writes_the_report(tmp_path):
    out, plots, results = tmp_path / "benchmarks.md", tmp_path / "images", tmp_path / "bench.json"
    out.write_text("# Benchmarks\n\nHand-written notes stay.\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nEnd.\n")
    done = run([sys.executable, "scripts/bench.py", "--quick", "--cache-dir", str(tmp_path / "cache"),
                "--out", str(out), "--plots", str(plots), "--json", str(results)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads(results.read_text())
    pairs = report["settings"]["pairs"]
    seen = {(r["name"], r["latency_ms"]) for r in report["runs"]}
    assert seen == {("model_only", 0), ("baseline", 0), ("tis_ray", 0), ("baseline", 20), ("tis_ray", 20)}
    for result in report["runs"] + report["sweep"] + report["levers"]:
        assert result["seconds"] > 0 and result["memory"]["total_mb"]
        if result["name"] != "model_only":
            assert result["scored"] == result["pairs"]
    assert [r["pairs"] for r in report["sweep"]] == [96]
    assert {r["lever"] for r in report["levers"]} == {"float32 instead of the fast dtype", "whole-image decode"}
    tis_ray_runs = [r for r in report["runs"] if r["name"] == "tis_ray"]
    assert all(r["memory"]["ray_mb"] > 0 for r in tis_ray_runs)  # the Ray workers were measured too

    # Same rows, same order: tis-ray (bfloat16, reduced decode) against the float32 baseline.
    baseline = next(r for r in report["runs"] if r["name"] == "baseline")["cosine"]
    ours = tis_ray_runs[0]["cosine"]
    assert len(ours) == len(baseline) == pairs
    assert max(abs(a - b) for a, b in zip(ours, baseline)) < 1e-2 < max(baseline) - min(baseline)

    assert {(r["set"], r["lever"]) for r in report["accuracy"]} >= {("real photos", "reduced-size decode (float32)")}
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written notes stay.") and text.endswith("End.\n")
    assert "old" not in text and "| 0 ms | " in text and "| 20 ms | " in text
    for name in ("throughput-vs-latency.png", "throughput-memory-vs-pairs.png"):
        with Image.open(plots / name) as image:
            assert image.format == "PNG" and image.width > 300
        assert f"images/{name}" in text


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    done = run(["bash", "scripts/gpu_check.sh"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no CUDA device here; skipping" in done.stdout


def test_gpu_check_smoke_runs_its_measurements_on_cpu(tmp_path):
    done = run(["bash", "scripts/gpu_check.sh", "--smoke", "--cache-dir", str(tmp_path / "cache")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| bfloat16 |") or line.startswith("| float32 |")]
    assert len(table) == 4
    assert "max |delta similarity| bfloat16 vs float32 over 24 pairs" in done.stdout
