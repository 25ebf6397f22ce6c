"""Every entry point takes a model as an id or a `ModelConfig` (`ModelConfig.of`)."""

from __future__ import annotations

from tis_ray import ModelConfig
from tis_ray.config import DEFAULT_MODEL


def test_a_model_id_a_config_or_nothing_make_the_same_kind_of_config():
    assert ModelConfig.of(None) == ModelConfig(model=DEFAULT_MODEL, device="auto", dtype="auto")
    assert ModelConfig.of("some/checkpoint") == ModelConfig(model="some/checkpoint")
    given = ModelConfig(model="dir", device="cpu", dtype="float32", cpu_threads=2)
    assert ModelConfig.of(given) is given


def test_device_and_dtype_override_only_where_given():
    given = ModelConfig(model="dir", device="cpu", dtype="float32", cpu_threads=2)
    assert ModelConfig.of(given, dtype="bfloat16") == ModelConfig(model="dir", device="cpu", dtype="bfloat16",
                                                                  cpu_threads=2)
    assert ModelConfig.of("dir", device="cuda") == ModelConfig(model="dir", device="cuda", dtype="auto")


def test_a_misspelt_job_option_is_refused_not_dropped(tmp_path):
    import pytest

    from tis_ray import retry_errors, score_file

    with pytest.raises(TypeError, match="caption_colum"):
        score_file(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), caption_colum="text")
    with pytest.raises(TypeError, match="prefx"):
        retry_errors(str(tmp_path / "in.csv"), str(tmp_path / "old.csv"), str(tmp_path / "out.csv"), prefx="tis_")
