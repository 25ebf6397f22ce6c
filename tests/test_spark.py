"""`tis_ray.spark.with_scores` in a real local Spark (`local[2]`): real photos served on
127.0.0.1 and rows that must fail, scored in Spark's Python workers and compared with
the batch pipeline's output for the same rows."""

from __future__ import annotations

import csv
import os
import sys

import pyarrow as pa
import pytest
from job_rows import read_scored_csv

from tis_ray.errors import error_kind

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # Spark's Python workers must run this interpreter (it has tis-ray), not the first python3 on PATH.
    kept = {name: os.environ.get(name) for name in ("PYSPARK_PYTHON", "SPARK_LOCAL_IP")}
    os.environ.update(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    session = (SparkSession.builder.master("local[2]").appName("tis-ray-test")
               .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
    yield session
    session.stop()
    for name, value in kept.items():
        os.environ.pop(name, None) if value is None else os.environ.update({name: value})


def pair_rows(image_server, photos, tmp_path) -> list[tuple[str, str | None, str | None, int]]:
    """(id, image cell, caption, n): photos over HTTP and from disk, and one row for each way to fail."""
    return [
        ("00", image_server.url("photo/chelsea.jpg"), "a cat", 1),
        ("01", image_server.url("photo/rocket.jpg"), "a rocket on its launch pad", 2),
        ("02", image_server.url("status/404"), "gone", 3),
        ("03", str(photos["coffee"]), "a cup of coffee", 4),
        ("04", image_server.url("html"), "a web page", 5),
        ("05", image_server.url("photo/astronaut.jpg"), "", 6),
        ("06", None, "no image", 7),
        ("07", "ftp://127.0.0.1/cat.jpg", "a cat", 8),
        ("08", str(tmp_path / "nowhere.jpg"), "a lost file", 9),
        ("09", image_server.url("photo/hubble_deep_field.jpg"), "galaxies", 10),
        ("10", image_server.url("truncated/retina.jpg"), "an eye", 11),
        ("11", image_server.url("photo/chelsea.jpg"), "a cat on a mat", 12),
    ]


def batch_pipeline_output(rows, tmp_path, model: str) -> pa.Table:
    """The same rows through `score_file`, the batch pipeline `tis-ray score` runs."""
    from tis_ray import score_file
    from tis_ray.config import ModelConfig, PipelineConfig

    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image_url", "caption", "n"])
        writer.writerows(("" if v is None else v for v in row) for row in rows)
    score_file(str(tmp_path / "pairs.csv"), str(tmp_path / "pairs.scored.csv"), progress=False,
               model=ModelConfig(model=model, device="cpu", dtype="float32"),
               pipeline=PipelineConfig(with_cosine=True))
    return read_scored_csv(tmp_path / "pairs.scored.csv")


def test_with_scores_matches_the_batch_pipeline_and_failures_cost_only_their_row(
        spark, local_ray, tiny_model, image_server, photos, tmp_path):
    from tis_ray.spark import with_scores

    rows = pair_rows(image_server, photos, tmp_path)
    df = spark.createDataFrame(rows, "id string, image_url string, caption string, n int").repartition(2)
    scored = with_scores(df, model=tiny_model, device="cpu", dtype="float32", with_cosine=True)
    assert scored.columns == ["id", "image_url", "caption", "n", "similarity", "cosine", "error"]
    got = {row["id"]: row for row in scored.collect()}  # one task per partition; none may fail
    assert sorted(got) == [row[0] for row in rows]
    assert all((got[i]["image_url"], got[i]["caption"], got[i]["n"]) == (image, caption, n)
               for i, image, caption, n in rows)  # every other column as it was

    want = batch_pipeline_output(rows, tmp_path, tiny_model).to_pylist()
    kinds = [error_kind(got[row["id"]]["error"]) for row in want]
    assert kinds == [error_kind(row["error"]) for row in want]
    assert kinds == [None, None, "http_404", None, "decode_error", "empty_caption", "missing_image",
                     "unsupported_scheme", "file_not_found", None, "decode_error", None]
    for row in want:
        mine = got[row["id"]]
        if row["error"]:
            assert mine["similarity"] is None and mine["cosine"] is None
        else:
            assert abs(mine["similarity"] - row["similarity"]) <= 1e-4, (row["id"], mine, row)
            assert abs(mine["cosine"] - row["cosine"]) <= 1e-4, (row["id"], mine, row)


def test_with_scores_without_cosine_adds_only_similarity_and_error(spark, tiny_model, photos):
    from tis_ray.spark import with_scores

    df = spark.createDataFrame([(str(photos["rocket"]), "a rocket")], ["image", "text"])
    scored = with_scores(df, image_column="image", caption_column="text", model=tiny_model, device="cpu",
                         dtype="float32")
    assert scored.columns == ["image", "text", "similarity", "error"]
    [row] = scored.collect()
    assert row["error"] is None and 0 <= row["similarity"] <= 1


def test_with_scores_names_a_missing_column_before_any_task(spark, tiny_model):
    from tis_ray.spark import with_scores

    df = spark.createDataFrame([("a.jpg", "a cat")], ["url", "caption"])
    with pytest.raises(ValueError, match="no column 'image_url'"):
        with_scores(df, model=tiny_model)
