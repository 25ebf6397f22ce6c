"""From an image source to model-ready pixels: fetch, decode, resize and crop.

One `ImagePreparer` lives in each fetch actor and in each Serve replica. It owns
the aiohttp session (opened on first use, on the caller's event loop) and a small
thread pool for decoding, so the event loop only ever waits on the network.
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


def bytes_to_pixels(data: bytes, specs: tuple[PreprocessSpec, ...], max_pixels: int,
                    reduced_decode: bool = True) -> tuple[np.ndarray, ...]:
    """Image bytes to the (H, W, 3) uint8 pixels each spec's scorer wants, in the order of `specs`;
    `RowError` if they are not an image.

    The bytes decode once for every spec that allows the same reduced size (`reduced_decode`
    lets a large JPEG decode at 1/2 to 1/8 scale, see `decode_image`): each spec's pixels are
    then exactly those a job with that spec alone makes. Specs of one input size (the usual
    case) share one decode.
    """
    by_side: dict[int | None, list[int]] = {}
    for index, spec in enumerate(specs):
        by_side.setdefault(min_decode_side(spec) if reduced_decode else None, []).append(index)
    pixels: list[np.ndarray | None] = [None] * len(specs)
    for min_side, indices in by_side.items():
        image = decode_image(data, max_pixels, min_side)
        decoded = image.width * image.height
        for index in indices:
            pixels[index] = resize_and_crop(image, specs[index])
        del image  # freed before the trim below can give its memory back
        release_decode_memory(decoded)
    return tuple(pixels)


class ImagePreparer:
    def __init__(
        self,
        fetch: FetchConfig,
        specs: tuple[PreprocessSpec, ...],
        decode_threads: int = 2,
        make_fetcher: Callable[[], ImageFetcher] | None = None,
    ):
        """`specs`: one per preprocessing the image is wanted in (one per distinct model input); each
        image is fetched once and prepared for all of them. `make_fetcher` builds the fetcher on
        first use, inside the event loop (aiohttp needs it)."""
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
        """Bytes fetched or given inline (the service's ``image_base64``), held to the same byte cap;
        pixels for each of `specs`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.decoder, bytes_to_pixels, within_byte_cap(data, self.fetch.max_bytes), self.specs,
            self.fetch.max_pixels, self.fetch.reduced_decode,
        )

    async def close(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.close()
        self.decoder.shutdown(wait=False)
