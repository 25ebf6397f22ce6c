"""The warm scorer: later calls reuse one actor, give the pipeline's results, and survive bad input."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import ray
from reference import reference_similarities, tolerance

from tis_ray import Record, Scorer, release_scorers, score_pairs
from tis_ray.config import FetchConfig, ModelConfig
from tis_ray.errors import error_kind
from tis_ray.loading import load_preprocess_spec
from tis_ray.session import warm_scorer
from tis_ray.warm import WarmScorer, pairs_table

FAST_FETCH = FetchConfig(timeout_s=2.0, retries=1, backoff_s=0.05, max_bytes=1_000_000)
CPU = dict(device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def no_warm_scorer_left():
    release_scorers()
    yield
    release_scorers()


def mixed_records(server, photos) -> list[tuple[Record, str | None]]:
    """Records, each with the error kind it must get (None: scored)."""
    return [
        (Record(server.url("photo/chelsea.jpg"), "a cat"), None),
        (Record(str(photos["coffee"]), "a cup of coffee"), None),
        (Record(server.url("status/404"), "gone"), "http_404"),
        (Record(server.url("html"), "a web page"), "decode_error"),
        (Record(server.url("big/2000000"), "too big"), "too_large"),
        (Record(server.url("photo/rocket.jpg"), " "), "empty_caption"),
        (Record("", "no image"), "missing_image"),
        (Record("ftp://example.invalid/x.jpg", "wrong scheme"), "unsupported_scheme"),
        (Record(str(photos["retina"]), "an eye"), None),
        (Record(server.url("photo/chelsea.jpg"), "a cat"), None),  # a repeat in one call
    ]


def scores(results):
    return [(r.similarity, r.cosine, r.error) for r in results]


def wait_until_gone(pid: int, within_s: float = 60) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_later_calls_reuse_the_actor_and_equal_the_pipeline(local_ray, tiny_model, image_server, photos):
    cases = mixed_records(image_server, photos)
    records = [record for record, _ in cases]
    first = list(score_pairs(records, model=tiny_model, fetch=FAST_FETCH, **CPU))
    scorer = warm_scorer(ModelConfig(tiny_model, "cpu", "float32"), FAST_FETCH, None)
    actor, pid = scorer.actor_id, scorer.info().pid
    later = list(score_pairs(records, model=tiny_model, fetch=FAST_FETCH, **CPU))
    assert warm_scorer(ModelConfig(tiny_model, "cpu", "float32"), FAST_FETCH, None) is scorer
    assert (scorer.actor_id, scorer.info().pid) == (actor, pid)
    assert scores(later) == scores(first)
    assert [error_kind(r.error) for r in first] == [kind for _, kind in cases]
    assert [(r.image, r.caption) for r in first] == [(r.image, r.caption) for r in records]
    # Over `direct_max_pairs` a session streams through the batch pipeline, and one not
    # started yet does not start its actor for that.
    with Scorer(tiny_model, fetch=FAST_FETCH, direct_max_pairs=2, start=False, **CPU) as through_pipeline:
        piped = list(through_pipeline.score_pairs(records))
        assert through_pipeline.actor_id is None
    assert [r.error for r in piped] == [r.error for r in first]
    for warm, pipe in zip(first, piped):
        if warm.ok:
            assert warm.similarity == pytest.approx(pipe.similarity, abs=1e-4)
        else:
            assert pipe.similarity is None
    good = [(0, "chelsea"), (1, "coffee"), (8, "retina")]
    want = reference_similarities(tiny_model, [photos[p] for _, p in good], [records[i].caption for i, _ in good])
    for (i, photo), expected in zip(good, want):
        assert abs(first[i].similarity - expected) <= tolerance(photos[photo])
    assert first[9].similarity == first[0].similarity


def test_bad_input_in_one_call_does_not_poison_the_next(local_ray, tiny_model, image_server, photos):
    good = [(str(photos["astronaut"]), "an astronaut"), (image_server.url("photo/coffee.jpg"), "coffee")]
    before = list(score_pairs(good, model=tiny_model, fetch=FAST_FETCH, **CPU))
    pid = warm_scorer(ModelConfig(tiny_model, "cpu", "float32"), FAST_FETCH, None).info().pid
    bad = [(image_server.url("truncated/astronaut.jpg"), "half"), (image_server.url("slow/5"), "too slow"),
           ("http://", "no host"), (str(photos["rocket"]), None)]
    kinds = [error_kind(r.error) for r in score_pairs(bad, model=tiny_model, fetch=FAST_FETCH, **CPU)]
    assert kinds == ["decode_error", "timeout", "invalid_url", "empty_caption"]
    with pytest.raises(TypeError):  # not a pair: refused in the caller, before the actor
        list(score_pairs([("only an image",)], model=tiny_model, fetch=FAST_FETCH, **CPU))
    assert list(score_pairs([], model=tiny_model, fetch=FAST_FETCH, **CPU)) == []
    after = list(score_pairs(good, model=tiny_model, fetch=FAST_FETCH, **CPU))
    assert scores(after) == scores(before) and all(r.ok for r in after)
    assert warm_scorer(ModelConfig(tiny_model, "cpu", "float32"), FAST_FETCH, None).info().pid == pid


def test_a_scorer_that_cannot_start_raises_and_is_not_kept(local_ray, tiny_model, photos):
    with pytest.raises(ray.exceptions.RayActorError, match="float16 is for CUDA"):
        list(score_pairs([(str(photos["coffee"]), "coffee")], model=tiny_model, device="cpu", dtype="float16"))
    [result] = score_pairs([(str(photos["coffee"]), "coffee")], model=tiny_model, **CPU)
    assert result.ok


def test_a_settings_change_gets_a_new_scorer_and_release_frees_it(local_ray, tiny_model, photos):
    records = [(str(photos["chelsea"]), "a cat")]
    list(score_pairs(records, model=tiny_model, **CPU))
    old = warm_scorer(ModelConfig(tiny_model, "cpu", "float32"), None, None)
    old_pid = old.info().pid
    list(score_pairs(records, model=tiny_model, fetch=FAST_FETCH, **CPU))
    new = warm_scorer(ModelConfig(tiny_model, "cpu", "float32"), FAST_FETCH, None)
    assert new is not old and new.actor_id != old.actor_id
    assert old.closed and wait_until_gone(old_pid)  # one warm scorer at most: the old one ended
    new_pid = new.info().pid
    release_scorers()
    assert new.closed and wait_until_gone(new_pid)
    with pytest.raises(RuntimeError, match="closed"):
        new.score_pairs(records)


def test_a_session_ends_its_actor_when_the_block_ends(local_ray, tiny_model, photos):
    with Scorer(tiny_model, **CPU) as scorer:
        info = scorer.info()
        [result] = scorer.score_pairs([Record(str(photos["coffee"]), "coffee")])
        assert result.ok and info.runtime == "cpu/float32"
    assert scorer.closed and wait_until_gone(info.pid)


def test_the_warm_scorer_body_scores_without_ray(tiny_model, photos, tmp_path):
    """The actor's class is plain Python: fetch and score stages, relative paths from the call's folder."""
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"].read_bytes())
    body = WarmScorer(ModelConfig(model=tiny_model, **CPU), FetchConfig(), load_preprocess_spec(tiny_model))
    table = pairs_table(["cat.jpg", "missing.jpg", str(photos["rocket"])], ["a cat", "nothing", "a rocket"])
    out = asyncio.run(body.score(table, str(tmp_path), batch_size=2))
    assert out.column("image").to_pylist() == table.column("image").to_pylist()
    assert [error_kind(e) for e in out.column("error").to_pylist()] == [None, "file_not_found", None]
    want = reference_similarities(tiny_model, [photos["chelsea"], photos["rocket"]], ["a cat", "a rocket"])
    got = out.column("similarity").to_pylist()
    assert abs(got[0] - want[0]) <= 1e-4 and abs(got[2] - want[1]) <= 1e-4
