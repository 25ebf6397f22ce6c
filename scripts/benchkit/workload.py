"""The benchmark workload: N (image URL, caption) pairs over distinct, realistic JPEGs.

Images are cut from the real photos in ``examples/images`` at web-typical sizes
(320x240 to 2048x1536, some portrait), with mild sensor-like noise so their file
sizes and decode costs are those of camera JPEGs, not of smooth upscales. Every
distinct URL has distinct pixels, so no contender gains from identical images
unless the workload asks for repeated URLs. Generated once per setting and cached.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "images"
SIZES = ((320, 240), (640, 480), (1024, 768), (1600, 1200), (2048, 1536))  # (width, height)
SIZE_WEIGHTS = (0.15, 0.30, 0.25, 0.15, 0.15)
PORTRAIT_SHARE = 0.2

WORDS = {
    "det": "a an the one two three several some many".split(),
    "adj": ("red blue green small large old young wooden bright dark busy quiet wet sunny snowy tall "
            "round shiny rusty colorful empty crowded modern ancient fluffy striped").split(),
    "noun": ("dog cat man woman child bicycle car street house tree river mountain table plate "
             "pizza cake train bus boat beach field bird horse kitchen window chair laptop phone "
             "clock bridge garden flower book city building sky cloud road market").split(),
    "verb": ("sitting standing walking running lying parked waiting looking playing eating "
             "holding riding crossing").split(),
    "prep": "on in near under beside behind across with at over".split(),
}


@dataclass(frozen=True)
class WorkloadSpec:
    pairs: int = 2000
    repeat_share: float = 0.0  # share of rows whose URL repeats an earlier row's
    seed: int = 0

    @property
    def distinct_images(self) -> int:
        return self.pairs - int(self.pairs * self.repeat_share)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    image_dir: Path  # served as /img/<name>
    names: list[str]  # image file name of each row
    captions: list[str]

    def csv_for(self, base_url: str, path: Path) -> Path:
        """The workload as the CSV a user would give the CLI, images at `base_url`."""
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image_url", "caption"])
            writer.writerows((f"{base_url}/img/{name}", caption) for name, caption in zip(self.names, self.captions))
        return path

    def shards_in(self, folder: Path, per_shard: int = 1000) -> str:
        """The same pairs as WebDataset shards, as img2dataset writes them (``SSSSSIIII.jpg``,
        ``.txt``); returns the brace pattern naming them, for `tis-ray score`."""
        folder.mkdir(parents=True, exist_ok=True)
        count = -(-len(self.names) // per_shard)
        for shard in range(count):
            rows = range(shard * per_shard, min(len(self.names), (shard + 1) * per_shard))
            with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
                for i in rows:
                    key = f"{shard:05d}{i - shard * per_shard:04d}"
                    _add(tar, f"{key}.jpg", (self.image_dir / self.names[i]).read_bytes())
                    _add(tar, f"{key}.txt", self.captions[i].encode())
        return str(folder / f"{{00000..{count - 1:05d}}}.tar")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build(spec: WorkloadSpec, cache_dir: Path) -> Workload:
    """The workload for `spec`, generating the images that are not cached yet."""
    rng = random.Random(spec.seed)
    image_dir = cache_dir / f"images-seed{spec.seed}"
    image_dir.mkdir(parents=True, exist_ok=True)
    distinct = [f"{i:06d}.jpg" for i in range(spec.distinct_images)]
    missing = [i for i, name in enumerate(distinct) if not (image_dir / name).exists()]
    if missing:
        # Every core: an image takes ~0.14 s of one core (measured on the 2-vCPU dev machine).
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_write_image, [(image_dir, spec.seed, i) for i in missing], chunksize=16))
    names = distinct + [rng.choice(distinct) for _ in range(spec.pairs - len(distinct))]
    rng.shuffle(names)
    captions = [caption(rng) for _ in range(spec.pairs)]
    return Workload(spec, image_dir, names, captions)


def caption(rng: random.Random) -> str:
    """A caption of realistic length: median ~10 words, a few past CLIP's 77 tokens."""
    words = max(3, min(120, int(rng.lognormvariate(2.35, 0.55))))
    parts: list[str] = []
    while len(parts) < words:
        parts += [rng.choice(WORDS["det"]), rng.choice(WORDS["adj"]), rng.choice(WORDS["noun"]),
                  rng.choice(WORDS["verb"]), rng.choice(WORDS["prep"]), rng.choice(WORDS["det"]),
                  rng.choice(WORDS["noun"])]
    text = " ".join(parts[:words])
    return text[0].upper() + text[1:] + "."


def _write_image(job: tuple[Path, int, int]) -> None:
    image_dir, seed, index = job
    rng = np.random.default_rng([seed, index])
    photos = sorted(p for p in PHOTOS.glob("*.jpg") if p.name != "not_an_image.jpg")
    with Image.open(photos[index % len(photos)]) as opened:
        photo = opened.convert("RGB")
    width, height = SIZES[rng.choice(len(SIZES), p=SIZE_WEIGHTS)]
    if rng.random() < PORTRAIT_SHARE:
        width, height = height, width
    crop = _random_crop(photo.size, width / height, rng)
    image = photo.crop(crop).resize((width, height), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4.0, (height, width, 3)).astype(np.float32)
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    tmp = image_dir / f".{index:06d}.jpg"
    noisy.save(tmp, "JPEG", quality=int(rng.integers(80, 95)))
    tmp.rename(image_dir / f"{index:06d}.jpg")


def _random_crop(size: tuple[int, int], aspect: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of the given aspect ratio covering 60-100% of the photo's fitting area."""
    photo_w, photo_h = size
    w = min(photo_w, photo_h * aspect) * rng.uniform(0.6, 1.0)
    h = w / aspect
    left = rng.uniform(0, photo_w - w)
    top = rng.uniform(0, photo_h - h)
    return int(left), int(top), int(left + w), int(top + h)
