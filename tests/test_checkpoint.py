"""The checkpoint, --retry-errors and retryable kinds as plain logic, without Ray."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from tis_ray.checkpoint import Checkpoint, JobIdentity, checkpoint_dir
from tis_ray.errors import InputError, is_retryable
from tis_ray.output import OutputFile
from tis_ray.retry import inputs_of, merge, read_previous_output, retryable_rows
from tis_ray.tables import TableFile

SETTINGS = {"model": "tiny", "dtype": "float32", "timeout_s": 10.0, "with_cosine": False}


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("image_url,caption\n" + "".join(f"{i}.jpg,c{i}\n" for i in range(10)))
    return path


def _rows(start: int, end: int) -> pa.Table:
    return pa.table({"n": list(range(start, end))})


def _open(source, output, resume=False, settings=SETTINGS, every_s=3600.0) -> Checkpoint:
    return Checkpoint.open(str(output), JobIdentity.of(TableFile.open(str(source)), settings), resume=resume,
                           every_s=every_s)


def test_parts_are_contiguous_and_a_resume_starts_after_them(source, tmp_path):
    output = tmp_path / "out.csv"
    first = _open(source, output)
    first.add(_rows(0, 3))
    first.add(_rows(3, 5))
    assert first.rows_done == 0  # buffered, not yet durable
    first.flush()
    first.add(_rows(5, 7))
    first.flush()
    assert sorted(os.listdir(checkpoint_dir(str(output)))) == [
        "manifest.json", "part-000000000000-000000000005.parquet", "part-000000000005-000000000007.parquet"]
    (tmp_path / "out.csv.parts" / "part-000000000007-000000000009.parquet.tmp").write_bytes(b"half a part")

    again = _open(source, output, resume=True)
    assert again.rows_done == again.rows_at_start == 7
    assert not [n for n in os.listdir(again.folder) if n.endswith(".tmp")]
    again.add(_rows(7, 10))
    again.flush()
    assert pa.concat_tables(again.tables()).column("n").to_pylist() == list(range(10))
    again.remove()
    assert not os.path.exists(checkpoint_dir(str(output)))


def test_every_s_zero_makes_each_batch_durable(source, tmp_path):
    checkpoint = _open(source, tmp_path / "out.csv", every_s=0)
    checkpoint.add(_rows(0, 2))
    assert checkpoint.rows_done == 2


def test_an_existing_checkpoint_needs_resume(source, tmp_path):
    _open(source, tmp_path / "out.csv")
    with pytest.raises(InputError, match="--resume"):
        _open(source, tmp_path / "out.csv")


def test_a_resume_with_other_settings_or_another_input_is_refused(source, tmp_path):
    _open(source, tmp_path / "out.csv")
    with pytest.raises(InputError, match=r"model \('tiny' then, 'base' now\)"):
        _open(source, tmp_path / "out.csv", resume=True, settings={**SETTINGS, "model": "base"})
    source.write_text(source.read_text() + "10.jpg,c10\n")
    with pytest.raises(InputError, match="input_size"):
        _open(source, tmp_path / "out.csv", resume=True)


def test_a_damaged_checkpoint_is_refused(source, tmp_path):
    checkpoint = _open(source, tmp_path / "out.csv", every_s=0)
    checkpoint.add(_rows(0, 2))
    os.rename(checkpoint.parts[0][2], os.path.join(checkpoint.folder, "part-000000000001-000000000002.parquet"))
    with pytest.raises(InputError, match="damaged"):
        _open(source, tmp_path / "out.csv", resume=True)
    os.unlink(os.path.join(checkpoint.folder, "manifest.json"))
    with pytest.raises(InputError, match="not a usable checkpoint"):
        _open(source, tmp_path / "out.csv", resume=True)


@pytest.mark.parametrize("kind, retry", [
    ("timeout", True), ("connection_error", True), ("http_429", True), ("http_500", True), ("http_503", True),
    ("http_404", False), ("http_5", False), ("decode_error", False), ("file_not_found", False), (None, False),
])
def test_retryable_kinds(kind, retry):
    assert is_retryable(kind) is retry


def test_retry_errors_merges_rescored_rows_in_place(tmp_path):
    schema = pa.schema([("image_url", pa.string()), ("caption", pa.string())])
    previous = pa.table({
        "image_url": ["a", "b", "c", "d"],
        "caption": ["", "x, \"y\"\nz", "c", "d"],  # an empty caption stays "", not null
        "similarity": pa.array([0.5, None, None, None], pa.float64()),
        "error": [None, "http_503: down", "http_404: gone", "timeout: slow"],
    })
    path = tmp_path / "previous.csv"
    pacsv.write_csv(previous, path)
    read = read_previous_output(OutputFile.of(str(path)), schema)
    assert read.equals(previous)
    rows = retryable_rows(read)
    assert rows == [1, 3]
    assert inputs_of(read, rows).to_pydict() == {"image_url": ["b", "d"], "caption": ["x, \"y\"\nz", "d"]}
    rescored = pa.table({"image_url": ["b", "d"], "caption": ["x, \"y\"\nz", "d"],
                         "similarity": pa.array([0.7, None], pa.float64()), "error": [None, "timeout: again"]})
    merged = merge(read, rows, rescored)
    assert merged.column("similarity").to_pylist() == [0.5, 0.7, None, None]
    assert merged.column("error").to_pylist() == [None, None, "http_404: gone", "timeout: again"]
    assert merged.schema == read.schema


def test_retry_errors_refuses_an_output_of_another_input(tmp_path):
    path = tmp_path / "previous.csv"
    path.write_text("url,text,similarity,error\n")
    with pytest.raises(InputError, match="is it the output of this input"):
        read_previous_output(OutputFile.of(str(path)),
                             pa.schema([("image_url", pa.string()), ("caption", pa.string())]))
    with pytest.raises(InputError, match="no such file"):
        read_previous_output(OutputFile.of(str(tmp_path / "nope.csv")), pa.schema([("image_url", pa.string())]))


# --- which settings a resume must match, as the Python API takes them ---------------------

class _WouldScore(Exception):
    """Raised where the job would join Ray: the checkpoint was accepted."""


# Each setting README says changes results (model, device, dtype, columns, fetch limits),
# as the API argument a user changes, with a value other than the first run's.
_RESULT_CHANGING = {
    "image column": ({"image_column": "url"}, "image_column"),
    "caption column": ({"caption_column": "text"}, "caption_column"),
    "model": ({"model": "OTHER"}, "model"),
    "device": ({"model": {"device": "auto"}}, "device"),
    "dtype": ({"model": {"dtype": "bfloat16"}}, "dtype"),
    "with cosine": ({"pipeline": {"with_cosine": True}}, "with_cosine"),
    "with probability": ({"pipeline": {"with_probability": True}}, "with_probability"),
    "with truncation": ({"pipeline": {"with_truncation": True}}, "with_truncation"),
    "with embeddings": ({"pipeline": {"with_embeddings": True}}, "with_embeddings"),
    "embedding dtype": ({"pipeline": {"embedding_dtype": "float32"}}, "embedding_dtype"),
    "timeout": ({"fetch": {"timeout_s": 3.0}}, "timeout_s"),
    "retries": ({"fetch": {"retries": 0}}, "retries"),
    "byte cap": ({"fetch": {"max_bytes": 1000}}, "max_bytes"),
    "redirect cap": ({"fetch": {"max_redirects": 0}}, "max_redirects"),
    "pixel cap": ({"fetch": {"max_pixels": 1000}}, "max_pixels"),
    "full decode": ({"fetch": {"reduced_decode": False}}, "reduced_decode"),
    "ignore opt-out": ({"fetch": {"honor_opt_out": False}}, "honor_opt_out"),
}
# Settings that shape the job but not its results: a resume may change them.
_RESULT_KEEPING = {
    "batch size": {"pipeline": {"batch_size": 7}},
    "fetch batch size": {"pipeline": {"fetch_batch_size": 5}},
    "fetch concurrency": {"fetch": {"max_in_flight": 3}},
    "per-host cap": {"fetch": {"per_host_limit": 2}},
    "user agent": {"fetch": {"user_agent": "someone else"}},
    "retry back-off": {"fetch": {"backoff_s": 1.0}},
    "Retry-After cap": {"fetch": {"retry_after_cap_s": 1.0}},
    "torch threads": {"model": {"cpu_threads": 1}},
    "fetch actors": {"pipeline": {"fetch_actors": 2}},
    "scorer actors": {"pipeline": {"scorer_actors": 2}},
}


def test_every_config_field_is_declared_and_tested_as_changing_results_or_not():
    """A new settings field needs a decision: `result_setting` or `shape_setting` where it is
    declared (`config`), and a row in one of the two tables above, whose resumes below check
    that declaration against a real job."""
    from tis_ray.config import CHANGES_RESULTS, FetchConfig, ModelConfig, PipelineConfig

    changing = {name for _, name in _RESULT_CHANGING.values()}
    keeping = {name for change in _RESULT_KEEPING.values() for part in change.values() for name in part}
    for config in (FetchConfig, ModelConfig, PipelineConfig):
        for field in dataclasses.fields(config):
            where = f"{config.__name__}.{field.name}"
            assert (field.name in changing) != (field.name in keeping), f"{where}: in neither table, or in both"
            assert field.metadata.get(CHANGES_RESULTS) is (field.name in changing), f"{where}: declared otherwise"


def test_setting_names_are_distinct_across_the_configs():
    """The manifest keeps each result setting under its own field name, the three configs' together."""
    from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig

    names = [field.name for config in (FetchConfig, ModelConfig, PipelineConfig)
             for field in dataclasses.fields(config)]
    assert len(names) == len(set(names))


def _api_args(tiny_model: str, other_model: str, change: dict) -> dict:
    from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig

    model = {"model": tiny_model, "device": "cpu", "dtype": "float32"}
    if change.get("model") == "OTHER":
        model["model"] = other_model
    elif isinstance(change.get("model"), dict):
        model.update(change["model"])
    return {
        "image_column": change.get("image_column", "image_url"),
        "caption_column": change.get("caption_column", "caption"),
        "model": ModelConfig(**model),
        "fetch": FetchConfig(**change.get("fetch", {})),
        "pipeline": PipelineConfig(**change.get("pipeline", {})),
    }


@pytest.fixture()
def interrupted(tmp_path, siglip_model, monkeypatch):
    """An input with spare columns, and the checkpoint a first run with default settings left
    (laid down by a real `score_file` stopped where it would join Ray, after 0 rows). A SigLIP
    model and a Parquet output, so that every column option is open to a resume."""
    import shutil

    from tis_ray import api, score_file

    source = tmp_path / "in.csv"
    source.write_text("image_url,url,caption,text\na.jpg,b.jpg,a cat,a dog\n")
    output = tmp_path / "out.parquet"
    tiny_model = siglip_model
    other_model = str(tmp_path / "other-model")
    shutil.copytree(tiny_model, other_model)

    def would_score(*args, **kwargs):
        raise _WouldScore

    monkeypatch.setattr(api, "connect", would_score)
    with pytest.raises(_WouldScore):
        score_file(str(source), str(output), progress=False, **_api_args(tiny_model, other_model, {}))
    assert os.path.isdir(checkpoint_dir(str(output)))
    return source, output, tiny_model, other_model


@pytest.mark.parametrize("change", _RESULT_CHANGING.values(), ids=_RESULT_CHANGING.keys())
def test_a_resume_that_changes_a_result_changing_setting_is_refused_and_named(interrupted, change):
    from tis_ray import score_file

    source, output, tiny_model, other_model = interrupted
    args, name = change
    with pytest.raises(InputError, match="cannot resume") as refused:
        score_file(str(source), str(output), progress=False, resume=True, **_api_args(tiny_model, other_model, args))
    assert f"{name} (" in str(refused.value)
    assert str(refused.value).count(" then, ") == 1  # that setting and nothing else


@pytest.mark.parametrize("change", [{}, *_RESULT_KEEPING.values()], ids=["same", *_RESULT_KEEPING.keys()])
def test_a_resume_that_changes_nothing_or_only_the_jobs_shape_is_accepted(interrupted, change):
    from tis_ray import score_file

    source, output, tiny_model, other_model = interrupted
    with pytest.raises(_WouldScore):
        score_file(str(source), str(output), progress=False, resume=True, **_api_args(tiny_model, other_model, change))


def test_the_manifest_holds_exactly_the_result_changing_settings(interrupted):
    _, output, _, _ = interrupted
    with open(os.path.join(checkpoint_dir(str(output)), "manifest.json")) as f:
        settings = json.load(f)["settings"]
    assert set(settings) == {name for _, name in _RESULT_CHANGING.values()} | {"prefix"}


def test_a_new_field_joins_the_resume_check_by_its_declaration_alone(tmp_path, tiny_model, monkeypatch):
    """Nothing lists the settings a resume checks: a field added to FetchConfig (here by a
    subclass) as a `result_setting` is in the manifest under its name and a resume with another
    value is refused; as a `shape_setting` it is not; declared as neither, the job refuses to start."""
    from tis_ray import api, score_file
    from tis_ray.config import FetchConfig, ModelConfig, result_setting, shape_setting

    def with_field(name, default):
        return dataclasses.make_dataclass(f"FetchConfigWith_{name}", [(name, int, default)], bases=(FetchConfig,),
                                          frozen=True)

    def would_score(*args, **kwargs):
        raise _WouldScore

    monkeypatch.setattr(api, "connect", would_score)
    source = tmp_path / "in.csv"
    source.write_text("image_url,caption\na.jpg,a cat\n")
    model = ModelConfig(model=tiny_model, device="cpu", dtype="float32")

    def run(output, fetch, resume=False):
        score_file(str(source), str(output), model=model, fetch=fetch, progress=False, resume=resume)

    changing, shaping = with_field("min_quality", result_setting(50)), with_field("max_sockets", shape_setting(8))
    for config, output in ((changing, tmp_path / "a.csv"), (shaping, tmp_path / "b.csv")):
        with pytest.raises(_WouldScore):
            run(output, config())
    with open(os.path.join(checkpoint_dir(str(tmp_path / "a.csv")), "manifest.json")) as f:
        assert json.load(f)["settings"]["min_quality"] == 50
    with pytest.raises(InputError, match=r"min_quality \(50 then, 60 now\)"):
        run(tmp_path / "a.csv", changing(min_quality=60), resume=True)
    with open(os.path.join(checkpoint_dir(str(tmp_path / "b.csv")), "manifest.json")) as f:
        assert "max_sockets" not in json.load(f)["settings"]
    with pytest.raises(_WouldScore):
        run(tmp_path / "b.csv", shaping(max_sockets=2), resume=True)
    with pytest.raises(TypeError, match="undecided"):
        run(tmp_path / "c.csv", with_field("undecided", 0)())
