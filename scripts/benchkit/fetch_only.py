"""(d) Fetch + decode + resize alone: what one CPU core turns into model-ready pixels.

The real `ImagePreparer` (aiohttp, the decode thread, the crop) over the workload's
URLs, 64 in flight, one decode thread. It reports CPU seconds as well as wall time:
images per CPU-second is the per-core figure the capacity plan scales from, and it
holds on a busy machine where wall time does not.
"""

from __future__ import annotations

import asyncio
import time

from tis_ray.config import FetchConfig
from tis_ray.loading import load_preprocess_spec
from tis_ray.prepare import ImagePreparer
from tis_ray.sources import classify_image_ref

IN_FLIGHT = 64


def run(urls: list[str], model: str, reduced_decode: bool) -> dict:
    spec = load_preprocess_spec(model)
    return asyncio.run(_prepare_all(urls, ImagePreparer(FetchConfig(reduced_decode=reduced_decode), (spec,), 1)))


async def _prepare_all(urls: list[str], preparer: ImagePreparer) -> dict:
    slots = asyncio.Semaphore(IN_FLIGHT)
    failed = 0

    async def prepare(url: str) -> None:
        nonlocal failed
        async with slots:
            try:
                await preparer.from_source(classify_image_ref(url, "."))
            except Exception:  # noqa: BLE001 - counted; the pipeline run reports kinds
                failed += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(prepare(url) for url in urls))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await preparer.close()
    return {"pairs": len(urls), "seconds": wall, "cpu_seconds": cpu, "scored": len(urls) - failed,
            "runtime": "reduced decode" if preparer.fetch.reduced_decode else "whole decode"}
