"""The row types of the Python API, and the one check every caption passes.

A `Record` goes in, a `ScoreResult` comes out; `check_caption` is where an empty or
missing caption becomes that row's error rather than a score of the text "nan".
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EMPTY_CAPTION, RowError


@dataclass(frozen=True)
class Record:
    """One pair to score: an image (URL or path) and its caption."""

    image: str
    caption: str


@dataclass(frozen=True)
class ScoreResult:
    """The outcome for one `Record`: a similarity in [0, 1], or an error."""

    image: str
    caption: str
    similarity: float | None
    cosine: float | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_caption(caption: object) -> str:
    """The caption as text, or `RowError` when there is nothing to score."""
    if caption is None or (isinstance(caption, float) and caption != caption):
        # NaN is how a float column says "missing"; scoring the text "nan" would be wrong
        raise RowError(EMPTY_CAPTION, "the caption is missing")
    text = caption if isinstance(caption, str) else str(caption)
    if not text.strip():
        raise RowError(EMPTY_CAPTION, "the caption is empty")
    return text
