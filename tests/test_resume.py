"""Resume and redo as a user meets them: a real `tis-ray score` process interrupted with
SIGINT or killed with SIGKILL part-way, then `--resume`; and `--retry-errors` after a
server that failed once. Real Ray, real HTTP on 127.0.0.1, the tiny CLIP."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import PACED_PHOTOS, ImageServer
from conftest import PACED_ROWS as ROWS
from figures import record_figures
from jobs import assert_stats_add_up, read_output, rows_durable, run_cli
from reference import reference_similarities

from tis_ray.cli import main
from tis_ray.errors import error_kind, is_retryable


@pytest.fixture(scope="module")
def job(paced_job, tiny_model, local_ray):
    """The paced input, the command's arguments, its environment and the uninterrupted output."""
    # One fetch at a time through one fetch actor, and a part for every scored block, so
    # that a paced server makes the run slow enough to interrupt between parts.
    args = ["--model", tiny_model, "--device", "cpu", "--dtype", "float32", "--batch-size", "8",
            "--fetch-actors", "1", "--fetch-concurrency", "1", "--checkpoint-every", "0"]
    env = {"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    return paced_job.source, args, env, paced_job.uninterrupted


@pytest.fixture(scope="module")
def server(paced_job):
    return paced_job.server


def _fetched_rows(server: ImageServer, since: int) -> Counter:
    return Counter(int(path.split("/")[2]) for path in server.requests[since:] if path.startswith("/paced/"))


def _interrupt_part_way(source, output, args, env, server, signum, after_rows=0) -> tuple[int, str]:
    """Start the command against a slow server; signal it once parts cover more than `after_rows`."""
    server.pace_s = 0.05
    process = subprocess.Popen([sys.executable, "-m", "tis_ray", "score", str(source), "-o", str(output), *args],
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    try:
        while rows_durable(output) <= after_rows:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint part within 180 s"
            time.sleep(0.1)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        server.pace_s = 0.0
    return process.returncode, stderr


def test_interrupted_twice_then_resumed_equals_an_uninterrupted_run(job, server, tmp_path, capsys):
    """SIGINT part-way, --resume killed with SIGKILL part-way, --resume again: each run
    fetches only the rows no durable part covers, and the output is byte-identical."""
    source, args, env, uninterrupted = job
    output = tmp_path / "scored.csv"
    parts = f"{output}.parts"

    returncode, stderr = _interrupt_part_way(source, output, args, env, server, signal.SIGINT)
    assert returncode == 130 and "--resume" in stderr and "Traceback" not in stderr, stderr[-3000:]
    done_by_first = rows_durable(output)
    assert 0 < done_by_first < ROWS
    _refuses_to_start_over_or_to_mix_jobs(source, output, args, capsys)

    requests_before = len(server.requests)
    returncode, _ = _interrupt_part_way(source, output, [*args, "--resume"], env, server, signal.SIGKILL,
                                        after_rows=done_by_first)
    assert returncode == -signal.SIGKILL
    assert min(_fetched_rows(server, requests_before)) == done_by_first
    done_by_second = rows_durable(output)
    assert done_by_first < done_by_second < ROWS
    assert not output.exists()  # never half-written

    requests_before = len(server.requests)
    result = run_cli("score", str(source), "-o", str(output), *args, "--resume", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.read_bytes() == uninterrupted
    fetched = _fetched_rows(server, requests_before)
    # (a row may show twice: the killed driver's fetch actor can still be finishing a request)
    assert set(fetched) == set(range(done_by_second, ROWS))
    stats = assert_stats_add_up(output, ROWS)
    assert (stats["mode"], stats["rows_carried_over"]) == ("resumed", done_by_second)
    assert not os.path.exists(parts)
    record_figures("resume", {"rows_in": ROWS, "rows_out": stats["rows"], "interrupts": ["SIGINT", "SIGKILL"],
                              "rows_durable_after_sigint": done_by_first, "rows_durable_after_sigkill": done_by_second,
                              "rows_fetched_by_last_resume": len(fetched), "byte_identical_to_uninterrupted": True})


def _refuses_to_start_over_or_to_mix_jobs(source, output, args, capsys):
    """A checkpoint is neither thrown away silently nor finished with other settings (checked
    before Ray starts, so the command's own `main` is called here, not a new process)."""
    capsys.readouterr()
    assert main(["score", str(source), "-o", str(output), *args]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["score", str(source), "-o", str(output), *args, "--resume", "--timeout", "3"]) == 2
    assert "timeout_s (10.0 then, 3.0 now)" in capsys.readouterr().err
    assert not output.exists()


def test_retry_errors_refetches_only_retryable_failures_and_merges_them_in_place(
        server, tmp_path, tiny_model, photos, local_ray):
    rows = [(server.url(f"photo/{name}.jpg"), f"a {name}", None) for name in PACED_PHOTOS]
    rows += [(server.url(f"flaky/redo-{k}/{name}.jpg"), f"again a {name}", name)
             for k, name in enumerate(PACED_PHOTOS[:3])]
    rows += [(server.url("status/404"), "gone for good", None), (server.url("status/503"), "still down", None),
             ("no-such.jpg", "not a file", None)]
    source = tmp_path / "pairs.csv"
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows([("image_url", "caption"), *((url, caption) for url, caption, _ in rows)])
    args = ["--model", tiny_model, "--device", "cpu", "--dtype", "float32", "--retries", "0"]
    env = {"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    first = tmp_path / "first.csv"
    assert run_cli("score", str(source), "-o", str(first), *args, env=env).returncode == 0
    before = read_output(first)
    kinds = [error_kind(e) for e in before.column("error").to_pylist()]
    assert kinds == [None] * 4 + ["http_500"] * 3 + ["http_404", "http_503", "file_not_found"]

    requests_before = len(server.requests)
    second = tmp_path / "second.csv"
    result = run_cli("score", str(source), "-o", str(second), *args, "--retry-errors", str(first), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    refetched = Counter(server.requests[requests_before:])
    assert refetched == Counter(["/flaky/redo-0/chelsea.jpg", "/flaky/redo-1/coffee.jpg", "/flaky/redo-2/rocket.jpg",
                                 "/status/503"])
    after = read_output(second)
    redone = range(4, 7)
    for i in set(range(len(rows))) - set(redone):
        assert after.slice(i, 1).equals(before.slice(i, 1)), i  # every other row untouched
    want = reference_similarities(tiny_model, [photos[rows[i][2]] for i in redone], [rows[i][1] for i in redone])
    for i, expected in zip(redone, want):
        assert after.column("error")[i].as_py() == ""  # read_output reads an empty error as ""
        assert abs(after.column("similarity")[i].as_py() - expected) <= 1e-4
    stats = assert_stats_add_up(second, len(rows))
    assert (stats["mode"], stats["rows_carried_over"], stats["rows_scored_now"]) == ("retry_errors", 6, 4)
    record_figures("retry_errors", {
        "rows_in": len(rows), "rows_out": stats["rows"], "failed_first": sum(k is not None for k in kinds),
        "retryable": sum(is_retryable(k) for k in kinds), "refetched": sum(refetched.values()),
        "recovered": len(redone), "other_rows_unchanged": len(rows) - len(redone)})


def test_retry_errors_in_place_on_parquet_with_cosine_and_its_stats(image_server, tmp_path, tiny_model, photos,
                                                                    local_ray):
    """`--retry-errors` writing back to the previous output itself, a Parquet one with a
    ``cosine`` column: the re-scored rows get both columns right (against transformers' own
    CLIP), the other rows are untouched, and the stats file names the input (not the
    output), counts only the re-scored rows' truncated captions, and times this run by a
    clock the test holds."""

    import pyarrow.parquet as pq
    from reference import reference_cosines

    from tis_ray import retry_errors, score_file
    from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig

    long_caption = "a very long caption about a small cat " * 40  # far past the tiny model's 77 tokens
    rows = [
        (image_server.url("photo/chelsea.jpg"), long_caption),  # fine at once: carried, truncated
        (image_server.url("flaky/redo-inplace-1/coffee.jpg"), long_caption),  # 500, then fine: truncated
        (image_server.url("flaky/redo-inplace-2/rocket.jpg"), "a rocket"),  # 500, then fine
        (image_server.url("status/404"), "gone"),  # not retryable
    ]
    source = tmp_path / "pairs.csv"
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows([("image_url", "caption"), *rows])
    output = tmp_path / "scored.parquet"
    settings = {"model": ModelConfig(model=tiny_model, device="cpu", dtype="float32"),
                "fetch": FetchConfig(timeout_s=5.0, retries=0), "progress": False}
    score_file(str(source), str(output), pipeline=PipelineConfig(with_cosine=True), **settings)
    before = pq.read_table(output)
    assert [error_kind(e) for e in before.column("error").to_pylist()] == [None, "http_500", "http_500", "http_404"]

    started = time.monotonic()
    retry_errors(str(source), str(output), str(output), **settings)
    wall = time.monotonic() - started

    after = pq.read_table(output)
    assert after.column_names == ["image_url", "caption", "similarity", "cosine", "error"]
    for i in (0, 3):
        assert after.slice(i, 1).equals(before.slice(i, 1)), i
    want = reference_cosines(tiny_model, [photos["coffee"], photos["rocket"]], [long_caption, "a rocket"])
    for i, cosine in zip((1, 2), want):
        assert after.column("error")[i].as_py() is None
        assert abs(after.column("cosine")[i].as_py() - cosine) <= 1e-4
        assert abs(after.column("similarity")[i].as_py() - (cosine + 1) / 2) <= 1e-4

    stats = assert_stats_add_up(output, len(rows))
    assert stats["input"] == str(source.resolve()) != stats["output"]
    assert (stats["mode"], stats["rows_carried_over"], stats["rows_scored_now"]) == ("retry_errors", 2, 2)
    assert stats["truncated_captions"] == 1  # row 1; row 0's truncation was the first run's
    assert 0 < stats["seconds"] <= wall + 0.01
    # rows scored now over this run's seconds, and no faster than the test's own clock allows
    assert abs(stats["pairs_per_second"] * stats["seconds"] - 2) <= 0.005 * stats["seconds"] + 0.01  # 2-place rounding
    assert stats["pairs_per_second"] >= 2 / wall * 0.99
