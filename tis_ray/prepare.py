"""From an image source to model-ready pixels: fetch, decode, resize and crop.

One `ImagePreparer` lives in each fetch actor and in each Serve replica. It owns
the aiohttp session (opened on first use, on the caller's event loop) and a small
thread pool for decoding, so the event loop only ever waits on the network. Given
several models' specs, it fetches and decodes an image once and resizes it for each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .config import FetchConfig
from .decode import decode_image, release_decode_memory
from .fetch import ImageFetcher
from .preprocess import PreprocessSpec, min_decode_side, resize_and_crop
from .sources import ImageSource, within_byte_cap

# Decode threads where the caller reserved no CPUs of its own to size them by (the warm scorer,
# a Spark worker); a fetch actor's and a Serve replica's follow their reservation (`pool_sizing`).
DECODE_THREADS = 2


def bytes_to_pixels(data: bytes, spec: PreprocessSpec, max_pixels: int, reduced_decode: bool = True) -> np.ndarray:
    """Image bytes to the (H, W, 3) uint8 pixels the scorer wants; `RowError` if they are not an image.

    `reduced_decode` lets a large JPEG decode at 1/2 to 1/8 scale (see `decode_image`).
    """
    return bytes_to_pixels_per_spec(data, (spec,), max_pixels, reduced_decode)[0]


def bytes_to_pixels_per_spec(data: bytes, specs: tuple[PreprocessSpec, ...], max_pixels: int,
                             reduced_decode: bool = True) -> tuple[np.ndarray, ...]:
    """One decode of `data`, then each spec's resize and crop of it: the pixels of several models.

    A reduced JPEG decode keeps the largest side any spec asks for (whole where one asks for
    no reduction), so no model's pixels come from a coarser decode than its own alone would
    use; a model with a smaller input then gets them from a finer one, which is nearer the
    whole-image decode its processor sees.
    """
    sides = [min_decode_side(spec) for spec in specs] if reduced_decode else [None]
    min_side = None if any(side is None for side in sides) else max(side for side in sides if side is not None)
    image = decode_image(data, max_pixels, min_side)
    decoded = image.width * image.height
    pixels = tuple(resize_and_crop(image, spec) for spec in specs)
    del image  # freed before the trim below can give its memory back
    release_decode_memory(decoded)
    return pixels


class ImagePreparer:
    def __init__(
        self,
        fetch: FetchConfig,
        specs: tuple[PreprocessSpec, ...],
        decode_threads: int = DECODE_THREADS,
        make_fetcher: Callable[[], ImageFetcher] | None = None,
    ):
        """`specs`: one per distinct preprocessing among the models (one for a one-model job);
        each image comes back as a tuple of pixels in the same order, from one fetch and one
        decode (`bytes_to_pixels_per_spec`).

        `make_fetcher` builds the fetcher on first use, inside the event loop (aiohttp needs it).
        """
        self.fetch = fetch
        self.specs = specs
        self.make_fetcher = make_fetcher or (lambda: ImageFetcher(fetch))
        self.decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="tis-decode")
        self.fetcher: ImageFetcher | None = None

    async def from_source(self, source: ImageSource) -> tuple[np.ndarray, ...]:
        if self.fetcher is None:
            self.fetcher = self.make_fetcher()
        return await self.from_bytes(await self.fetcher.fetch(source))

    async def from_bytes(self, data: bytes) -> tuple[np.ndarray, ...]:
        """Bytes fetched or given inline (the service's ``image_base64``), held to the same byte cap."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.decoder, bytes_to_pixels_per_spec, within_byte_cap(data, self.fetch.max_bytes), self.specs,
            self.fetch.max_pixels, self.fetch.reduced_decode,
        )

    async def close(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.close()
        self.decoder.shutdown(wait=False)
