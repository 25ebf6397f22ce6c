"""(c) tis-ray itself: the real `score_file` on the workload's CSV (or its WebDataset shards), as the
CLI runs it.

Ray is started before the clock starts (a cluster is up before a job is submitted);
the timed part includes creating the actor pools and loading the model in them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from tis_ray.api import connect, score_file
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig


def run(input_path: str | Path, out_dir: Path, model: str | dict[str, str], dtype: str, batch_size: int,
        reduced_decode: bool, with_embeddings: bool = False, fetch_actors: int | None = None,
        scorer_actors: int | None = None) -> dict:
    """`model`: a checkpoint folder, or several by name (scored in one pass; no per-row cosines
    are returned for those, only the counts and times). `fetch_actors` and `scorer_actors`: the
    pool sizes, where the caller sets them (None: as tis-ray plans)."""
    input_path = str(input_path)  # a CSV, or a brace pattern of shards
    started = time.perf_counter()
    connect("local")
    ray_start = time.perf_counter() - started
    output = out_dir / f"{'shards' if input_path.endswith('.tar') else Path(input_path).stem}.scored.parquet"
    started = time.perf_counter()
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
    cosine = None if isinstance(model, dict) else pq.read_table(output, columns=["cosine"]).column("cosine")
    return {
        "pairs": summary.rows, "seconds": seconds, "ray_start_seconds": ray_start,
        "seconds_to_first_rows": summary.first_rows_seconds, "steady_pairs_per_second": summary.steady_pairs_per_second,
        "runtime": ", ".join(sorted(summary.runtimes)), "scored": summary.scored,
        "errors": dict(summary.errors), "cosine": cosine.to_pylist() if cosine is not None else None,
    }
