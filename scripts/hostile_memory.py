"""Peak memory of one Serve replica's image preparation under hostile images.

Prepares REQUESTS x IMAGES copies of a flat PNG (tiny on the wire, huge when decoded)
at once through one `ImagePreparer` with the service's settings, as a replica does for
that many concurrent requests, and prints the resident memory before, at the peak and
after, as JSON. The peak is the process's high-water mark (VmHWM), reset just before the images are prepared.

    python scripts/hostile_memory.py --side 6300 --mode RGBA --max-pixels 40000000 --model DIR
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re

from PIL import Image


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Start the high-water mark afresh (Linux), so that imports and set-up do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mib() -> float:
    """The resident high-water mark since `reset_peak`."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def flat_png(side: int, mode: str) -> bytes:
    """A one-colour PNG: about 0.3 KB per 100 rows compressed, 3-4 bytes a pixel decoded."""
    buffer = io.BytesIO()
    Image.new(mode, (side, side), (120, 30, 200, 100)[: len(mode)]).save(buffer, "PNG")
    return buffer.getvalue()


async def prepare_all(data: bytes, count: int, max_pixels: int, model: str) -> dict:
    from tis_ray.config import FetchConfig
    from tis_ray.errors import RowError
    from tis_ray.loading import load_preprocess_spec
    from tis_ray.prepare import ImagePreparer

    preparer = ImagePreparer(FetchConfig(max_pixels=max_pixels), (load_preprocess_spec(model),))
    before = resident_mib()
    reset_peak()
    outcomes = await asyncio.gather(*(preparer.from_bytes(data) for _ in range(count)), return_exceptions=True)
    peak = peak_mib()
    await preparer.close()
    kinds = sorted({o.kind if isinstance(o, RowError) else "scored" for o in outcomes})
    return {"before_mib": round(before), "peak_mib": round(peak), "after_mib": round(resident_mib()),
            "outcomes": kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, required=True, help="the PNG's width and height")
    parser.add_argument("--mode", default="RGB", choices=("RGB", "RGBA"))
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--max-pixels", type=int, required=True)
    parser.add_argument("--model", required=True, help="checkpoint whose preprocessing is used")
    args = parser.parse_args()
    data = flat_png(args.side, args.mode)  # made before the baseline, then only its bytes are kept
    result = asyncio.run(prepare_all(data, args.requests * args.images, args.max_pixels, args.model))
    print(json.dumps({"side": args.side, "mode": args.mode, "png_bytes": len(data),
                      "max_pixels": args.max_pixels, "decodes": args.requests * args.images, **result}))


if __name__ == "__main__":
    main()
