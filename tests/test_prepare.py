"""`prepare` with several models' preprocessing: one fetch and one decode of an image, then
each model's own resize and crop. The reference for each model's pixels is the one-model
path (`bytes_to_pixels` with that model's spec alone, which tests/test_preprocess.py and
tests/test_families.py hold to transformers' processors), and a whole-image decode where a
reduced one is in play. The fetch is counted on a real loopback server."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from tis_ray import prepare
from tis_ray.config import FetchConfig
from tis_ray.loading import load_preprocess_spec
from tis_ray.prepare import ImagePreparer, bytes_to_pixels, bytes_to_pixels_per_spec
from tis_ray.preprocess import PreprocessSpec, min_decode_side
from tis_ray.sources import classify_image_ref

MAX_PIXELS = 10**9


@pytest.fixture(scope="module")
def two_specs(tiny_model, siglip_model) -> tuple[PreprocessSpec, PreprocessSpec]:
    """CLIP's (shortest side, centre crop, bicubic) and SigLIP's (straight to 224x224, no crop)."""
    specs = (load_preprocess_spec(tiny_model), load_preprocess_spec(siglip_model))
    assert specs[0] != specs[1] and min_decode_side(specs[0]) == min_decode_side(specs[1])
    return specs


def large_jpeg(photos, size: tuple[int, int]) -> bytes:
    """A JPEG large enough that a reduced decode applies (both sides at least 2x the model's)."""
    with Image.open(photos["retina"]) as photo:
        buffer = io.BytesIO()
        photo.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts `decode_image` calls made by `prepare` (the real function still runs)."""
    calls: list[int] = []
    real = prepare.decode_image

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "decode_image", counted)
    return calls


@pytest.mark.parametrize("reduced_decode", [False, True])
@pytest.mark.parametrize("image", ["chelsea", "astronaut", "large"])
def test_one_decode_gives_each_model_the_pixels_it_gets_alone(two_specs, photos, decodes, image, reduced_decode):
    data = large_jpeg(photos, (2048, 1536)) if image == "large" else photos[image].read_bytes()
    alone = [bytes_to_pixels(data, spec, MAX_PIXELS, reduced_decode) for spec in two_specs]
    decodes.clear()
    together = bytes_to_pixels_per_spec(data, two_specs, MAX_PIXELS, reduced_decode)
    assert len(decodes) == 1
    assert len(together) == 2
    for mine, theirs, spec in zip(together, alone, two_specs, strict=True):
        assert mine.shape == (*spec.output_size, 3) and np.array_equal(mine, theirs)


def test_models_needing_different_decode_sizes_share_the_finer_decode(two_specs, photos):
    """A 384-pixel model beside a 224-pixel one: the decode keeps what the larger needs, so the
    larger gets exactly its own pixels and the smaller gets pixels nearer the whole-image decode
    than its own reduced decode would give it."""
    small = two_specs[0]
    large = PreprocessSpec(shortest_edge=384, crop_size=(384, 384))
    data = large_jpeg(photos, (3072, 2304))  # 1/4 scale is enough for 224 (448 px), 1/2 needed for 384 (768)
    small_together, large_together = bytes_to_pixels_per_spec(data, (small, large), MAX_PIXELS, True)
    assert np.array_equal(large_together, bytes_to_pixels(data, large, MAX_PIXELS, True))
    whole = bytes_to_pixels(data, small, MAX_PIXELS, reduced_decode=False).astype(np.int16)
    alone = bytes_to_pixels(data, small, MAX_PIXELS, reduced_decode=True).astype(np.int16)
    assert not np.array_equal(alone, small_together)  # the two decodes really differ in scale
    assert np.abs(small_together - whole).mean() < np.abs(alone - whole).mean()


def test_the_preparer_fetches_once_and_answers_per_spec(two_specs, loopback, photos):
    async def prepare_both():
        one = ImagePreparer(FetchConfig(timeout_s=5), two_specs[:1])
        both = ImagePreparer(FetchConfig(timeout_s=5), two_specs)
        try:
            single = await one.from_bytes(photos["coffee"].read_bytes())
            fetched = await both.from_source(classify_image_ref(loopback.url("photo/coffee.jpg"), "."))
            return single, fetched
        finally:
            await one.close()
            await both.close()

    single, fetched = asyncio.run(prepare_both())
    assert loopback.requests == ["/photo/coffee.jpg"]
    data = photos["coffee"].read_bytes()
    assert len(single) == 1 and np.array_equal(single[0], bytes_to_pixels(data, two_specs[0], MAX_PIXELS))
    assert isinstance(fetched, tuple) and len(fetched) == 2
    for pixels, spec in zip(fetched, two_specs, strict=True):
        assert np.array_equal(pixels, bytes_to_pixels(data, spec, FetchConfig().max_pixels))
