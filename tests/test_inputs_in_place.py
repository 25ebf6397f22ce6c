"""Scoring the data where it already is, on a real local Ray: WebDataset shards written by
the `webdataset` package, Parquet holding image bytes (raw, and Hugging Face's struct as
the `datasets` library writes it) and LAION's own metadata layout. Decoded whole
(`--full-decode`), every score equals the float32 reference within 1e-4."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs import assert_stats_add_up
from reference import EXACT_TOLERANCE, reference_similarities
from shard_files import Expected, bad_shard, good_shard

from tis_ray import checkpoint, retry_errors, score_file
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig
from tis_ray.errors import InputError, error_kind

FULL_DECODE = FetchConfig(reduced_decode=False)
SMALL_BATCHES = PipelineConfig(batch_size=16)


@pytest.fixture(scope="module")
def model(tiny_model) -> ModelConfig:
    return ModelConfig(model=tiny_model, device="cpu", dtype="float32")


def _check_scores(table: pa.Table, expected, model_dir, photos, results=("similarity", "error")):
    """Every row's outcome as expected, in order; every scored row as the reference scores it."""
    similarity, error = (table.column(name).to_pylist() for name in results)
    assert [error_kind(e) for e in error] == [e.error for e in expected]
    good = [i for i, e in enumerate(expected) if e.error is None]
    assert all(similarity[i] is not None for i in good)
    want = reference_similarities(model_dir, [photos[expected[i].photo] for i in good],
                                  [expected[i].caption for i in good])
    for i, reference in zip(good, want):
        assert abs(similarity[i] - reference) <= EXACT_TOLERANCE, (i, similarity[i], reference)


# --- WebDataset shards ----------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory, photos):
    """Three shards as img2dataset names them: 130 samples (more than one block), a shard
    of bad samples cut short at its end, and a small one."""
    folder = tmp_path_factory.mktemp("shards")
    expected = good_shard(folder / "00000.tar", 0, 130, photos)
    expected += bad_shard(folder / "00001.tar", 1, photos)
    expected += good_shard(folder / "00002.tar", 2, 5, photos)
    return folder, expected


@pytest.fixture(scope="module")
def scored_shards(local_ray, shards, model, tmp_path_factory):
    folder, _ = shards
    out = tmp_path_factory.mktemp("scored-shards") / "out.parquet"
    summary = score_file(str(folder / "{00000..00002}.tar"), str(out), model=model, fetch=FULL_DECODE,
                         pipeline=SMALL_BATCHES, keep_json_fields=("width", "source"), progress=False)
    return out, summary


def test_shards_every_sample_once_in_order_scored_as_the_reference(shards, scored_shards, tiny_model, photos):
    folder, expected = shards
    out, summary = scored_shards
    table = pq.read_table(out)
    assert table.column_names == ["__key__", "__url__", "width", "source", "similarity", "error"]
    assert table.column("__key__").to_pylist() == [e.key for e in expected]
    assert table.column("__url__").to_pylist() == [str(e.shard) for e in expected]
    assert table.column("width").to_pylist()[:2] == ["512", "512"]
    _check_scores(table, expected, tiny_model, photos)
    errors = table.column("error").to_pylist()
    assert errors[131] == "missing_image: the sample has no jpg, jpeg, png or webp entry"
    assert errors[136].startswith("bad_shard: the shard is cut short")
    stats = assert_stats_add_up(out, len(expected))
    assert stats["errors_by_kind"] == {"bad_shard": 1, "decode_error": 2, "empty_caption": 1, "missing_image": 1}
    assert summary.rows == len(expected)


def test_a_shard_job_interrupted_then_resumed_writes_the_same_output(shards, scored_shards, model, tmp_path,
                                                                      monkeypatch):
    folder, expected = shards
    out = tmp_path / "resumed.parquet"
    add, calls = checkpoint.Checkpoint.add, []

    def interrupted_after_one_batch(self, batch):
        calls.append(batch.num_rows)
        if len(calls) > 1:
            raise KeyboardInterrupt
        add(self, batch)

    spec = str(folder / "0000[0-2].tar")
    options = dict(model=model, fetch=FULL_DECODE, pipeline=SMALL_BATCHES, keep_json_fields=("width", "source"),
                   progress=False, checkpoint_every_s=0)
    monkeypatch.setattr(checkpoint.Checkpoint, "add", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        score_file(spec, str(out), **options)
    monkeypatch.setattr(checkpoint.Checkpoint, "add", add)
    with pytest.raises(InputError, match="different job"):  # other json fields are another job
        score_file(spec, str(out), **{**options, "keep_json_fields": ("width",)}, resume=True)
    summary = score_file(spec, str(out), **options, resume=True)
    assert 0 < summary.carried_over < len(expected)
    assert pq.read_table(out).equals(pq.read_table(scored_shards[0]))


def test_retry_errors_on_shards_copies_the_previous_output(shards, scored_shards, model, tmp_path):
    """Nothing in a shard is fetched, so nothing fails in a way worth retrying: the output is copied."""
    folder, expected = shards
    out = tmp_path / "retried.parquet"
    summary = retry_errors(str(folder / "{00000..00002}.tar"), str(scored_shards[0]), str(out), model=model,
                             keep_json_fields=("width", "source"), progress=False)
    assert pq.read_table(out).equals(pq.read_table(scored_shards[0]))
    stats = assert_stats_add_up(out, len(expected))
    assert (stats["mode"], stats["rows_scored_now"], summary.carried_over) == ("retry_errors", 0, len(expected))


# --- image bytes in Parquet ---------------------------------------------------------


def _bytes_rows(photos):
    """(image bytes, caption, expected outcome) with the photos and the bad cells a dataset may hold."""
    rows = [(photos[n].read_bytes(), f"a photo of {n}", n, None) for n in ("chelsea", "coffee", "rocket", "retina")]
    rows += [(b"GIF89a broken", "a broken gif", None, "decode_error"), (None, "no image at all", None, "missing_image"),
             (photos["astronaut"].read_bytes(), "", None, "empty_caption")]
    return rows, [Expected(str(i), None, caption, photo, kind) for i, (_, caption, photo, kind) in enumerate(rows)]


def _hf_parquet(path, rows):
    """The layout Hugging Face datasets store images in, written by the `datasets` library itself."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    data = {"image": [{"bytes": data, "path": f"{i}.jpg"} if data is not None else None
                      for i, (data, *_) in enumerate(rows)],
            "text": [caption for _, caption, *_ in rows]}
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    assert pa.types.is_struct(pq.read_schema(path).field("image").type)


def _binary_parquet(path, rows):
    """img2dataset's Parquet output: the URL it fetched and the bytes it kept, in `jpg`."""
    pq.write_table(pa.table({"url": [f"http://example.invalid/{i}.jpg" for i in range(len(rows))],
                             "caption": [caption for _, caption, *_ in rows],
                             "jpg": pa.array([data for data, *_ in rows], pa.binary())}), path)


@pytest.mark.parametrize(("write", "image_column"), [(_hf_parquet, "image"), (_binary_parquet, "jpg")])
def test_parquet_image_bytes_are_decoded_in_place(local_ray, model, tiny_model, photos, tmp_path, write, image_column,
                                                  image_server):
    rows, expected = _bytes_rows(photos)
    write(tmp_path / "in.parquet", rows)
    out = tmp_path / "out.parquet"
    requests_before = len(image_server.requests)
    score_file(str(tmp_path / "in.parquet"), str(out), model=model, fetch=FULL_DECODE, progress=False)
    table = pq.read_table(out)
    source = pq.read_table(tmp_path / "in.parquet")
    assert table.column_names == [*source.column_names, "similarity", "error"]
    assert table.select(source.column_names).equals(source)  # the input's columns untouched, bytes included
    _check_scores(table, expected, tiny_model, photos)
    assert_stats_add_up(out, len(rows))
    assert len(image_server.requests) == requests_before  # nothing fetched
    assert pq.read_table(out).column(image_column).null_count == 1


def test_image_bytes_cannot_go_to_a_csv_output(tmp_path, photos, model):
    _binary_parquet(tmp_path / "in.parquet", _bytes_rows(photos)[0])
    with pytest.raises(InputError, match=r"jpg hold image bytes, which a CSV output cannot keep"):
        score_file(str(tmp_path / "in.parquet"), str(tmp_path / "out.csv"), model=model, progress=False)


def test_image_bytes_over_the_cap_are_too_large(local_ray, model, photos, tmp_path):
    _binary_parquet(tmp_path / "in.parquet", _bytes_rows(photos)[0][:2])
    out = tmp_path / "out.parquet"
    score_file(str(tmp_path / "in.parquet"), str(out), model=model, progress=False,
               fetch=FetchConfig(max_bytes=photos["chelsea"].stat().st_size))
    assert [error_kind(e) for e in pq.read_table(out).column("error").to_pylist()] == [None, "too_large"]


# --- LAION's layout ---------------------------------------------------------------


def test_laion_layout_is_detected_and_prefix_names_the_results_apart(local_ray, model, tiny_model, photos, tmp_path):
    names = ["chelsea", "coffee", None, "rocket"]
    source = pa.table({
        "SAMPLE_ID": [10, 11, 12, 13],
        "URL": [str(photos[n]) if n else str(tmp_path / "gone.jpg") for n in names],
        "TEXT": [f"LAION says {n}" for n in names],
        "HEIGHT": [512] * 4, "WIDTH": [512] * 4, "LICENSE": ["?"] * 4, "NSFW": ["UNLIKELY"] * 4,
        "similarity": [0.31, 0.29, 0.33, 0.30],
    })
    pq.write_table(source, tmp_path / "laion.parquet")
    out = tmp_path / "out.parquet"
    with pytest.raises(InputError, match=r"result column\(s\) similarity.*--prefix"):
        score_file(str(tmp_path / "laion.parquet"), str(out), model=model, progress=False)
    score_file(str(tmp_path / "laion.parquet"), str(out), model=model, fetch=FULL_DECODE, prefix="tis_",
               pipeline=PipelineConfig(with_cosine=True), progress=False)
    table = pq.read_table(out)
    assert table.column_names == [*source.column_names, "tis_similarity", "tis_cosine", "tis_error"]
    assert table.select(source.column_names).equals(source)  # LAION's own similarity untouched
    expected = [Expected(str(i), None, f"LAION says {n}", n, None if n else "file_not_found")
                for i, n in enumerate(names)]
    _check_scores(table, expected, tiny_model, photos, results=("tis_similarity", "tis_error"))
    stats = json.loads((tmp_path / "out.parquet.stats.json").read_text())
    assert (stats["rows"], stats["outcomes"]) == (4, {"scored": 3, "error": 1})
