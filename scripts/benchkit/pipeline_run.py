"""(c) tis-ray itself: the real `score_file` on the workload's CSV (or its WebDataset shards), as the
CLI runs it; and (e), the same job with a score stage that does no model work (`feed_stage`).

Ray is started before the clock starts (a cluster is up before a job is submitted);
the timed part includes creating the actor pools and loading the model in them. The CPU
time of every process of the job (driver, Ray's own, each actor) in that part is measured
too: for (e), pairs per CPU-second is the feed rate a capacity plan scales from.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from benchkit.cpu_time import TreeCpu
from tis_ray.api import connect, score_file
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig


def run(input_path: str | Path, out_dir: Path, model: str | dict[str, str], dtype: str, batch_size: int,
        reduced_decode: bool, with_embeddings: bool = False, fetch_actors: int | None = None,
        scorer_actors: int | None = None, feed_only: bool = False) -> dict:
    """`model`: a checkpoint folder, or several by name (scored in one pass; no per-row cosines
    are returned for those, only the counts and times). `fetch_actors` and `scorer_actors`: the
    pool sizes, where the caller sets them (None: as tis-ray plans). `feed_only`: (e), no model work."""
    input_path = str(input_path)  # a CSV, or a brace pattern of shards
    if feed_only:
        _without_model_work()
    started = time.perf_counter()
    connect("local")
    ray_start = time.perf_counter() - started
    output = out_dir / f"{'shards' if input_path.endswith('.tar') else Path(input_path).stem}.scored.parquet"
    started = time.perf_counter()
    with TreeCpu() as cpu:
        summary = score_file(
            input_path, str(output),
            model=({name: ModelConfig(model=path, dtype=dtype) for name, path in model.items()}
                   if isinstance(model, dict) else ModelConfig(model=model, dtype=dtype)),
            fetch=FetchConfig(reduced_decode=reduced_decode),
            pipeline=PipelineConfig(batch_size=batch_size, with_cosine=True, with_embeddings=with_embeddings,
                                    fetch_actors=fetch_actors, scorer_actors=scorer_actors),
            progress=False,
        )
    seconds = time.perf_counter() - started
    first_rows_at = summary.started + (summary.first_rows_seconds or 0.0)
    one_model = not isinstance(model, dict) and not feed_only
    cosine = pq.read_table(output, columns=["cosine"]).column("cosine") if one_model else None
    return {
        "pairs": summary.rows, "seconds": seconds, "ray_start_seconds": ray_start, "cpu_seconds": cpu.seconds,
        # after the first rows came back: the CPU of the steady part, for the feed rate per CPU
        "steady_cpu_seconds": cpu.since(first_rows_at), "first_rows": summary.first_rows,
        "seconds_to_first_rows": summary.first_rows_seconds, "steady_pairs_per_second": summary.steady_pairs_per_second,
        "runtime": ", ".join(sorted(summary.runtimes)), "scored": summary.scored,
        "errors": dict(summary.errors), "cosine": cosine.to_pylist() if cosine is not None else None,
    }


def _without_model_work() -> None:
    """The job's score stage becomes `FeedOnlyStage`, shipped to the actors by value (they do not
    have scripts/ on their path)."""
    import ray.cloudpickle

    import tis_ray.pipeline
    from benchkit import feed_stage

    ray.cloudpickle.register_pickle_by_value(feed_stage)
    tis_ray.pipeline.ScoreStage = feed_stage.FeedOnlyStage  # type: ignore[misc]
