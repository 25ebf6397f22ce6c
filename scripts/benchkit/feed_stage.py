"""(e)'s score stage: the real `ScoreStage` with every model replaced by one that does no work.

The pipeline around it is the real one (read, fetch actors, the object store, the driver
writing the output), so (e)'s rate is what the feed gives a scorer that takes everything
at once: the pixels are still copied out of Arrow as the real stage does, the result
columns are written (a cosine of 0), and only the model is missing.
"""

from __future__ import annotations

import numpy as np

from tis_ray.score_stage import ScoreStage
from tis_ray.scorer import ScoreBatch


class NoModel:
    """A scorer's interface without a model: a cosine of 0 for every pair."""

    device = "cpu"
    dtype_name = "no model"

    def pixel_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, dtype=np.uint8)

    def score(self, pixels: np.ndarray, captions: list[str], keys: np.ndarray) -> ScoreBatch:
        rows = len(captions)
        none = np.zeros((rows, 0), dtype=np.float32)
        return ScoreBatch(cosine=np.zeros(rows, dtype=np.float32), truncated=np.zeros(rows, dtype=bool),
                          image_embeddings=none, text_embeddings=none)


class FeedOnlyStage(ScoreStage):
    def __init__(self, caption_column, models, pixel_columns, pipeline, results):
        self.caption_column = caption_column
        self.models = models
        self.pixel_columns = pixel_columns
        self.embedding_dtype = np.dtype(pipeline.embedding_dtype)
        self.results = results
        self.scorers = [NoModel() for _ in models]
        self.embedding_sizes = [0 for _ in models]
        self.runtime = "cpu/no model"  # device/dtype, as the stats file reads it
