"""Typed settings for each stage; the CLI, the Python API and Serve all build these."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from . import __version__
from .errors import InputError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
PROJECT_URL = "https://github.com/tis-ray/tis-ray"
# Who is asking, and where to read about it: what site owners look for in their logs.
DEFAULT_USER_AGENT = f"tis-ray/{__version__} (+{PROJECT_URL})"

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
EmbeddingDType = Literal["float16", "float32"]


# Online batching across requests: the defaults of `tis-ray serve` and its deployment.
SERVE_MAX_BATCH_SIZE = 32
SERVE_BATCH_WAIT_MS = 10.0
# Per replica: requests handled at once, and requests waiting in Serve's router beyond
# those; one more is answered 503 at once instead of queueing without bound.
SERVE_MAX_ONGOING_REQUESTS = 64
SERVE_MAX_QUEUED_REQUESTS = 256
# The service's own pixel cap, below Pillow's 89.5 M: a 224-384 px model gains nothing from
# more, and each decode in flight holds 3-4 bytes a pixel (see docs/reliability.md, Security).
SERVE_MAX_PIXELS = 40_000_000

# Rows per scorer call where the job does not say (`PipelineConfig.batch_size` None), by the device
# the scorer runs on: a GPU needs a few hundred rows a call before the per-batch host work (copies,
# tokenising, transfer) stops bounding its rate (docs/benchmarks.md, "Scorer overhead"); a CPU
# gains nothing past a few dozen, and every row's activations are held at once.
GPU_SCORER_BATCH_SIZE = 256
CPU_SCORER_BATCH_SIZE = 64

# Every settings field says whether its value changes what a job writes (`result_setting`) or
# only how the job runs (`shape_setting`): a resume must find the first kind unchanged
# (`checkpoint.result_settings`), and a field marked neither fails every file job.
CHANGES_RESULTS = "changes_results"
_Default = TypeVar("_Default")


def result_setting(default: _Default) -> _Default:
    """A field whose value changes a job's results: a checkpoint is resumed only with the same value."""
    return field(default=default, metadata={CHANGES_RESULTS: True})


def shape_setting(default: _Default) -> _Default:
    """A field that shapes how a job runs (concurrency, pacing, batch and pool sizes), never what it
    writes: a resume may change it."""
    return field(default=default, metadata={CHANGES_RESULTS: False})


@dataclass(frozen=True)
class FetchConfig:
    """How images are fetched and decoded."""

    max_in_flight: int = shape_setting(64)  # concurrent requests per fetch actor
    per_host_limit: int = shape_setting(16)  # concurrent connections to one host, per actor
    timeout_s: float = result_setting(10.0)  # total time for one image, retries included
    retries: int = result_setting(2)  # extra attempts after a connection error, a 429 or a 5xx
    backoff_s: float = shape_setting(0.25)  # first retry delay; doubles each attempt
    retry_after_cap_s: float = shape_setting(5.0)  # longest Retry-After we honour
    max_bytes: int = result_setting(20 * 1024 * 1024)  # byte cap per image, checked while streaming
    max_redirects: int = result_setting(5)
    max_pixels: int = result_setting(89_478_485)  # Pillow's own decompression-bomb threshold
    reduced_decode: bool = result_setting(True)  # decode large JPEGs at 1/2..1/8 scale, not below the model's input
    user_agent: str = shape_setting(DEFAULT_USER_AGENT)
    honor_opt_out: bool = result_setting(True)  # X-Robots-Tag noai and kin make a row `opted_out` (see optout.py)


@dataclass(frozen=True)
class ModelConfig:
    """Which CLIP checkpoint runs, where and at what precision."""

    model: str = result_setting(DEFAULT_MODEL)
    device: Device = result_setting("auto")
    dtype: DType = result_setting("auto")
    cpu_threads: int | None = shape_setting(None)  # torch threads per CPU scorer actor; None = the node's cores

    @classmethod
    def of(cls, model: str | ModelConfig | None, *, device: Device | None = None,
           dtype: DType | None = None) -> ModelConfig:
        """What every entry point takes for a model: a checkpoint id or folder, or a whole
        `ModelConfig`; None is the default model. `device` and `dtype`, where given, override."""
        config = model if isinstance(model, ModelConfig) else cls() if model is None else cls(model=model)
        if device is not None:
            config = replace(config, device=device)
        if dtype is not None:
            config = replace(config, dtype=dtype)
        return config


@dataclass(frozen=True)
class PipelineConfig:
    """How the Ray Data job is shaped."""

    batch_size: int | None = shape_setting(None)  # rows per scorer call; None = by device (`scorer_batch_size`)
    fetch_batch_size: int = shape_setting(32)  # rows per fetch call
    fetch_actors: int | None = shape_setting(None)  # None = sized from the cluster
    scorer_actors: int | None = shape_setting(None)  # None = from the GPUs and the job's size (`pool_sizing`); 1 on CPU
    with_cosine: bool = result_setting(False)
    with_probability: bool = result_setting(False)  # the pair head's probability (SigLIP families only)
    with_truncation: bool = result_setting(False)  # a per-row caption_truncated flag
    with_embeddings: bool = result_setting(False)  # unit image and text embeddings (Parquet output only)
    embedding_dtype: EmbeddingDType = result_setting("float16")


def scorer_batch_size(asked: int | None, device: str) -> int:
    """Rows per scorer call: `asked` where the job set it, else the default for `device` ("cuda" or "cpu")."""
    if asked is not None:
        return asked
    return GPU_SCORER_BATCH_SIZE if device == "cuda" else CPU_SCORER_BATCH_SIZE


# A model's name in a job: it ends column names (similarity_<name>), so it is kept to characters
# that need no quoting in SQL, pandas or a shell.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NamedModel:
    """One of a job's models and its name, which ends its columns' names where a job has several
    (``similarity_<name>``)."""

    name: str
    config: ModelConfig


# What the job functions take for their models: one (an id, a folder or a `ModelConfig`; None is
# the default), several in a sequence (each may be a ``(name, model)`` pair), or a name -> model map.
Models = (str | ModelConfig | None | Mapping[str, str | ModelConfig]
          | Sequence[str | ModelConfig | tuple[str | None, str | ModelConfig]])


def named_models(models: Models, *, device: Device | None = None, dtype: DType | None = None
                 ) -> tuple[NamedModel, ...]:
    """The job's models, in order, each named: as given, else by the last part of its id or folder
    (``openai/clip-vit-base-patch32`` is ``clip-vit-base-patch32``). `InputError` for a bad or a
    repeated name where names end columns (a named model, or several)."""
    items: list[tuple[str | None, str | ModelConfig | None]]
    if models is None or isinstance(models, str | ModelConfig):
        items = [(None, models)]
    elif isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = [item if isinstance(item, tuple) else (None, item) for item in models]
    if not items:
        raise InputError("no model given")
    named = []
    for given, model in items:
        config = ModelConfig.of(model, device=device, dtype=dtype)
        name = os.path.basename(config.model.rstrip("/")) if given is None else given
        # One unnamed model's name ends no column: any folder name will do for it.
        if (given is not None or len(items) > 1) and not MODEL_NAME.match(name):
            raise InputError(f"{name!r} cannot name a model's columns: use letters, digits, '_', '.' or '-' "
                             f"(name it with --model NAME={config.model})")
        named.append(NamedModel(name, config))
    names = [model.name for model in named]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise InputError(f"two models are named {repeated[0]!r}; name them apart: --model NAME=MODEL")
    return tuple(named)


def split_model_option(text: str) -> tuple[str | None, str]:
    """``NAME=MODEL`` to its name and model; a plain id or folder has no name. A hub id never holds
    '=', and a name holds no '/', so a folder path with '=' in it stays whole."""
    name, equals, model = text.partition("=")
    if equals and MODEL_NAME.match(name) and model:
        return name, model
    return None, text
