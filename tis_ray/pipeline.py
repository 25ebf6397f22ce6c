"""Ray Data wiring: read -> fetch actors (CPU) -> scorer actors (GPU where present).

Nothing here touches pixels or models; it sizes the actor pools from the cluster,
asks Ray to keep row order, and reads the user's file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import ray
from ray.data import ActorPoolStrategy, Dataset

from .config import FetchConfig, ModelConfig, PipelineConfig
from .preprocess import PreprocessSpec
from .records import input_format
from .stages import FetchStage, ScoreStage

# CPUs reserved per task or actor: small enough that a 2-core laptop fits Ray Data's
# file listing (1 CPU, not ours to set), a reader, a fetch actor and a CPU scorer at
# once. A CPU scorer runs torch on all the node's cores whatever it reserves.
READ_CPUS = 0.25
FETCH_CPUS = 0.5
CPU_SCORER_CPUS = 0.5


@dataclass(frozen=True)
class PoolPlan:
    fetch_actors: int
    scorer_actors: int
    scorer_gpus: float
    scorer_cpus: float


def plan_pools(model: ModelConfig, pipeline: PipelineConfig, resources: dict[str, float]) -> PoolPlan:
    """Actor counts and resources from the cluster's totals, unless set by the user."""
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    use_gpus = model.device != "cpu" and gpus > 0
    default_scorers = gpus if use_gpus else 1
    default_fetchers = max(1, (cpus - (0 if use_gpus else default_scorers)) // 2) if cpus > 2 else 1
    return PoolPlan(
        fetch_actors=pipeline.fetch_actors or default_fetchers,
        scorer_actors=pipeline.scorer_actors or default_scorers,
        scorer_gpus=1.0 if use_gpus else 0.0,
        scorer_cpus=1.0 if use_gpus else CPU_SCORER_CPUS,
    )


def read_records(path: str, schema: pa.Schema) -> Dataset:
    """The input file as a Dataset; CSV cells stay text exactly as written."""
    if input_format(path) == "parquet":
        return ray.data.read_parquet(path, num_cpus=READ_CPUS)
    return ray.data.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(zip(schema.names, schema.types)),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
        num_cpus=READ_CPUS,
    )


def skip_rows(ds: Dataset, rows: int) -> Dataset:
    """`ds` without its first `rows` rows, order kept (a resumed job's rows already done).

    Ray Data has no lazy offset: the input is read into the object store (spilled to
    disk when large) and split at the row; the reading is cheap next to scoring.
    """
    ds.context.execution_options.preserve_order = True
    return ds.split_at_indices([rows])[1]


def add_scores(
    ds: Dataset,
    *,
    image_column: str,
    caption_column: str,
    base_dir: str,
    spec: PreprocessSpec,
    model: ModelConfig,
    fetch: FetchConfig,
    pipeline: PipelineConfig,
) -> Dataset:
    """Append ``similarity`` (and ``cosine``), ``error`` and the internal summary columns."""
    # Each Dataset carries the DataContext copied when it was created (here, at read
    # time), so order is asked for on the dataset itself, not on the current context.
    ds.context.execution_options.preserve_order = True
    plan = plan_pools(model, pipeline, ray.cluster_resources())
    fetched = ds.map_batches(
        FetchStage,
        fn_constructor_kwargs=dict(image_column=image_column, base_dir=base_dir, fetch=fetch, spec=spec),
        batch_size=pipeline.fetch_batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(min_size=1, max_size=plan.fetch_actors),
        num_cpus=FETCH_CPUS,
    )
    return fetched.map_batches(
        ScoreStage,
        fn_constructor_kwargs=dict(caption_column=caption_column, model=model, with_cosine=pipeline.with_cosine),
        batch_size=pipeline.batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(size=plan.scorer_actors),
        num_cpus=plan.scorer_cpus,
        num_gpus=plan.scorer_gpus,
    )
