"""tis-ray: score how well a caption describes an image with CLIP, on Ray.

The public API is what `__all__` lists, imported from here (``from tis_ray import
score_file, ModelConfig``); plus ``tis_ray.serve:build_app`` for Serve configs and the
integrations ``tis_ray.airflow`` and ``tis_ray.spark``. Every other module is internal:
its names may change between releases.
"""

__version__ = "0.1.0"

# Light modules (no Ray, no torch) load with the package; the entry points that start Ray
# or load a model load on first use, so `import tis_ray` stays fast.
from .config import FetchConfig, ModelConfig, PipelineConfig  # noqa: E402
from .errors import InputError, ModelLoadError, OutputError, RowError, TisRayError  # noqa: E402
from .records import Record, ScoreResult  # noqa: E402

_LAZY = {
    "score_file": "api", "retry_errors": "api", "score_dataset": "api", "score_pairs": "api",
    "Scorer": "session", "release_scorers": "session",
    "JobSummary": "summary",
}

__all__ = [
    "score_file", "retry_errors", "score_dataset", "score_pairs", "Scorer", "release_scorers",
    "ModelConfig", "FetchConfig", "PipelineConfig", "Record", "ScoreResult", "JobSummary",
    "TisRayError", "InputError", "OutputError", "ModelLoadError", "RowError", "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tis_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
