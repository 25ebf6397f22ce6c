"""(b) The baseline: the original challenge's approach, re-implemented faithfully.

Per batch of 32 rows: download the images with a thread pool (requests), open them
with Pillow, run ``CLIPProcessor`` and ``CLIPModel`` in float32, take the cosine of
the normalised embeddings. Downloads and inference take turns; nothing overlaps.
This is what a user has before tis-ray; it is labelled as such in every report.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

BATCH_SIZE = 32
DOWNLOAD_THREADS = 16


def run(urls: list[str], captions: list[str], model: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = CLIPModel.from_pretrained(model, dtype=torch.float32).to(device).eval()
    processor = CLIPProcessor.from_pretrained(model)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=DOWNLOAD_THREADS))

    def download(url: str) -> Image.Image | None:
        try:
            response = session.get(url, timeout=10)
            response.raise_for_status()
            return Image.open(io.BytesIO(response.content)).convert("RGB")
        except Exception:  # noqa: BLE001 - a failed download leaves its row unscored
            return None

    cosines: list[float | None] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        for start in range(0, len(urls), BATCH_SIZE):
            images = list(pool.map(download, urls[start : start + BATCH_SIZE]))
            texts = captions[start : start + BATCH_SIZE]
            ok = [i for i, image in enumerate(images) if image is not None]
            batch_cosines: list[float | None] = [None] * len(images)
            if ok:
                inputs = processor(text=[texts[i] for i in ok], images=[images[i] for i in ok],
                                   return_tensors="pt", padding=True, truncation=True).to(device)
                with torch.no_grad():
                    out = clip(**inputs)
                image = torch.nn.functional.normalize(out.image_embeds, dim=-1).cpu()
                text = torch.nn.functional.normalize(out.text_embeds, dim=-1).cpu()
                for i, cos in zip(ok, (image * text).sum(-1).tolist()):
                    batch_cosines[i] = cos
            cosines += batch_cosines
    seconds = time.perf_counter() - started
    return {"pairs": len(urls), "seconds": seconds, "runtime": f"{device}/float32",
            "scored": sum(c is not None for c in cosines), "cosine": cosines}
