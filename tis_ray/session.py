"""A warm scorer for interactive use: the model loads once, later calls take milliseconds.

`Scorer` starts one Ray actor (a `warm.WarmScorer`) that keeps the model and the
fetcher between calls. A call of up to `DIRECT_MAX_PAIRS` pairs is one method call
on it; a larger one streams through the batch pipeline, as `score_pairs` always did
(see `DIRECT_MAX_PAIRS` for why). The module-level `score_pairs` keeps one warm
scorer per process for the settings it was last called with; `release_scorers`
frees it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import ray
from ray.data import Dataset

from .api import connect
from .columns import COSINE, SIMILARITY, ResultColumns
from .config import DEFAULT_MODEL, Device, DType, FetchConfig, ModelConfig, PipelineConfig, named_models
from .loading import load_preprocess_spec
from .pipeline import add_scores, cluster_capacity, records_from_table
from .pool_sizing import gpu_wait_message, plan_pools
from .records import Record, ScoreResult
from .warm import CAPTION, IMAGE, ScorerInfo, WarmScorer, pairs_table

# Above this many pairs a call goes through the batch pipeline: its pools fetch on
# every spare core and score on every GPU the cluster reaches, where one warm actor
# fetches in one process and scores on one device. The pipeline's start-up (its pools,
# the model loaded again: a 4-pair call took 9.0 s that way on the loaded 2-core test
# machine, 0.28 s by the warm actor) is paid back only by long calls; on that machine
# the paths crossed near 1,000 pairs. 256 is also the service's pairs per request.
# Measured in docs/benchmarks.md ("Interactive calls").
DIRECT_MAX_PAIRS = 256


class Scorer:
    """A session that keeps one scorer warm: ``with Scorer(model) as s: s.score_pairs(records)``.

    The actor asks Ray for no CPU (it is idle between calls, and a job started meanwhile
    in the same Ray must still find its cores) and, where the model runs on a GPU, for
    one GPU, which it holds until `close`. It ends with `close`, the ``with`` block, or
    the process that made it. ``start=False`` starts it on the first short call instead
    of now, so a session whose calls are all long never loads a model it does not use.
    """

    def __init__(self, model: str | ModelConfig = DEFAULT_MODEL, *, device: Device | None = None,
                 dtype: DType | None = None, fetch: FetchConfig | None = None, address: str | None = None,
                 direct_max_pairs: int = DIRECT_MAX_PAIRS, start: bool = True):
        self.model = ModelConfig.of(model, device=device, dtype=dtype)
        self.fetch = fetch or FetchConfig()
        self.direct_max_pairs = direct_max_pairs
        self.spec = load_preprocess_spec(self.model.model)  # a bad model fails here, before Ray starts
        connect(address)
        self.ray_node = ray.get_runtime_context().get_node_id()
        self._actor = None
        self._closed = False
        self.actor_id: str | None = None
        self.runtime: str | None = None  # "device/dtype", once started
        if start:
            self._start()

    def _start(self) -> None:
        now = ray.cluster_resources()
        plan = plan_pools(self.model, PipelineConfig(scorer_actors=1), cluster_capacity(now), up_now=now, rows=1)
        if warning := gpu_wait_message(plan, now):
            logging.getLogger(__name__).warning(warning)
        # A crash (a worker killed for memory, a native decoder's fault) costs the call it
        # happened in, not the session: Ray starts the actor again and the model reloads.
        actor_class = ray.remote(WarmScorer).options(num_cpus=0, num_gpus=plan.scorer_gpus, max_restarts=-1)
        actor: Any = actor_class.remote(self.model, self.fetch, self.spec)  # a handle (Ray's stubs say otherwise)
        try:
            self.runtime = ray.get(actor.describe.remote()).runtime  # returns once the model is loaded
        except BaseException:
            ray.kill(actor)
            raise
        self._actor, self.actor_id = actor, actor._actor_id.hex()

    def info(self) -> ScorerInfo:
        """The actor's process and where its model runs (starting it if it is not yet)."""
        return ray.get(self._warm_actor().describe.remote())

    def score_pairs(self, records: Iterable[Record | tuple[str, str]], *,
                    pipeline: PipelineConfig | None = None) -> Iterator[ScoreResult]:
        """One `ScoreResult` per record, in order; relative paths resolve against the working folder.

        `pipeline` shapes a call too long for the warm actor (and its ``batch_size`` the
        warm actor's model calls); ``with_cosine`` is always on, as `ScoreResult` has it.
        """
        self._check_open()
        pairs = [r if isinstance(r, Record) else Record(*r) for r in records]
        if not pairs:
            return iter(())
        pipeline = dataclasses.replace(pipeline or PipelineConfig(), with_cosine=True)
        table = pairs_table([p.image for p in pairs], [p.caption for p in pairs])
        if len(pairs) <= self.direct_max_pairs:
            scored = ray.get(self._warm_actor().score.remote(table, os.getcwd(), pipeline.batch_size))
            return _results(scored.to_pylist(), pairs)
        return _results(self._through_pipeline(table, pipeline).iter_rows(), pairs)

    def _warm_actor(self):
        self._check_open()
        if self._actor is None:
            self._start()
        return self._actor

    def _through_pipeline(self, table: pa.Table, pipeline: PipelineConfig) -> Dataset:
        if self.runtime is not None and self.runtime.startswith("cuda") and pipeline.scorer_actors is None:
            # This session's actor holds a GPU, which the pipeline's pool would wait for.
            free = int(ray.available_resources().get("GPU", 0))
            pipeline = dataclasses.replace(pipeline, scorer_actors=max(1, free))
        return add_scores(records_from_table(table), image_column=IMAGE, caption_column=CAPTION,
                          base_dir=os.getcwd(), specs=(self.spec,), models=named_models(self.model),
                          fetch=self.fetch, pipeline=pipeline, results=ResultColumns(kinds=(SIMILARITY, COSINE)),
                          rows=table.num_rows)

    def close(self) -> None:
        """End the actor and give back what it holds (its GPU, the model's memory). Idempotent."""
        if self._actor is not None and self._alive():
            ray.kill(self._actor)
        self._actor = None
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed or not self._alive()

    def _alive(self) -> bool:
        """False once Ray was shut down or restarted under it (its actor went with that Ray)."""
        return ray.is_initialized() and ray.get_runtime_context().get_node_id() == self.ray_node

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this Scorer is closed; make a new one")

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _results(rows: Iterable[dict], pairs: list[Record]) -> Iterator[ScoreResult]:
    for pair, row in zip(pairs, rows, strict=True):
        yield ScoreResult(pair.image, pair.caption, row["similarity"], row["cosine"], row["error"])


# The process's warm scorer for `score_pairs`, and its settings. One at most: a scorer
# on a GPU holds it, and a second one for new settings would wait for it forever on a
# one-GPU machine.
_warm: tuple[tuple, Scorer] | None = None
_warm_lock = threading.Lock()


def warm_scorer(model: ModelConfig, fetch: FetchConfig | None, address: str | None) -> Scorer:
    """The process's warm scorer for these settings: the one already running, or a new one
    (after the one for other settings is closed)."""
    global _warm
    key = (model, fetch or FetchConfig())
    with _warm_lock:
        if _warm is not None and (_warm[0] != key or _warm[1].closed):
            _warm[1].close()
            _warm = None
        if _warm is None:
            # Started by its first short call: a process whose calls are all long never loads it.
            _warm = (key, Scorer(model, fetch=fetch, address=address, start=False))
        return _warm[1]


def release_scorers() -> None:
    """Close the warm scorer `score_pairs` keeps, if any: its actor ends, its GPU is free."""
    global _warm
    with _warm_lock:
        if _warm is not None:
            _warm[1].close()
        _warm = None
