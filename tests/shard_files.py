"""WebDataset shards as img2dataset writes them, made by the `webdataset` package's own
`TarWriter`: real photos, and the bad samples a real download leaves behind."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import webdataset

PHOTO_CYCLE = ("chelsea", "coffee", "rocket", "astronaut", "retina", "hubble_deep_field")


@dataclass(frozen=True)
class Expected:
    """One sample as the output must show it: its key, its shard, a photo when it scores, else its error kind."""

    key: str
    shard: Path
    caption: str
    photo: str | None
    error: str | None


def photo_sample(key: str, photo: str, photos, caption: str | None = None) -> dict:
    caption = caption if caption is not None else f"sample {key}: a photo of {photo}"
    return {"__key__": key, "jpg": Path(photos[photo]).read_bytes(), "txt": caption,
            "json": json.dumps({"caption": f"json says {photo}", "width": 512, "source": "test"})}


def write_shard(path: Path, samples: list[dict]) -> None:
    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)


def good_shard(path: Path, shard: int, count: int, photos) -> list[Expected]:
    """`count` photo samples, keys ``SSSSSIIII`` as img2dataset names them."""
    samples, expected = [], []
    for i in range(count):
        key, photo = f"{shard:05d}{i:04d}", PHOTO_CYCLE[i % len(PHOTO_CYCLE)]
        samples.append(photo_sample(key, photo, photos))
        expected.append(Expected(key, path, samples[-1]["txt"], photo, None))
    write_shard(path, samples)
    return expected


def bad_shard(path: Path, shard: int, photos) -> list[Expected]:
    """A good sample between each kind of bad one; the tar is then cut short inside its last sample."""
    key = lambda i: f"{shard:05d}{i:04d}"  # noqa: E731
    samples = [
        photo_sample(key(0), "chelsea", photos),
        {"__key__": key(1), "txt": "a caption without an image", "json": b"{}"},
        {"__key__": key(2), "jpg": Path(photos["coffee"]).read_bytes()[:2000], "txt": "half a jpeg"},
        {"__key__": key(3), "jpg": b"<html>not an image</html>", "txt": "a web page saved as jpg"},
        photo_sample(key(4), "rocket", photos, caption="   "),
        photo_sample(key(5), "coffee", photos),
        photo_sample(key(6), "astronaut", photos),  # the cut falls inside this one's jpg
    ]
    write_shard(path, samples)
    data = path.read_bytes()
    cut = data.index(Path(photos["astronaut"]).read_bytes()[:4096]) + 10_000
    path.write_bytes(data[:cut])
    return [
        Expected(key(0), path, samples[0]["txt"], "chelsea", None),
        Expected(key(1), path, samples[1]["txt"], None, "missing_image"),
        Expected(key(2), path, samples[2]["txt"], None, "decode_error"),
        Expected(key(3), path, samples[3]["txt"], None, "decode_error"),
        Expected(key(4), path, "   ", None, "empty_caption"),
        Expected(key(5), path, samples[5]["txt"], "coffee", None),
        Expected(key(6), path, samples[6]["txt"], None, "bad_shard"),
    ]
