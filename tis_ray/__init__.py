"""tis-ray: score how well a caption describes an image with CLIP, on Ray."""

__version__ = "0.1.0"

from .records import Record, ScoreResult  # noqa: E402

__all__ = ["Record", "ScoreResult", "Scorer", "score_pairs", "release_scorers", "score_dataset", "score_file",
           "retry_errors", "__version__"]


def __getattr__(name: str):
    # The scoring functions import Ray and torch; load them only when used.
    if name in ("score_pairs", "score_dataset", "score_file", "retry_errors"):
        from . import api

        return getattr(api, name)
    if name in ("Scorer", "release_scorers"):
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module 'tis_ray' has no attribute {name!r}")
