"""The batch pipeline end to end on a real local Ray, real HTTP on 127.0.0.1 and real photos."""

from __future__ import annotations

import copy
import csv
import shutil

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import ray
from conftest import REPO
from jobs import assert_stats_add_up
from PIL import Image
from reference import (
    EXACT_TOLERANCE,
    REDUCED_DECODE_TOLERANCE,
    reference_similarities,
    tolerance,
)

from tis_ray import Record, score_dataset, score_file, score_pairs
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig
from tis_ray.errors import error_kind
from tis_ray.pipeline import cluster_capacity, input_blocks, read_records
from tis_ray.pool_sizing import CPU_SCORER_BUFFER_BYTES
from tis_ray.tables import TableFile

FAST_FETCH = FetchConfig(timeout_s=2.0, retries=1, backoff_s=0.05, max_bytes=1_000_000)


@pytest.fixture(scope="module")
def model(tiny_model) -> ModelConfig:
    return ModelConfig(model=tiny_model, device="cpu", dtype="float32")


def _mixed_rows(server, photos_dir_name="images"):
    """(image, caption, expected error kind or None, local photo for the reference)."""
    return [
        (server.url("photo/chelsea.jpg"), "a cat", None, "chelsea"),
        (f"{photos_dir_name}/coffee.jpg", "a cup of coffee", None, "coffee"),
        (server.url("status/404"), "gone", "http_404", None),
        (server.url("flaky/mixed/rocket.jpg"), "a rocket", None, "rocket"),
        (server.url("slow/5"), "too slow", "timeout", None),
        (server.url("big/2000000"), "too big", "too_large", None),
        (server.url("html"), "a web page", "decode_error", None),
        (server.url("truncated/astronaut.jpg"), "half a photo", "decode_error", None),
        (server.url("photo/astronaut.jpg"), "", "empty_caption", None),
        ("images/missing.jpg", "nothing here", "file_not_found", None),
        ("ftp://example.invalid/x.jpg", "wrong scheme", "unsupported_scheme", None),
        ("http://", "no host", "invalid_url", None),
        (server.url("redirect/2/retina.jpg"), "an eye, after two redirects", None, "retina"),
        (server.url("photo/chelsea.jpg"), 'quotes "and", commas\nand a newline', None, "chelsea"),
    ]


@pytest.fixture()
def mixed_input(tmp_path, image_server, photos):
    shutil.copytree(next(iter(photos.values())).parent, tmp_path / "images")
    rows = _mixed_rows(image_server)
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as Excel writes it
        writer = csv.writer(f)
        writer.writerow(["id", "url", "text", "note"])
        for i, (image, caption, _, _) in enumerate(rows):
            writer.writerow([f"{i:03d}", image, caption, f"note {i}"])
    return path, rows


def _check_against_reference(table: pa.Table, rows, model_dir, photos, caption_column="text"):
    assert table.num_rows == len(rows)
    errors = table.column("error").to_pylist()
    sims = table.column("similarity").to_pylist()
    good = []
    for i, (_, caption, kind, photo) in enumerate(rows):
        assert error_kind(errors[i]) == kind, (i, errors[i])
        if kind is None:
            assert sims[i] is not None
            good.append((i, photo, caption))
        else:
            assert sims[i] is None
    want = reference_similarities(model_dir, [photos[p] for _, p, _ in good], [c for _, _, c in good])
    for (i, photo, _), expected in zip(good, want):
        assert abs(sims[i] - expected) <= tolerance(photos[photo]), (i, sims[i], expected)


def test_score_file_csv_every_row_once_in_order(local_ray, mixed_input, model, tiny_model, photos, tmp_path):
    path, rows = mixed_input
    out = tmp_path / "scored.csv"
    summary = score_file(str(path), str(out), model=model, fetch=FAST_FETCH,
                         pipeline=PipelineConfig(batch_size=4, fetch_batch_size=3), progress=False)
    table = pacsv.read_csv(out, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                           convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "text": pa.string()}))
    assert table.column_names == ["id", "url", "text", "note", "similarity", "error"]
    assert table.column("id").to_pylist() == [f"{i:03d}" for i in range(len(rows))]
    assert table.column("text").to_pylist() == [r[1] for r in rows]  # captions survive the round trip
    assert table.column("note").to_pylist() == [f"note {i}" for i in range(len(rows))]
    _check_against_reference(table, rows, tiny_model, photos)
    assert summary.rows == len(rows)
    assert summary.scored == sum(1 for r in rows if r[2] is None)
    assert summary.scored + sum(summary.errors.values()) == summary.rows
    assert summary.runtimes == {"cpu/float32"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".parts"))]
    stats = assert_stats_add_up(out, len(rows))
    assert (stats["device"], stats["dtype"], stats["mode"]) == ("cpu", "float32", "fresh")


def test_score_file_parquet_in_and_out_keeps_types(local_ray, tmp_path, image_server, model, tiny_model, photos):
    rows = [(image_server.url(f"photo/{n}.jpg"), f"photo {n}", None, n) for n in ("coffee", "rocket", "retina")]
    rows.append((image_server.url("status/503"), "unavailable", "http_503", None))
    source = pa.table({
        "image_url": [r[0] for r in rows],
        "caption": [r[1] for r in rows],
        "score_before": pa.array([0.5, 1.5, None, 2.5], pa.float32()),
        "tags": pa.array([["a"], [], ["b", "c"], None], pa.list_(pa.string())),
    })
    pq.write_table(source, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    score_file(str(tmp_path / "in.parquet"), str(out), model=model, fetch=FAST_FETCH,
               pipeline=PipelineConfig(with_cosine=True), progress=False)
    table = pq.read_table(out)
    assert_stats_add_up(out, len(rows))
    assert table.column_names == ["image_url", "caption", "score_before", "tags", "similarity", "cosine", "error"]
    assert table.select(["score_before", "tags"]).equals(source.select(["score_before", "tags"]))
    cos, sim = table.column("cosine").to_pylist(), table.column("similarity").to_pylist()
    for c, s in zip(cos[:3], sim[:3]):
        assert s == round((c + 1) / 2, 4)
    _check_against_reference(table, rows, tiny_model, photos, caption_column="caption")


def test_header_only_csv_gives_header_only_output(local_ray, tmp_path, model):
    (tmp_path / "empty.csv").write_text("image_url,caption\n")
    out = tmp_path / "empty-out.csv"
    summary = score_file(str(tmp_path / "empty.csv"), str(out), model=model, progress=False)
    assert summary.rows == 0
    assert_stats_add_up(out, 0)
    assert out.read_text().splitlines() == ['"image_url","caption","similarity","error"']


def test_score_pairs_yields_one_result_per_record_in_order(local_ray, image_server, tiny_model, photos):
    records = [
        Record(image_server.url("photo/astronaut.jpg"), "an astronaut"),
        Record(image_server.url("status/410"), "gone"),
        (str(photos["coffee"]), "coffee"),
        Record(str(photos["astronaut"]), "an astronaut"),
    ]
    results = list(score_pairs(records, model=tiny_model, device="cpu", dtype="float32", fetch=FAST_FETCH))
    assert [r.image for r in results] == [r.image if isinstance(r, Record) else r[0] for r in records]
    assert [r.ok for r in results] == [True, False, True, True]
    assert error_kind(results[1].error) == "http_410" and results[1].similarity is None
    want = reference_similarities(tiny_model, [photos["astronaut"], photos["coffee"]], ["an astronaut", "coffee"])
    assert abs(results[0].similarity - want[0]) <= 1e-4
    assert abs(results[2].similarity - want[1]) <= 1e-4
    assert results[0].similarity == results[3].similarity  # same image by URL and by path
    assert results[0].similarity == round((results[0].cosine + 1) / 2, 4)


def test_score_dataset_composes_with_user_pipelines(local_ray, image_server, model):
    ds = local_ray.data.from_items(
        [{"img": image_server.url(f"photo/{n}.jpg"), "cap": n, "n": i} for i, n in enumerate(["chelsea", "coffee"] * 5)]
    )
    callers_before = copy.deepcopy(ds.context.execution_options)
    # Ray's defaults, each of which score_dataset's own Dataset changes
    assert not callers_before.preserve_order and callers_before.resource_limits.object_store_memory == float("inf")
    scored = score_dataset(ds, image_column="img", caption_column="cap", model=model, fetch=FAST_FETCH)
    # Order is a property of the dataset's own context (copied at creation), not of the current one.
    assert scored.context.execution_options.preserve_order
    # Fetching may run ahead of scoring by one CPU scorer's buffer, not by the whole input.
    assert scored.context.execution_options.resource_limits.object_store_memory == CPU_SCORER_BUFFER_BYTES
    rows = scored.filter(lambda r: r["error"] is None).take_all()
    assert [r["n"] for r in rows] == list(range(10))
    assert set(rows[0]) == {"img", "cap", "n", "similarity", "error"}
    # ... while the caller's Dataset keeps its own options as they were, scored and run.
    assert ds.context.execution_options == callers_before


def test_large_jpegs_decode_reduced_by_default_and_whole_on_request(local_ray, tiny_model, photos, tmp_path):
    """Default: within the documented 2e-3 of the reference; full decode: within float rounding."""
    paths = []
    for name, size in (("retina", (2048, 1536)), ("astronaut", (1600, 1200)), ("rocket", (1200, 1800))):
        with Image.open(photos[name]) as photo:
            paths.append(tmp_path / f"{name}.jpg")
            photo.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(paths[-1], "JPEG", quality=90)
    captions = ["an eye", "an astronaut", "a rocket"]
    want = reference_similarities(tiny_model, paths, captions)
    records = [(str(p), c) for p, c in zip(paths, captions)]
    reduced = list(score_pairs(records, model=tiny_model, device="cpu", dtype="float32"))
    whole = list(score_pairs(records, model=tiny_model, device="cpu", dtype="float32",
                             fetch=FetchConfig(reduced_decode=False)))
    for r, w, expected in zip(reduced, whole, want):
        assert abs(r.similarity - expected) <= REDUCED_DECODE_TOLERANCE
        assert abs(w.similarity - expected) <= EXACT_TOLERANCE


def test_a_long_file_is_read_in_blocks_and_scored_in_order(local_ray, tmp_path, image_server, model, tiny_model,
                                                           photos):
    """A file of many rows is split by its read task, each block flows on by itself, and
    the output still has every row once, in input order, though the first block is the slowest."""
    names = ["chelsea", "coffee", "rocket", "retina", None]  # None: a 404 every fifth row
    rows = [(image_server.url(f"photo/{names[i % 5]}.jpg" if names[i % 5] else "status/404"),
             f"row {i}: {names[i % 5]}") for i in range(1500)]
    # The first row's host takes 1.5 s (/slow serves chelsea): its block comes back after
    # later ones, so only order-keeping puts it first in the output.
    rows[0] = (image_server.url("slow/1.5"), rows[0][1])
    path = tmp_path / "long.csv"
    pacsv.write_csv(pa.table({"id": [f"{i:04d}" for i in range(len(rows))],
                              "image_url": [r[0] for r in rows], "caption": [r[1] for r in rows]}), path)
    blocks = input_blocks(path.stat().st_size)
    assert blocks > 1
    read = read_records(TableFile.open(str(path))).materialize()
    assert read.num_blocks() == blocks
    out = tmp_path / "long.scored.csv"
    # two fetch actors, so that later blocks can overtake the slow first one
    score_file(str(path), str(out), model=model, fetch=FAST_FETCH, progress=False,
               pipeline=PipelineConfig(fetch_actors=2))
    table = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(column_types={"id": pa.string()}))
    assert table.column("id").to_pylist() == [f"{i:04d}" for i in range(len(rows))]
    assert table.column("caption").to_pylist() == [r[1] for r in rows]
    kinds = [error_kind(e) for e in table.column("error").to_pylist()]
    assert kinds == [None if names[i % 5] else "http_404" for i in range(len(rows))]
    sample = [0, 1, 2, 3, 751, 752, 1496, 1498]  # rows from the first, a middle and the last blocks
    want = reference_similarities(tiny_model, [photos[names[i % 5]] for i in sample], [rows[i][1] for i in sample])
    sims = table.column("similarity").to_pylist()
    for i, expected in zip(sample, want):
        assert abs(sims[i] - expected) <= tolerance(photos[names[i % 5]]), (i, sims[i], expected)
    assert_stats_add_up(out, len(rows))


def test_pools_are_sized_for_what_the_launchers_config_on_the_head_can_reach(local_ray, tmp_path, monkeypatch,
                                                                            caplog):
    """`ray up` leaves the cluster's config at ~/ray_bootstrap_config.yaml on the head, where jobs run."""
    now = ray.cluster_resources()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cluster_capacity(now) == now  # no launcher config here, and the local Ray reports no autoscaler config
    shutil.copy(REPO / "cluster.yaml", tmp_path / "ray_bootstrap_config.yaml")
    reached = cluster_capacity(now)
    assert (reached["GPU"], reached["CPU"]) == (12, max(now["CPU"], 12 * 4 + 16 * 8))
    assert {k: v for k, v in reached.items() if k not in ("CPU", "GPU")} == {
        k: v for k, v in now.items() if k not in ("CPU", "GPU")}
    (tmp_path / "ray_bootstrap_config.yaml").write_text("available_node_types: [not, a, mapping]\n")
    assert cluster_capacity(now) == now
    assert "ray_bootstrap_config.yaml: not read" in caplog.text
