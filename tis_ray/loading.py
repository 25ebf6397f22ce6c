"""Loading a dual-encoder checkpoint (hub id or local folder) and choosing device and dtype.

The driver calls `load_preprocess_spec` before any Ray work, so a wrong or
unreachable model, or one of a family tis-ray does not score, is one clear message
up front; each scorer actor then calls `load_model`. `model_family` reads the family
from the checkpoint's own config (``model_type``), never from its name.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

import torch

from .errors import ModelLoadError
from .preprocess import PreprocessSpec

HUB_HINT = (
    "the Hugging Face hub cannot be reached and the model is not in the local cache. "
    "To run offline, pass --model with a local checkpoint folder "
    "(a downloaded checkpoint, or a random-weight test model from "
    "`python scripts/make_test_model.py DIR --arch tiny`)"
)


def _describe_load_failure(model: str, exc: Exception) -> ModelLoadError:
    if os.path.isdir(model):
        return ModelLoadError(f"cannot load model from folder {model!r}: {str(exc).splitlines()[0]}")
    if model.startswith((".", "/", "~")):
        return ModelLoadError(f"model folder {model!r} does not exist")
    text = str(exc)
    if "couldn't connect" in text.lower() or "offline" in text.lower():
        return ModelLoadError(f"cannot load model {model!r}: {HUB_HINT}")
    return ModelLoadError(f"cannot load model {model!r}: {text.splitlines()[0]}")


Family = Literal["clip", "siglip"]

# model_type in the checkpoint's config.json -> the family that scores it. SigLIP 2's
# fixed-resolution checkpoints (google/siglip2-base-patch16-224 and the like) are
# model_type "siglip" with a Gemma tokenizer: the SigLIP architecture, scored alike.
FAMILIES: dict[str, Family] = {"clip": "clip", "siglip": "siglip"}
SUPPORTED = "CLIP (model_type 'clip') and SigLIP or fixed-resolution SigLIP 2 (model_type 'siglip')"
# A NaFlex SigLIP 2 resizes each image to its own patch grid (aspect kept, at most
# max_num_patches patches) and the model needs that grid: the fetch stage's fixed-size
# pixel arrays cannot carry it, so scoring one exactly needs a pixel format of its own.
NAFLEX_HINT = (
    "SigLIP 2 NaFlex checkpoints (model_type 'siglip2') are not supported yet; "
    "use a fixed-resolution SigLIP 2 checkpoint such as google/siglip2-base-patch16-224"
)


def _require_hub_or_cache(model: str) -> None:
    """`HUB_HINT` at once when `model` is a hub id that is not cached and the hub does not answer.

    Without this the hub client, finding no cached copy after a failed lookup, retries it
    five more times with back-off (huggingface_hub 2.4 `_http_backoff_base`: 1+2+4+8+8 s, each
    retry announced as a warning) before the same message. Here one lookup decides, by the
    hub client's own request (its endpoint, proxies, token and `HF_HUB_ETAG_TIMEOUT`), no
    retry. A cached model never waits on it, and offline mode is left to the hub client.
    """
    if os.path.isdir(model) or model.startswith((".", "/", "~")):
        return
    import httpx2  # huggingface_hub 2's HTTP client (its own requirement): its errors are what it raises
    from huggingface_hub import (
        get_hf_file_metadata,
        hf_hub_url,
        is_offline_mode,
        try_to_load_from_cache,
    )
    from huggingface_hub.constants import HF_HUB_ETAG_TIMEOUT
    from transformers.utils import CONFIG_NAME

    if is_offline_mode() or isinstance(try_to_load_from_cache(model, CONFIG_NAME), str):
        return
    try:
        get_hf_file_metadata(hf_hub_url(model, CONFIG_NAME), timeout=HF_HUB_ETAG_TIMEOUT)
    except httpx2.TransportError:  # no answer: refused, unresolvable, timed out
        raise ModelLoadError(f"cannot load model {model!r}: {HUB_HINT}") from None
    except Exception:  # noqa: BLE001 - the hub answered (unknown or gated repo, 5xx) or the id is malformed:
        return  # from_pretrained says which, as it did before this check


def model_family(model: str) -> Family:
    """The family of the checkpoint, from its config; a one-line error for any other."""
    from transformers import AutoConfig

    _require_hub_or_cache(model)
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise _describe_load_failure(model, exc) from None
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    hint = NAFLEX_HINT if model_type == "siglip2" else f"tis-ray scores with {SUPPORTED} checkpoints"
    raise ModelLoadError(f"{model!r} is a {model_type!r} model: {hint}")


def load_preprocess_spec(model: str) -> PreprocessSpec:
    """The image preprocessing the checkpoint's own image processor would do."""
    from transformers import AutoImageProcessor

    model_family(model)
    try:
        processor = AutoImageProcessor.from_pretrained(model, backend="pil")
        return PreprocessSpec.from_image_processor(processor)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise _describe_load_failure(model, exc) from None


# How to get a torch that can use the GPU: the CUDA build of the same version (as cluster.yaml's GPU nodes do).
CUDA_TORCH_HINT = "install the CUDA build of torch: pip install torch=={version} --index-url " \
    "https://download.pytorch.org/whl/cu128 (or run with --device cpu)"


def resolve_device(requested: str) -> str:
    """The device a scorer runs on (batch scorer actors, Serve replicas and the warm scorer
    all resolve theirs here); `ModelLoadError` where it cannot be what was asked for, or
    where Ray gave this actor a GPU that torch cannot use (see `choose_device`)."""
    return choose_device(requested, ray_gpu_ids(), torch.__version__, torch.version.cuda is not None,
                         _cuda_unavailable_reason())


def choose_device(requested: str, gpu_ids: list[str], torch_version: str, cuda_built: bool,
                  cuda_unavailable: str | None) -> str:
    """The device for `requested` (auto, cpu or cuda), given the GPUs Ray assigned this process
    (`gpu_ids`) and torch's CUDA state: whether it was built with CUDA, and why CUDA cannot be
    used (None: it can).

    A process Ray gave a GPU holds it from every other actor: with a torch that cannot use it,
    ``auto`` would score on the CPU at CPU speed while the GPU sits idle and reserved, so that
    fails here, in one line that says why and what to install, rather than running slowly.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ModelLoadError(f"unknown device {requested!r} (use auto, cpu or cuda)")
    if requested == "cpu":
        return "cpu"
    if cuda_unavailable is None:
        return "cuda"
    if gpu_ids:
        held = f"Ray gave this actor GPU {', '.join(gpu_ids)} but torch {torch_version}"
        problem = f"cannot use it: CUDA is not available: {cuda_unavailable}" if cuda_built else \
            "was built without CUDA"
        version = torch_version.split("+")[0]
        raise ModelLoadError(f"{held} {problem}; {CUDA_TORCH_HINT.format(version=version)}")
    if requested == "cuda":
        raise ModelLoadError("--device cuda was asked for, but no CUDA device is visible here")
    return "cpu"


def ray_gpu_ids() -> list[str]:
    """The GPUs Ray assigned this process: none outside Ray (a Spark worker, a plain script) or in a driver."""
    ray = sys.modules.get("ray")  # a process Ray placed has imported it; no other has GPUs from Ray
    if ray is None or not ray.is_initialized():
        return []
    return list(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))


def _cuda_unavailable_reason() -> str | None:
    """Why torch cannot use CUDA here, in torch's own first line; None when it can."""
    if torch.cuda.is_available():
        return None
    try:
        torch.cuda.init()  # raises with the reason: not compiled with CUDA, no driver, no device visible
    except (AssertionError, RuntimeError) as exc:
        return (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return "torch.cuda.is_available() is False"  # init passed, yet no device: said as torch says it


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """auto: float16 on CUDA, bfloat16 on a CPU with native bf16 instructions, else float32."""
    if requested == "auto":
        if device == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested not in dtypes:
        raise ModelLoadError(f"unknown dtype {requested!r} (use auto, float32, bfloat16 or float16)")
    if requested == "float16" and device == "cpu":
        raise ModelLoadError("float16 is for CUDA; on a CPU use bfloat16 or float32")
    return dtypes[requested]


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); Linux only."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def load_model(model: str, device: str, dtype: torch.dtype, family: Family):
    """The model (eval mode, on `device`, in `dtype`) and its tokenizer, for a checkpoint
    of `family` (the scorer class asks for its own, so a mismatch fails here)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per actor start is noise in a job's log
    found = model_family(model)
    if found != family:
        raise ModelLoadError(f"{model!r} is a {found} checkpoint, not {family}")
    try:
        network = AutoModel.from_pretrained(model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise _describe_load_failure(model, exc) from None
    except ImportError as exc:  # SigLIP's SentencePiece tokenizer needs the sentencepiece package
        # transformers' text is a paragraph that starts with a newline: keep its first sentence.
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".")
        install = " (pip install sentencepiece)" if "sentencepiece" in reason.lower() else ""
        raise ModelLoadError(f"cannot load the tokenizer of {model!r}: {reason}{install}") from None
    return network.to(device).eval(), tokenizer


def embedding_size(model: str) -> int:
    """How many numbers a unit embedding of the checkpoint has (image and text share the space):
    from its config, so that a job's embedding columns are typed before any model loads."""
    from transformers import AutoConfig

    return embedding_size_of(AutoConfig.from_pretrained(model))  # the family was checked with the spec


def embedding_size_of(config) -> int:
    """The embedding length a loaded checkpoint's config gives (see `embedding_size`)."""
    # CLIPModel projects both towers to projection_dim; SiglipModel's image embedding is the
    # vision tower's pooled output (hidden_size), and its text head projects to the same length.
    return int(config.projection_dim if config.model_type == "clip" else config.vision_config.hidden_size)
