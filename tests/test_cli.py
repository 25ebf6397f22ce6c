"""The `tis-ray` command as a user runs it: a real subprocess, real Ray, real HTTP."""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import REPO, free_port
from jobs import assert_stats_add_up, read_output, run_cli
from reference import reference_similarities, tolerance
from shard_files import good_shard

from tis_ray.errors import error_kind


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tis-ray: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_input_is_one_clear_line(tmp_path):
    _one_line_error(run_cli("score", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.csv")), "no such file")


def test_missing_column_is_one_clear_line(tmp_path):
    (tmp_path / "in.csv").write_text("picture,caption\na.jpg,a cat\n")
    _one_line_error(run_cli("score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv")),
                    "cannot find the image column", "--image-column")
    _one_line_error(run_cli("score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"),
                            "--image-column", "picture", "--caption-column", "alt"),
                    "no caption column 'alt'")


def test_an_input_with_our_result_columns_is_refused_naming_prefix(tmp_path):
    pq.write_table(pa.table({"URL": ["a.jpg"], "TEXT": ["a cat"], "similarity": [0.3]}), tmp_path / "laion.parquet")
    _one_line_error(run_cli("score", str(tmp_path / "laion.parquet"), "-o", str(tmp_path / "o.parquet")),
                    "result column(s) similarity", "--prefix")


def test_shards_by_brace_notation(tmp_path, tiny_model, photos, local_ray):
    """The issue's acceptance command: `tis-ray score 'shards/{00000..00002}.tar' -o out.parquet`."""
    (tmp_path / "shards").mkdir()
    expected = [e for i in range(3) for e in good_shard(tmp_path / "shards" / f"{i:05d}.tar", i, 4, photos)]
    out = tmp_path / "out.parquet"
    env = {"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address, "TIS_MODEL": tiny_model}
    result = run_cli("score", str(tmp_path / "shards" / "{00000..00002}.tar"), "-o", str(out), "--device", "cpu",
                     "--keep-json-fields", "width", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pq.read_table(out)
    assert table.column_names == ["__key__", "__url__", "width", "similarity", "error"]
    assert table.column("__key__").to_pylist() == [e.key for e in expected]
    assert table.column("error").null_count == len(expected)
    assert_stats_add_up(out, len(expected))


def test_unreachable_hub_model_says_how_to_run_offline(tmp_path):
    (tmp_path / "in.csv").write_text("image_url,caption\na.jpg,a cat\n")
    result = run_cli("score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), env={"HF_HUB_OFFLINE": "1"})
    _one_line_error(result, "openai/clip-vit-base-patch32", "make_test_model.py", "--model")
    assert not (tmp_path / "o.csv").exists()


def test_an_unreachable_hub_is_one_line_without_the_hub_clients_retries(tmp_path):
    """Not offline, no cached copy, and nothing answers at the hub's address (a closed port on
    127.0.0.1 stands in for a hub out of reach): the same line, without the hub client's five
    retries (1+2+4+8+8 s, each a warning line of its own)."""
    (tmp_path / "in.csv").write_text("image_url,caption\na.jpg,a cat\n")
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""}
    started = time.monotonic()
    result = run_cli("score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), env=env)
    took = time.monotonic() - started
    _one_line_error(result, "openai/clip-vit-base-patch32", "cannot be reached", "make_test_model.py")
    # The same start-up (Python, torch, transformers) failing on a model folder that does not exist:
    started = time.monotonic()
    _one_line_error(run_cli("score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"),
                            "--model", str(tmp_path / "no-such-model"), env=env), "does not exist")
    assert took < time.monotonic() - started + 10  # the retries alone wait 23 s


def test_a_cached_hub_model_loads_while_the_hub_is_unreachable(tmp_path, tiny_model):
    """A hub id in the local cache (laid out as the hub client keeps it) needs no hub: the
    quick check does not stand in the way, and offline mode is not needed for it."""
    from tis_ray.loading import load_preprocess_spec

    repo = tmp_path / "hf" / "hub" / "models--tis-test--tiny-clip"
    commit = "0" * 40
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": ""}
    probe = "from tis_ray.loading import load_preprocess_spec; print(repr(load_preprocess_spec('tis-test/tiny-clip')))"
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(load_preprocess_spec(tiny_model))


def test_demo_on_the_bundled_example_with_embedded_local_ray(tmp_path, tiny_model):
    out = tmp_path / "scored.csv"
    # RAY_ADDRESS=local: the command starts its own local Ray. The model comes from
    # TIS_MODEL, the override the README's demo command documents for offline use.
    env = {"RAY_ADDRESS": "local", "TIS_MODEL": tiny_model}
    result = run_cli("score", str(REPO / "examples" / "pairs.csv"), "-o", str(out), "--dtype", "float32", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_output(out)
    with open(REPO / "examples" / "pairs.csv", newline="") as f:
        source = list(csv.DictReader(f))
    assert table.num_rows == len(source)
    assert table.column("image_url").to_pylist() == [row["image_url"] for row in source]
    kinds = [error_kind(e) for e in table.column("error").to_pylist()]
    assert kinds[-3:] == ["file_not_found", "decode_error", "empty_caption"]
    assert kinds[:-3] == [None] * (len(source) - 3)
    # the demo leaves --device at auto: the GPU where there is one, else the CPU
    assert "rows: 10" in result.stdout and "scored: 7" in result.stdout and f"{_auto_device()}/float32" in result.stdout
    assert f"stats: {out}.stats.json" in result.stdout
    assert_stats_add_up(out, len(source))


BAD_KINDS = {
    "status/404": "http_404",
    "status/500": "http_500",
    "html": "decode_error",
    "truncated/coffee.jpg": "decode_error",
    "big/21000000": "too_large",  # over the default 20 MB cap
    "slow/6": "timeout",
}


def test_thousand_rows_five_percent_bad(tmp_path, image_server, tiny_model, photos, local_ray):
    """The issue's acceptance run: 1,000 rows, 5% bad in varied ways, scores equal the reference."""
    rng = random.Random(7)
    names = list(photos)
    captions = [f"a photo number {i} of something {w}" for i, w in enumerate("red green blue big small odd".split())]
    bad_rows = set(rng.sample(range(1000), 50))
    rows, expected = [], []
    for i in range(1000):
        if i in bad_rows:
            choice = rng.choice([*BAD_KINDS, "empty", "missing", "invalid"])
            if choice == "empty":
                rows.append((image_server.url("photo/chelsea.jpg"), "   "))
                expected.append(("empty_caption", None))
            elif choice == "missing":
                rows.append((str(tmp_path / "no-such.jpg"), "a cat"))
                expected.append(("file_not_found", None))
            elif choice == "invalid":
                rows.append(("http://[::1", "a cat"))
                expected.append(("invalid_url", None))
            else:
                rows.append((image_server.url(choice), "whatever"))
                expected.append((BAD_KINDS[choice], None))
        else:
            name, caption = rng.choice(names), rng.choice(captions)
            rows.append((image_server.url(f"photo/{name}.jpg"), caption))
            expected.append((None, (name, caption)))
    source = tmp_path / "thousand.csv"
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "image_url", "caption"])
        writer.writerows([i, *row] for i, row in enumerate(rows))
    out = tmp_path / "thousand-scored.csv"
    env = {"RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}
    result = run_cli("score", str(source), "-o", str(out), "--model", tiny_model, "--device", "cpu",
                     "--dtype", "float32", "--timeout", "3", "--retries", "1", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_output(out)
    assert table.num_rows == 1000
    assert table.column("row").to_pylist() == list(range(1000))
    sims, errors = table.column("similarity").to_pylist(), table.column("error").to_pylist()
    pairs = sorted({pair for _, pair in expected if pair})
    reference = dict(zip(pairs, reference_similarities(tiny_model, [photos[n] for n, _ in pairs],
                                                       [c for _, c in pairs])))
    for i, (kind, pair) in enumerate(expected):
        assert error_kind(errors[i]) == kind, (i, rows[i], errors[i])
        if kind is None:
            assert abs(sims[i] - reference[pair]) <= tolerance(photos[pair[0]]), (i, sims[i], reference[pair])
        else:
            assert sims[i] is None
    assert "rows: 1000" in result.stdout and "scored: 950" in result.stdout
    assert assert_stats_add_up(out, 1000)["outcomes"] == {"scored": 950, "error": 50}


def _auto_device() -> str:
    """What `--device auto` picks on this machine, asked of torch directly."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
