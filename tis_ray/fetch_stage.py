"""The fetch stage: a thin async-actor adapter from Arrow batches to `ImagePreparer`.

It prepares a batch's images concurrently (fetched, or decoded from bytes the input
holds) and appends their pixels, one column per distinct preprocessing of the job's
models (`columns.pixels_column`), and any row error, so that the user's other columns
pass through untouched. The shard reader's internal columns (the sample's image bytes
and its read error) are used here and dropped, so image bytes never travel on. It imports neither torch nor
the model, which keeps each fetch actor's start-up and memory small.
"""

from __future__ import annotations

import asyncio
import weakref

import numpy as np
import pyarrow as pa
from ray.data.extensions import ArrowTensorArray

from .columns import FETCH_ERROR, IMAGE_BYTES, IMAGE_KEY, READ_ERROR, pixels_column, pixels_key
from .config import FetchConfig
from .errors import RowError
from .prepare import DECODE_THREADS, ImagePreparer
from .preprocess import PreprocessSpec
from .records import check_caption
from .sources import checked_image_bytes, classify_image_ref, image_value


class FetchStage:
    def __init__(self, image_column: str, caption_column: str, base_dir: str, fetch: FetchConfig,
                 specs: tuple[PreprocessSpec, ...], decode_threads: int = DECODE_THREADS):
        """`specs`: the job's distinct preprocessings; models that share one share its pixels.
        `decode_threads`: the pipeline's follow the CPUs each fetch actor reserves (`pool_sizing`)."""
        self.image_column = image_column
        self.caption_column = caption_column
        self.base_dir = base_dir
        self.specs = specs
        self.preparer = ImagePreparer(fetch, specs, decode_threads)
        self.closer: weakref.finalize | None = None  # closes the preparer on the loop its session lives on

    async def __call__(self, batch: pa.Table) -> pa.Table:
        return await self.prepare(batch, self.base_dir)

    async def prepare(self, batch: pa.Table, base_dir: str) -> pa.Table:
        """`batch` with its pixels and row errors; relative paths resolve against `base_dir`.

        A warm scorer (`warm`) calls this with each call's own folder: one actor serves
        calls made from different working folders.
        """
        if self.closer is None:  # the first call: on the event loop Ray runs this actor's calls on
            # A finalizer, not __del__: it also runs at interpreter exit, before the exit freezes the
            # loop's (daemon) thread. Ray ends a job's actors by exiting their processes, and a
            # __del__ reached only then waited on a loop that could no longer run (a TimeoutError
            # traceback, then aiohttp's "Unclosed client session", in every healthy run's output).
            self.closer = weakref.finalize(self, _close_on_loop, self.preparer, asyncio.get_running_loop())
        refs = [image_value(cell) for cell in batch.column(self.image_column).to_pylist()]
        # A row without a caption fails whatever its image, so its image is not fetched;
        # so does a WebDataset sample the reader could not read whole.
        early_errors = [_caption_error(c) for c in batch.column(self.caption_column).to_pylist()]
        if READ_ERROR in batch.column_names:
            early_errors = [_read_error(r) or e
                            for r, e in zip(batch.column(READ_ERROR).to_pylist(), early_errors, strict=True)]
        distinct = list(dict.fromkeys(ref for ref, error in zip(refs, early_errors, strict=True) if error is None))
        outcomes = dict(zip(distinct, await asyncio.gather(*(self._prepare(ref, base_dir) for ref in distinct)),
                            strict=True))
        pixels = [np.zeros((len(refs), *spec.output_size, 3), dtype=np.uint8) for spec in self.specs]
        # Each image's key, for the scorer's dedup: hashed here, beside the decode and across the fetch
        # pool, not on the one thread that feeds the GPU (see `columns.pixels_key`).
        keys = {ref: pixels_key(outcome) for ref, outcome in outcomes.items() if not isinstance(outcome, RowError)}
        errors: list[str | None] = []
        image_keys: list[int] = []  # 0 where the row failed: the scorer never reads it
        for row, ref in enumerate(refs):
            outcome = early_errors[row] or outcomes[ref]
            if isinstance(outcome, RowError):
                errors.append(str(outcome))
                image_keys.append(0)
            else:
                for column, prepared in zip(pixels, outcome, strict=True):
                    column[row] = prepared
                errors.append(None)
                image_keys.append(keys[ref])
        batch = batch.drop_columns([c for c in (IMAGE_BYTES, READ_ERROR) if c in batch.column_names])
        for index, column in enumerate(pixels):
            batch = batch.append_column(pixels_column(index), ArrowTensorArray.from_numpy(column))
        batch = batch.append_column(IMAGE_KEY, pa.array(image_keys, type=pa.int64()))
        return batch.append_column(FETCH_ERROR, pa.array(errors, type=pa.string()))

    async def _prepare(self, ref, base_dir: str) -> tuple[np.ndarray, ...] | RowError:
        try:
            if isinstance(ref, bytes):  # held in the input: decoded as it is, nothing fetched
                return await self.preparer.from_bytes(checked_image_bytes(ref, self.preparer.fetch.max_bytes))
            return await self.preparer.from_source(classify_image_ref(ref, base_dir))
        except RowError as error:
            return error
        except Exception as exc:  # noqa: BLE001 - hostile input must cost one row, not the job
            return RowError.internal(exc)


def _close_on_loop(preparer: ImagePreparer, loop: asyncio.AbstractEventLoop) -> None:
    """Close `preparer` on `loop`, from whichever thread lets the stage go (or exits)."""
    if not loop.is_running():  # its owner closed it (spark) or the loop is gone
        return
    closing = asyncio.run_coroutine_threadsafe(preparer.close(), loop)
    if not _runs_on(loop):  # waiting on the loop's own thread would block the close
        closing.result(timeout=2)


def _caption_error(caption: object) -> RowError | None:
    try:
        check_caption(caption)
    except RowError as error:
        return error
    return None


def _read_error(error: str | None) -> RowError | None:
    if error is None:
        return None
    kind, _, detail = error.partition(": ")
    return RowError(kind, detail)


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
