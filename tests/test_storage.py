"""Inputs, outputs and image cells as URLs through pyarrow filesystems: ``file://``
always, and ``s3://`` against a real S3-compatible server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import free_port
from job_rows import check_scored, read_scored_csv, sample_rows, write_pairs_csv
from jobs import assert_stats_add_up
from reference import reference_similarities, tolerance
from shard_files import good_shard

from tis_ray import errors, score_file, storage
from tis_ray.config import FetchConfig, ModelConfig
from tis_ray.errors import InputError, RowError
from tis_ray.output import check_output_path
from tis_ray.sources import base_dir_of
from tis_ray.tables import TableFile

FAST_FETCH = FetchConfig(timeout_s=5.0, retries=1, backoff_s=0.05)


@pytest.fixture(scope="module")
def model(tiny_model) -> ModelConfig:
    return ModelConfig(model=tiny_model, device="cpu", dtype="float32")


# --- file:// -----------------------------------------------------------------


def test_file_urls_for_input_and_output(local_ray, model, tiny_model, image_server, photos, tmp_path):
    rows = sample_rows(image_server, photos)
    write_pairs_csv(tmp_path / "pairs.csv", rows)
    assert TableFile.open((tmp_path / "pairs.csv").as_uri()).columns == ["id", "image_url", "caption"]
    out = tmp_path / "scored.csv"
    score_file((tmp_path / "pairs.csv").as_uri(), out.as_uri(), model=model, fetch=FAST_FETCH, progress=False)
    check_scored(read_scored_csv(out), rows, tiny_model, photos)
    assert_stats_add_up(out, len(rows))
    # nothing staged is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv", "scored.csv", "scored.csv.stats.json"]


def test_file_url_input_and_output_problems_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        TableFile.open((tmp_path / "missing.csv").as_uri())
    with pytest.raises(InputError, match="is a folder"):
        TableFile.open(tmp_path.as_uri() + "/")
    with pytest.raises(InputError, match="does not exist"):
        check_output_path((tmp_path / "no-such-folder" / "out.csv").as_uri())


def test_relative_images_of_a_file_url_input_resolve_beside_it(tmp_path):
    assert base_dir_of((tmp_path / "pairs.csv").as_uri()) == str(tmp_path)


# --- s3:// against a real S3-compatible server on loopback --------------------


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 and a bucket holding the photos. Credentials,
    endpoint and region travel in each URL's query, so no AWS lookup ever happens."""
    server_module = pytest.importorskip(
        "moto.server", reason="moto[server] (a test extra) is not installed: the s3:// tests need its S3 server")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=f"127.0.0.1:{port}",
                           scheme="http", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("photos")

    def url(key: str) -> str:
        return f"s3://testing:testing@photos/{key}?{options}"

    try:
        yield fs, url
    finally:
        server.stop()


def test_s3_input_output_and_images(local_ray, s3, model, tiny_model, image_server, photos, tmp_path):
    fs, url = s3
    for name in ("chelsea", "rocket"):
        with fs.open_output_stream(f"photos/img/{name}.jpg") as out:
            out.write(photos[name].read_bytes())
    rows = sample_rows(image_server, photos) + [
        (url("img/chelsea.jpg"), "a cat in a bucket", "chelsea"),
        ("img/rocket.jpg", "a rocket beside the input", "rocket"),  # relative to the input's folder
        (url("img/missing.jpg"), "no such object", "file_not_found"),
    ]
    write_pairs_csv(tmp_path / "pairs.csv", rows)
    with fs.open_output_stream("photos/pairs.csv") as out:
        out.write((tmp_path / "pairs.csv").read_bytes())
    score_file(url("pairs.csv"), url("out/scored.csv"), model=model, fetch=FAST_FETCH, progress=False)
    with fs.open_input_stream("photos/out/scored.csv") as scored:
        check_scored(read_scored_csv(scored), rows, tiny_model, photos)
    with fs.open_input_stream("photos/out/scored.csv.stats.json") as stats:
        assert json.loads(stats.read())["rows"] == len(rows)


def test_s3_shards(local_ray, s3, model, tiny_model, photos, tmp_path):
    """WebDataset shards in a bucket, named with brace notation, streamed by the read tasks."""
    fs, url = s3
    expected = []
    for i in range(2):
        expected += good_shard(tmp_path / f"{i:05d}.tar", i, 3, photos)
        with fs.open_output_stream(f"photos/shards/{i:05d}.tar") as out:
            out.write((tmp_path / f"{i:05d}.tar").read_bytes())
    out = tmp_path / "scored.parquet"
    score_file(url("shards/{00000..00001}.tar"), str(out), model=model, progress=False)
    table = pq.read_table(out)
    assert table.column("__key__").to_pylist() == [e.key for e in expected]
    # the shard as a user names it: no credentials, no options
    assert table.column("__url__").to_pylist() == [f"s3://photos/shards/{e.shard.name}" for e in expected]
    want = reference_similarities(tiny_model, [photos[e.photo] for e in expected], [e.caption for e in expected])
    for got, e, reference in zip(table.column("similarity").to_pylist(), expected, want):
        assert abs(got - reference) <= tolerance(photos[e.photo])
    assert_stats_add_up(out, len(expected))


def test_s3_output_checks_the_bucket_before_any_work(s3):
    _, url = s3
    with pytest.raises(InputError, match="bucket no-such-bucket does not exist"):
        check_output_path(url("out.csv").replace("@photos/", "@no-such-bucket/"))
    with pytest.raises(InputError, match="no such file"):
        TableFile.open(url("not-there.csv"))
    check_output_path(url("new/out.parquet"))


def test_s3_image_errors_name_the_object_without_secrets(s3):
    fs, url = s3
    with fs.open_output_stream("photos/big.jpg") as out:
        out.write(b"\xff" * 2048)
    with pytest.raises(RowError) as missing:
        storage.read_object(url("nope.jpg"), max_bytes=1024)
    assert missing.value.kind == errors.FILE_NOT_FOUND
    assert str(missing.value) == "file_not_found: s3://photos/nope.jpg: no such object"
    with pytest.raises(RowError) as big:
        storage.read_object(url("big.jpg"), max_bytes=1024)
    assert big.value.kind == errors.TOO_LARGE
    assert storage.read_object(url("big.jpg"), max_bytes=4096) == b"\xff" * 2048


def test_an_input_table_that_cannot_be_read_is_named_without_its_access_keys(s3, tmp_path):
    from tis_ray.errors import InputError
    from tis_ray.tables import TableFile

    fs, url = s3
    with pytest.raises(InputError) as missing:
        TableFile.open(url("absent-table.csv"))
    assert str(missing.value) == "s3://photos/absent-table.csv: no such file"
    with fs.open_output_stream("photos/empty.csv") as out:
        out.write(b"")
    with pytest.raises(InputError) as empty:
        TableFile.open(url("empty.csv"))
    assert str(empty.value) == "s3://photos/empty.csv: the file is empty (no header row)"
    # A local name keeps what a URL would lose: '#' and '?' are part of a file name.
    local = tmp_path / "pairs #1?.csv"
    with pytest.raises(InputError) as local_missing:
        TableFile.open(str(local))
    assert str(local_missing.value) == f"{local}: no such file"


def test_an_object_store_that_cannot_be_reached_is_a_storage_error_not_a_missing_file():
    """README's error table: ``storage_error`` when an object store refuses or fails a read,
    kept apart from ``file_not_found`` (the object is not there), which a retry cannot mend.
    The endpoint is a closed port on 127.0.0.1: nothing answers, so nothing can say "missing"."""
    port = free_port()  # bound, then released: nothing listens there
    url = (f"s3://testing:testing@photos/cat.jpg?endpoint_override=127.0.0.1:{port}&scheme=http"
           "&region=us-east-1&connect_timeout=1&request_timeout=1")
    with pytest.raises(RowError) as failed:
        storage.read_object(url, max_bytes=1024)
    assert failed.value.kind == errors.STORAGE_ERROR, failed.value
    assert str(failed.value).startswith("storage_error: s3://photos/cat.jpg: ")  # no keys, no query
    assert "testing:testing" not in str(failed.value)
