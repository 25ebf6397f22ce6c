"""ClipScorer against the direct transformers computation, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference import reference_cosines

from tis_ray.config import ModelConfig
from tis_ray.errors import ModelLoadError
from tis_ray.loading import resolve_dtype
from tis_ray.preprocess import resize_and_crop
from tis_ray.scorer import ClipScorer

CAPTIONS = [
    "a portrait of an astronaut",
    "a tabby cat looking to the side",
    "a cup of coffee on a saucer",
    "a rocket lifting off",
    "distant galaxies",
    "a fundus photograph of a retina",
]


@pytest.fixture(scope="module")
def scorer(tiny_model) -> ClipScorer:
    return ClipScorer(ModelConfig(model=tiny_model, device="cpu", dtype="float32"))


def _pixels(scorer, paths):
    return np.stack([resize_and_crop(Image.open(p).convert("RGB"), scorer.preprocess) for p in paths])


def test_cosines_match_transformers_reference(scorer, tiny_model, photos):
    paths = list(photos.values())
    got = scorer.score(_pixels(scorer, paths), CAPTIONS).cosine
    want = reference_cosines(tiny_model, paths, CAPTIONS)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_duplicates_are_encoded_once_and_scored_alike(scorer, photos, monkeypatch):
    paths = [photos["chelsea"], photos["coffee"], photos["chelsea"], photos["chelsea"]]
    captions = ["a cat", "a cat", "a cat", "a cup"]
    seen = {}
    real_images, real_texts = scorer.embed_images, scorer.embed_texts
    monkeypatch.setattr(scorer, "embed_images", lambda px: seen.setdefault("images", len(px)) and real_images(px))
    monkeypatch.setattr(scorer, "embed_texts", lambda cs: seen.setdefault("texts", len(cs)) and real_texts(cs))
    result = scorer.score(_pixels(scorer, paths), captions)
    assert seen == {"images": 2, "texts": 2}
    assert result.cosine[0] == result.cosine[2]
    assert result.cosine[0] != result.cosine[3]


def test_long_captions_are_truncated_and_flagged(scorer, tiny_model, photos):
    long_caption = "a very long caption about a cat " * 40
    result = scorer.score(_pixels(scorer, [photos["chelsea"]] * 2), [long_caption, "a cat"])
    assert result.truncated.tolist() == [True, False]
    want = reference_cosines(tiny_model, [photos["chelsea"]], [long_caption])  # processor truncates to 77
    np.testing.assert_allclose(result.cosine[:1], want, atol=1e-5)


def test_truncation_flag_is_exact_at_the_context_length(scorer, photos):
    context = scorer.max_text_tokens
    fits, over = "cat " * (context - 2), "cat " * (context - 1)  # plus the start and end tokens
    full = scorer.tokenizer([fits, over], truncation=False)["input_ids"]  # the untruncated reference
    assert [len(ids) for ids in full] == [context, context + 1]
    result = scorer.score(_pixels(scorer, [photos["chelsea"]] * 2), [fits, over])
    assert result.truncated.tolist() == [False, True]


def test_padding_does_not_change_a_caption_score(scorer, photos):
    pixels = _pixels(scorer, [photos["rocket"]] * 2)
    alone = scorer.score(pixels[:1], ["a rocket"]).cosine[0]
    padded = scorer.score(pixels, ["a rocket", "a rocket lifting off from a launch pad at dawn"]).cosine[0]
    assert abs(alone - padded) < 1e-5


def test_bfloat16_is_close_to_float32(tiny_model, scorer, photos):
    """bfloat16 moves a cosine by less than half the typical gap between a photo's own caption
    and the nearest other one (about 0.024 on the tiny model, measured here in float32 over
    every photo x caption): a looser bound would let bfloat16 reorder captions unnoticed."""
    bf16 = ClipScorer(ModelConfig(model=tiny_model, device="cpu", dtype="bfloat16"))
    assert bf16.model.dtype == torch.bfloat16
    n = len(photos)
    pixels = np.repeat(_pixels(scorer, list(photos.values())), n, axis=0)
    captions = CAPTIONS * n  # row i * n + j: photo i with caption j
    full = scorer.score(pixels, captions).cosine.reshape(n, n)
    delta = np.abs(bf16.score(pixels, captions).cosine.reshape(n, n) - full)
    nearest_gap = [np.abs(full[i, i] - np.delete(full[i], i)).min() for i in range(n)]
    assert delta.max() < np.median(nearest_gap) / 2


def test_dtype_and_device_choices():
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("float32", "cpu") == torch.float32
    with pytest.raises(ModelLoadError, match="float16 is for CUDA"):
        resolve_dtype("float16", "cpu")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model from folder"):
        ClipScorer(ModelConfig(model=str(tmp_path), device="cpu", dtype="float32"))
