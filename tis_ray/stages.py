"""The two Ray Data stages: thin adapters from Arrow batches to the plain modules.

`FetchStage` is an async actor: it prepares a batch's images concurrently with one
`ImagePreparer`. `ScoreStage` holds one `ClipScorer`. Both take and return Arrow
tables so that the user's other columns pass through untouched.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
from ray.data.extensions import ArrowTensorArray

from .columns import FETCH_ERROR, PIXELS, RUNTIME, TRUNCATED
from .config import FetchConfig, ModelConfig
from .errors import RowError
from .prepare import ImagePreparer
from .preprocess import PreprocessSpec
from .records import check_caption
from .scorer import ClipScorer
from .scoring import similarity_from_cosine
from .sources import classify_image_ref



class FetchStage:
    def __init__(self, image_column: str, caption_column: str, base_dir: str, fetch: FetchConfig,
                 spec: PreprocessSpec):
        self.image_column = image_column
        self.caption_column = caption_column
        self.base_dir = base_dir
        self.spec = spec
        self.preparer = ImagePreparer(fetch, spec)
        self.loop = None  # the event loop Ray runs this actor's calls on

    async def __call__(self, batch: pa.Table) -> pa.Table:
        self.loop = asyncio.get_running_loop()
        refs = batch.column(self.image_column).to_pylist()
        # A row without a caption fails whatever its image, so its image is not fetched.
        caption_errors = [_caption_error(c) for c in batch.column(self.caption_column).to_pylist()]
        distinct = list(dict.fromkeys(ref for ref, error in zip(refs, caption_errors) if error is None))
        outcomes = dict(zip(distinct, await asyncio.gather(*(self._prepare(ref) for ref in distinct))))
        height, width = self.spec.output_size
        pixels = np.zeros((len(refs), height, width, 3), dtype=np.uint8)
        errors: list[str | None] = []
        for row, ref in enumerate(refs):
            outcome = caption_errors[row] or outcomes[ref]
            if isinstance(outcome, RowError):
                errors.append(str(outcome))
            else:
                pixels[row] = outcome
                errors.append(None)
        return batch.append_column(PIXELS, ArrowTensorArray.from_numpy(pixels)).append_column(
            FETCH_ERROR, pa.array(errors, type=pa.string())
        )

    def __del__(self):
        if self.loop is None or not self.loop.is_running():
            return
        closing = asyncio.run_coroutine_threadsafe(self.preparer.close(), self.loop)
        if not _runs_on(self.loop):  # waiting on the loop's own thread would block the close
            closing.result(timeout=2)

    async def _prepare(self, ref) -> np.ndarray | RowError:
        try:
            return await self.preparer.from_source(classify_image_ref(ref, self.base_dir))
        except RowError as error:
            return error
        except Exception as exc:  # noqa: BLE001 - hostile input must cost one row, not the job
            return RowError.internal(exc)


class ScoreStage:
    def __init__(self, caption_column: str, model: ModelConfig, with_cosine: bool):
        self.caption_column = caption_column
        self.with_cosine = with_cosine
        self.scorer = ClipScorer(model)
        self.runtime = f"{self.scorer.device}/{self.scorer.dtype_name}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.num_rows
        errors = batch.column(FETCH_ERROR).to_pylist()  # caption errors included: FetchStage checked them
        ok = np.array([error is None for error in errors], dtype=bool)
        cosine = np.zeros(rows, dtype=np.float32)
        truncated = np.zeros(rows, dtype=bool)
        if ok.any():
            pixels = _tensor_column(batch, PIXELS)
            captions = [check_caption(c) for c, good in zip(batch.column(self.caption_column).to_pylist(), ok) if good]
            scored = self.scorer.score(pixels[ok], captions)
            cosine[ok], truncated[ok] = scored.cosine, scored.truncated
        missing = ~ok
        out = batch.drop_columns([PIXELS, FETCH_ERROR])
        out = out.append_column("similarity", pa.array(similarity_from_cosine(cosine), mask=missing))
        if self.with_cosine:
            out = out.append_column("cosine", pa.array(cosine.astype(np.float64), mask=missing))
        out = out.append_column("error", pa.array(errors, type=pa.string()))
        out = out.append_column(TRUNCATED, pa.array(truncated))
        return out.append_column(RUNTIME, pa.array([self.runtime] * rows, type=pa.string()))


def _caption_error(caption: object) -> RowError | None:
    try:
        check_caption(caption)
    except RowError as error:
        return error
    return None


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _tensor_column(table: pa.Table, name: str) -> np.ndarray:
    return np.concatenate([chunk.to_numpy() for chunk in table.column(name).chunks])
