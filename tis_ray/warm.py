"""The body of a warm scorer: one process that keeps a fetcher and a loaded model between calls.

It holds the batch pipeline's own two stages, a `FetchStage` and a `ScoreStage`, and
runs a call's rows through both: the same fetch, decode, limits, caption checks, row
errors and model code as a Ray Data job, without building one. It is a plain class
(`session` makes it a Ray actor), so it is tested without Ray too.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from .config import FetchConfig, ModelConfig, scorer_batch_size
from .fetch_stage import FetchStage
from .preprocess import PreprocessSpec
from .score_stage import ScoreStage

# The columns of the tables a warm scorer takes (see `pairs_table`).
IMAGE, CAPTION = "image", "caption"


@dataclass(frozen=True)
class ScorerInfo:
    """Which process scores, and where: for a user's own checks and for the tests."""

    pid: int
    runtime: str  # "device/dtype", as the summary's runtimes say it


def pairs_table(images: list[str], captions: list[str]) -> pa.Table:
    """Pairs as the table both the warm scorer and the pipeline path read."""
    return pa.table({IMAGE: pa.array(images, pa.string()), CAPTION: pa.array(captions, pa.string())})


class WarmScorer:
    def __init__(self, model: ModelConfig, fetch: FetchConfig, spec: PreprocessSpec):
        self.fetch_stage = FetchStage(image_column=IMAGE, caption_column=CAPTION, base_dir=os.getcwd(), fetch=fetch,
                                      specs=(spec,))
        self.score_stage = ScoreStage.one_model(CAPTION, model, with_cosine=True)
        # The model runs off the event loop: a call's fetch time limits tick on the loop, and
        # a model call on it would stall every fetch in flight for another call past them.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="tis-score")

    async def describe(self) -> ScorerInfo:
        return ScorerInfo(pid=os.getpid(), runtime=self.score_stage.runtime)

    async def score(self, pairs: pa.Table, base_dir: str, batch_size: int | None) -> pa.Table:
        """`pairs` (see `pairs_table`) with ``similarity``, ``cosine``, ``error`` and the internal
        summary columns, in order; relative paths resolve against `base_dir`.

        Every image is fetched at once (the fetcher caps requests in flight and per host);
        the model sees `batch_size` rows at a time (None: its device's default), as a pipeline's scorer does.
        """
        batch_size = scorer_batch_size(batch_size, self.score_stage.scorers[0].device)
        fetched = await self.fetch_stage.prepare(pairs, base_dir)
        loop = asyncio.get_running_loop()
        parts = [
            await loop.run_in_executor(self.model_thread, self.score_stage, fetched.slice(start, batch_size))
            for start in range(0, max(fetched.num_rows, 1), batch_size)
        ]
        return pa.concat_tables(parts)
