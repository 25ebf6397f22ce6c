"""The score stage on batches as the fetch stage hands them on: image keys, pixels copied out of
Arrow, failed rows, and two batches at once (a GPU scorer actor's two threads). Without Ray: the
stages are called directly, as the warm scorer and Spark call them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from tis_ray.columns import FETCH_ERROR, IMAGE_KEY, pixels_column, pixels_key
from tis_ray.config import FetchConfig, ModelConfig, scorer_batch_size
from tis_ray.fetch_stage import FetchStage
from tis_ray.score_stage import ScoreStage

PIXELS = pixels_column(0)


@pytest.fixture(scope="module")
def stage(tiny_model) -> ScoreStage:
    return ScoreStage.one_model("caption", ModelConfig(model=tiny_model, device="cpu", dtype="float32"),
                                with_cosine=True)


def _fetched(stage: ScoreStage, images: list, captions: list, rows_per_fetch: int = 3) -> pa.Table:
    """`images` (bytes, or a path that is not there: a failed row) through the fetch stage, in
    fetch calls of `rows_per_fetch` rows joined into one batch, as Ray Data joins fetch blocks."""
    async def run() -> pa.Table:
        fetch = FetchStage(image_column="image", caption_column="caption", base_dir="/", fetch=FetchConfig(),
                           specs=(stage.scorers[0].preprocess,))
        pieces = [await fetch.prepare(pa.table({"image": images[start:start + rows_per_fetch],
                                                "caption": captions[start:start + rows_per_fetch]}), "/")
                  for start in range(0, len(images), rows_per_fetch)]
        await fetch.preparer.close()
        return pa.concat_tables(pieces)
    return asyncio.run(run())


def _photo_bytes(photos, names):
    return [photos[name].read_bytes() for name in names]


def test_fetch_keys_tell_images_apart_as_their_pixels_do(stage, photos):
    names = ["chelsea", "coffee", "chelsea", "rocket", "coffee", "astronaut", "chelsea"]
    batch = _fetched(stage, _photo_bytes(photos, names), ["a cat"] * len(names))
    keys = batch.column(IMAGE_KEY).to_pylist()
    pixels = np.concatenate([chunk.to_numpy() for chunk in batch.column(PIXELS).chunks])
    assert keys == [pixels_key((row,)) for row in pixels]  # a key per row's own pixels
    same_pixels = [[bool(np.array_equal(a, b)) for b in pixels] for a in pixels]
    assert [[a == b for b in keys] for a in keys] == same_pixels
    assert len(set(keys)) == len(set(names))


def test_stage_scores_as_score_does_with_failed_rows_in_several_blocks(stage, photos):
    """Rows whose image failed, in the middle of fetch blocks and filling one, leave the others'
    scores as scoring just the good rows gives them; the internal columns do not reach the output."""
    names = ["chelsea", "coffee", None, "rocket", None, None, "chelsea", "astronaut", None, "retina"]
    images = [photos[n].read_bytes() if n else "/no/such/image.jpg" for n in names]
    captions = [f"a photo number {i}" for i in range(len(names))]
    batch = _fetched(stage, images, captions)
    assert batch.column(PIXELS).num_chunks > 1
    out = stage(batch)
    assert IMAGE_KEY not in out.column_names and PIXELS not in out.column_names and FETCH_ERROR not in out.column_names
    good = [i for i, n in enumerate(names) if n]
    pixels = np.concatenate([chunk.to_numpy() for chunk in batch.column(PIXELS).chunks])[good]
    want = stage.scorers[0].score(pixels, [captions[i] for i in good]).cosine  # no keys: hashed in score()
    cosine = out.column("cosine").to_pylist()
    assert [cosine[i] is None for i in range(len(names))] == [n is None for n in names]
    np.testing.assert_array_equal(np.array([cosine[i] for i in good], dtype=np.float32), want)


def test_two_batches_at_once_score_as_one_at_a_time(stage, photos):
    """A GPU scorer actor runs two calls of its stage at once (`pipeline.GPU_SCORER_CALLS`): the
    tokenizer is shared between them, and each call's results are its own."""
    names = ["chelsea", "coffee", "rocket", "astronaut", "retina", "hubble_deep_field"]
    batches = [_fetched(stage, _photo_bytes(photos, names[i:] + names[:i]),
                        [f"caption {i} {'long ' * (9 * j)}" for j in range(len(names))]) for i in range(4)]
    alone = [stage(batch).column("cosine").to_pylist() for batch in batches]
    with ThreadPoolExecutor(2) as pool:
        together = [out.column("cosine").to_pylist() for out in pool.map(stage, batches * 3)]
    assert together == alone * 3


@pytest.mark.parametrize("lock", ["the scorer's", "none"])
def test_calls_at_once_take_turns_on_the_tokenizer(stage, monkeypatch, lock):
    """A fast tokenizer's truncation length is a setting of its one backend object, set before each
    encode (transformers 5.24 `TokenizersBackend.set_truncation_and_padding`): a call that set
    context+1 to spot cut captions, encoding after another set the context, would cut at the
    context and flag none. Here the first encode waits (up to 1 s) for another call to set the
    context; without the scorer's lock that happens, and the flags come out wrong (the second case
    shows the test can tell)."""
    scorer = stage.scorers[0]
    backend = scorer.tokenizer._tokenizer
    context_set, first_encode = threading.Event(), threading.Lock()

    class WaitingBackend:
        def __getattr__(self, name):
            return getattr(backend, name)

        def enable_truncation(self, **settings):
            backend.enable_truncation(**settings)
            if settings["max_length"] == scorer.max_text_tokens:
                context_set.set()

        def encode_batch(self, *args, **kwargs):
            if first_encode.acquire(blocking=False):
                context_set.wait(timeout=1)
            return backend.encode_batch(*args, **kwargs)

    monkeypatch.setattr(scorer.tokenizer, "_tokenizer", WaitingBackend())
    if lock == "none":
        monkeypatch.setattr(scorer, "tokenizer_lock", contextlib.nullcontext())
    captions = ["cat " * n for n in (5, scorer.max_text_tokens + 5, 20, scorer.max_text_tokens * 2)]
    want = [False, True, False, True]
    with ThreadPoolExecutor(2) as pool:
        flags = [truncated.tolist() for _, truncated in pool.map(scorer.token_ids, [captions] * 2)]
    assert (flags == [want] * 2) == (lock != "none")


def test_batch_size_follows_the_device_unless_set():
    assert scorer_batch_size(None, "cuda") > scorer_batch_size(None, "cpu")
    assert scorer_batch_size(7, "cuda") == scorer_batch_size(7, "cpu") == 7
