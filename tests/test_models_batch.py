"""Several models in one batch job, and the optional columns (probability, truncation, embeddings).

The jobs run on real Ray against a loopback image server; each column of a two-model job is
compared with a one-model job of that model, and the new numbers with the family's own
library (`reference`), whole-image decodes, float32.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from reference import (
    CAPTIONS,
    LONG_CAPTION,
    PHOTOS,
    SCORE_TOLERANCE,
    library_outputs,
    photos_rgb,
)

from tis_ray import score_file
from tis_ray.api import _FileJob
from tis_ray.checkpoint import Checkpoint
from tis_ray.cli import main as cli_main
from tis_ray.columns import ResultColumns
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig, named_models, split_model_option
from tis_ray.errors import InputError
from tis_ray.output import stats_path

EMBEDDING_TOLERANCE = 1e-3  # the bound: float16 storage of a unit vector
WHOLE_DECODE = FetchConfig(reduced_decode=False)  # the library decodes whole images


def _pairs(path, server) -> str:
    """The photos with their captions, each image once, and a row whose image is missing."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        for name, caption in zip(PHOTOS, CAPTIONS, strict=True):
            writer.writerow([server.url(f"photo/{name}.jpg"), caption])
        writer.writerow([server.url("status/404"), "a missing image"])  # an error row: nulls in every column
    return str(path)


def _cpu(model_dir: str) -> ModelConfig:
    return ModelConfig(model=model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def jobs(tiny_model, siglip_model, local_ray, tmp_path_factory):
    """A two-model job (CLIP + SigLIP) and a one-model job of each, on a fresh server each, with
    the request paths each job's server saw."""
    from loopback import ImageServer

    folder = tmp_path_factory.mktemp("models")
    done = {}
    for name, models, extra in (
        ("both", {"clip": _cpu(tiny_model), "sig": _cpu(siglip_model)},
         dict(with_embeddings=True, embedding_dtype="float16")),
        ("clip", _cpu(tiny_model), {}),
        ("sig", _cpu(siglip_model), dict(with_probability=True)),
    ):
        with ImageServer() as server:
            source = _pairs(folder / f"{name}.csv", server)
            out = folder / f"{name}.parquet"
            pipeline = PipelineConfig(batch_size=4, with_cosine=True, with_truncation=True, **extra)
            score_file(source, str(out), model=models, fetch=WHOLE_DECODE, pipeline=pipeline, progress=False)
            done[name] = (pq.read_table(out), list(server.requests), out)
    return done


def test_two_models_write_each_models_columns_in_order(jobs):
    table, _, _ = jobs["both"]
    results = [name for name in table.column_names if name not in ("url", "caption")]
    per_model = ["similarity", "cosine", "caption_truncated", "image_embedding", "text_embedding"]
    assert results == [f"{kind}_{model}" for model in ("clip", "sig") for kind in per_model] + ["error"]


def test_each_column_equals_a_one_model_job_with_that_model(jobs):
    both, _, _ = jobs["both"]
    for model in ("clip", "sig"):
        alone, _, _ = jobs[model]
        for kind in ("similarity", "cosine", "caption_truncated"):
            assert both.column(f"{kind}_{model}").to_pylist() == alone.column(kind).to_pylist(), (model, kind)
    assert both.column("error").to_pylist() == jobs["clip"][0].column("error").to_pylist()
    assert both.column("similarity_clip").to_pylist() != both.column("similarity_sig").to_pylist()


def test_each_image_is_fetched_once_for_both_models(jobs):
    _, requests, _ = jobs["both"]
    photo_requests = [r for r in requests if r.startswith("/photo/")]
    assert sorted(photo_requests) == sorted(f"/photo/{name}.jpg" for name in PHOTOS)


def test_truncation_flag_and_nulls_on_the_error_row(jobs):
    for model in ("clip", "sig"):
        flags = jobs["both"][0].column(f"caption_truncated_{model}").to_pylist()
        assert flags == [c == LONG_CAPTION for c in CAPTIONS] + [None]


def test_embeddings_are_the_librarys_normalised_features(jobs, tiny_model, siglip_model, photos):
    table, _, _ = jobs["both"]
    for model, family, model_dir in (("clip", "clip", tiny_model), ("sig", "siglip", siglip_model)):
        _, outputs = library_outputs(family, model_dir, photos_rgb(photos), CAPTIONS)
        for kind, want in (("image", outputs.image_embeds), ("text", outputs.text_embeds)):
            column = table.column(f"{kind}_embedding_{model}")
            assert str(column.type.value_type) == "halffloat"
            assert column.type.list_size == want.shape[1]
            values = column.to_pylist()
            assert values[-1] is None  # the error row
            got = np.array(values[:-1], dtype=np.float32)
            expected = torch.nn.functional.normalize(want, dim=-1).numpy()
            assert np.abs(got - expected).max() <= EMBEDDING_TOLERANCE, (model, kind)


def test_siglip_probability_is_the_librarys_sigmoid_of_its_logits(jobs, siglip_model, photos):
    table, _, _ = jobs["sig"]
    assert table.schema.field("probability").type == "double"
    got = table.column("probability").to_pylist()
    assert got[-1] is None
    _, outputs = library_outputs("siglip", siglip_model, photos_rgb(photos), CAPTIONS)
    want = torch.sigmoid(outputs.logits_per_image).diagonal().numpy()
    assert np.abs(np.array(got[:-1]) - want).max() <= SCORE_TOLERANCE


def test_stats_file_lists_the_models(jobs, tiny_model, siglip_model):
    _, _, out = jobs["both"]
    stats = json.loads(open(stats_path(str(out))).read())
    assert stats["model"] == [{"name": "clip", "model": tiny_model}, {"name": "sig", "model": siglip_model}]
    _, _, alone = jobs["clip"]
    assert json.loads(open(stats_path(str(alone))).read())["model"] == tiny_model


def test_report_and_filter_read_a_two_model_output(jobs, tmp_path):
    _, _, out = jobs["both"]
    kept = tmp_path / "kept.parquet"
    assert cli_main(["filter", str(out), "-o", str(kept), "--keep-top", "50%", "--model", "sig"]) == 0
    table, _, _ = jobs["both"]
    scores = sorted((s for s in table.column("similarity_sig").to_pylist() if s is not None), reverse=True)
    assert sorted(pq.read_table(kept).column("similarity_sig").to_pylist(), reverse=True) == scores[:3]
    assert cli_main(["report", str(out), "--no-thumbnails", "-o", str(tmp_path / "r.html")]) == 0


def _csv(tmp_path) -> str:
    path = tmp_path / "pairs.csv"
    path.write_text("image_url,caption\nx.jpg,a cat\n")
    return str(path)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_embeddings_with_a_csv_output_fail_before_any_work(tmp_path, tiny_model, capsys):
    out = tmp_path / "out.csv"
    assert cli_main(["score", _csv(tmp_path), "-o", str(out), "--model", tiny_model, "--with-embeddings"]) == 2
    err = _one_line_error(capsys)
    assert "--with-embeddings" in err and ".parquet" in err
    assert not out.exists() and not (tmp_path / "out.csv.parts").exists()


def test_clip_with_probability_fails_before_any_work(tmp_path, tiny_model, siglip_model, capsys):
    out = tmp_path / "out.parquet"
    argv = ["score", _csv(tmp_path), "-o", str(out), "--model", f"s={siglip_model}", "--model", f"c={tiny_model}",
            "--with-probability"]
    assert cli_main(argv) == 2
    err = _one_line_error(capsys)
    assert "CLIP" in err and "pair head" in err and tiny_model in err
    assert not out.exists() and not (tmp_path / "out.parquet.parts").exists()


def test_resume_is_refused_when_the_model_list_changes(tmp_path, tiny_model, siglip_model):
    source, out = _csv(tmp_path), str(tmp_path / "out.parquet")
    first = {"a": _cpu(tiny_model), "b": _cpu(siglip_model)}
    job = _FileJob.check(source, out, {"model": first})
    Checkpoint.open(out, job.source.identity(job.settings()), resume=False, every_s=60)  # an interrupted run's
    for changed in ({"a": _cpu(tiny_model)}, {"b": _cpu(siglip_model), "a": _cpu(tiny_model)},
                    {"a": _cpu(tiny_model), "c": _cpu(siglip_model)}):
        with pytest.raises(InputError, match="cannot resume.*models"):
            score_file(source, out, model=changed, resume=True, progress=False)
    # The same list is the same job: its identity matches the checkpoint's.
    again = _FileJob.check(source, out, {"model": first})
    assert again.source.identity(again.settings()).differences(job.source.identity(job.settings())) == []


def test_model_names_from_the_option_or_the_folder(tiny_model):
    assert split_model_option("b32=openai/clip-vit-base-patch32") == ("b32", "openai/clip-vit-base-patch32")
    assert split_model_option("openai/clip-vit-base-patch32") == (None, "openai/clip-vit-base-patch32")
    assert split_model_option("/data/a=b/model") == (None, "/data/a=b/model")  # a '/' is no name
    named = named_models(["org/first-model", ("x", "org/second")])
    assert [(m.name, m.config.model) for m in named] == [("first-model", "org/first-model"), ("x", "org/second")]
    with pytest.raises(InputError, match="named 'm'"):
        named_models(["a/m", "b/m"])
    with pytest.raises(InputError, match="cannot name"):
        named_models({"no space": tiny_model})
    with pytest.raises(InputError, match="cannot name"):
        named_models(["/data/my model", tiny_model])
    assert named_models("/data/my model")[0].config.model == "/data/my model"  # one model: its name ends no column


def test_one_model_keeps_todays_column_names():
    one = ResultColumns(models=("only",), kinds=("similarity", "cosine"))
    assert one.written == ["similarity", "cosine", "error"]
    two = ResultColumns("p_", ("a", "b"), ("similarity", "probability"))
    assert two.written == ["p_similarity_a", "p_probability_a", "p_similarity_b", "p_probability_b", "p_error"]
    assert "p_cosine_b" in two.names  # refused in an input whether asked for or not, as cosine always was


def test_retry_errors_reads_a_two_model_output_and_needs_the_same_models(jobs, tiny_model, siglip_model, tmp_path):
    """The previous output's result columns must be this job's: the same models, named alike."""
    from tis_ray import retry_errors

    table, _, out = jobs["both"]
    source = str(out).removesuffix(".parquet") + ".csv"
    pipeline = PipelineConfig(with_truncation=True, with_embeddings=True)
    again = tmp_path / "again.parquet"
    summary = retry_errors(source, str(out), str(again), model={"clip": _cpu(tiny_model), "sig": _cpu(siglip_model)},
                           pipeline=pipeline, progress=False)
    assert summary.scored_now == 0  # the one failed row is a 404, not worth retrying
    assert pq.read_table(again).equals(table)
    with pytest.raises(InputError, match="is it the output of this input"):
        retry_errors(source, str(out), str(again), model={"clip": _cpu(tiny_model), "other": _cpu(siglip_model)},
                     pipeline=pipeline, progress=False)
