"""Ray Data wiring: read -> fetch actors (CPU) -> scorer actors (GPU where present).

Nothing here touches pixels or models; it asks `pool_sizing` for the actor pools and
the object-store budget, asks Ray to keep row order, and reads the user's file in
blocks small enough to stream through both stages.
"""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import ray
import yaml
from ray.data import ActorPoolStrategy, Dataset

from .columns import ResultColumns, pixel_columns
from .config import FetchConfig, NamedModel, PipelineConfig, scorer_batch_size
from .fetch_stage import FetchStage
from .pool_sizing import (
    READ_CPUS,
    decode_threads,
    gpu_wait_message,
    launcher_capacity,
    plan_pools,
    reachable_resources,
)
from .preprocess import PreprocessSpec
from .score_stage import ScoreStage
from .shard_source import ShardDatasource
from .shards import Shard
from .tables import TableFile, csv_read_options
from .tar_samples import SampleLayout

# Rows per input block, the unit a fetch actor takes and hands on: the scorer starts
# once the first block is fetched, not the whole file, and the job holds the pixels of
# a few blocks at a time, however long the input. One CPU scorer batch (64): the first
# rows come back after one model call, not two (ViT-B/32 on 2 vCPUs: first rows of a
# 2,000-pair job 12.3 -> 8.2 s against 128, docs/benchmarks.md).
ROWS_PER_BLOCK = 64
# A row's bytes in an input file (a URL and a caption), to guess its rows from its size.
INPUT_BYTES_PER_ROW = 128
# A WebDataset sample's bytes in a shard, to guess a shard input's rows (for the GPU pool
# only): a guess from img2dataset's defaults (256-pixel JPEGs, a caption, a small json).
SHARD_BYTES_PER_SAMPLE = 25_000
GPU_SCORER_CALLS = 2  # batches a GPU scorer actor works on at once (see `add_scores`)
MIN_INPUT_BLOCKS = 8  # a short file flows in pieces too, and gives several fetch actors work
MAX_INPUT_BLOCKS = 4096  # past this, a task per block costs more than it saves
# Where the cluster launcher (`ray up`) leaves the cluster's config on the head node,
# where `ray job submit` runs the driver.
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


def estimated_rows(file: TableFile) -> int:
    """The input file's rows: a Parquet file's own count, or a CSV file's size over `INPUT_BYTES_PER_ROW`."""
    return file.parquet_rows if file.parquet_rows is not None else file.size // INPUT_BYTES_PER_ROW


def input_blocks(size_bytes: int) -> int:
    """How many blocks an input file of `size_bytes` is read into."""
    rows = size_bytes // INPUT_BYTES_PER_ROW
    return min(MAX_INPUT_BLOCKS, max(MIN_INPUT_BLOCKS, -(-rows // ROWS_PER_BLOCK)))


def read_records(file: TableFile) -> Dataset:
    """The input file (a path or a URL, see `storage`) as a Dataset; CSV cells stay text as written.

    One file is one read task; asking Ray Data for more blocks than that makes the read
    task split its own output, so the split takes no task (and no CPU) of its own.
    """
    blocks = input_blocks(file.size)
    if file.format == "parquet":
        return ray.data.read_parquet(file.inner, filesystem=file.filesystem, num_cpus=READ_CPUS,
                                     override_num_blocks=blocks)
    parse_options, convert_options = csv_read_options(file.schema)
    return ray.data.read_csv(
        file.inner, filesystem=file.filesystem, parse_options=parse_options, convert_options=convert_options,
        num_cpus=READ_CPUS, override_num_blocks=blocks,
    )


def read_shards(shards: list[Shard], layout: SampleLayout) -> Dataset:
    """WebDataset shards as a Dataset of samples (see `shard_source`), one read task per shard, in order."""
    return ray.data.read_datasource(ShardDatasource(shards, layout, ROWS_PER_BLOCK), num_cpus=READ_CPUS,
                                    override_num_blocks=min(len(shards), MAX_INPUT_BLOCKS))


def estimated_shard_samples(shards: list[Shard]) -> int:
    return sum(s.size for s in shards) // SHARD_BYTES_PER_SAMPLE


def records_from_table(table: pa.Table) -> Dataset:
    """Rows already in memory as a Dataset, in blocks of `ROWS_PER_BLOCK` like a read file."""
    starts = range(0, max(table.num_rows, 1), ROWS_PER_BLOCK)
    return ray.data.from_arrow([table.slice(start, ROWS_PER_BLOCK) for start in starts])


def cluster_capacity(now: dict[str, float]) -> dict[str, float]:
    """The resources the cluster can reach: what it has `now`, or more where the launcher's
    config on this node or Ray's own autoscaler config says it can scale further."""
    return reachable_resources(now, _launcher_config_capacity(), _ray_reported_capacity())


def _launcher_config_capacity() -> dict[str, float] | None:
    path = os.path.expanduser(LAUNCHER_CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return launcher_capacity(yaml.safe_load(f) or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
        logging.getLogger(__name__).warning("%s: not read (%s); pools sized for the nodes up now", path, exc)
        return None


def _ray_reported_capacity() -> dict[str, int] | None:
    """What Ray's autoscaler reports it can scale to, where one reports it (Ray Data and
    Ray Train read the same; it is not a public API, so any failure means unknown)."""
    try:
        return ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an optional hint, never a reason to fail the job
        return None


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
    specs: tuple[PreprocessSpec, ...],
    models: tuple[NamedModel, ...],
    fetch: FetchConfig,
    pipeline: PipelineConfig,
    results: ResultColumns,
    rows: int | None = None,
) -> Dataset:
    """Append each model's ``similarity`` (and what else `results` asks for), ``error`` and the
    internal summary columns. `specs[i]` is `models[i]`'s preprocessing.

    Every image is fetched and decoded once and prepared once per distinct spec; one scorer
    pool holds all the models, so each prepared image crosses the object store once.
    `rows`, the job's size where known, decides how many GPUs that are not up yet it asks for.
    """
    # Each Dataset carries the DataContext copied when it was created (at read time), so
    # order and the memory limit are asked for on the dataset itself, not on the current
    # context. A Dataset derived from another (`map_batches`, `drop_columns`) shares the
    # same DataContext object (Ray Data 2.60: `Dataset._from_parent` passes `parent._context`),
    # so setting them on `ds` or on what is built from it would change the caller's Dataset too.
    # A copy with a context of its own (what `Dataset.materialize` makes before it runs) keeps
    # the caller's as it was.
    ds = Dataset.copy(ds, _deep_copy=True)
    ds.context.execution_options.preserve_order = True
    now = ray.cluster_resources()
    # The pool is sized for the first model's device: a job's models share their actors.
    plan = plan_pools(models[0].config, pipeline, cluster_capacity(now), up_now=now, rows=rows)
    if warning := gpu_wait_message(plan, now):
        logging.getLogger(__name__).warning(warning)
    limits = ds.context.execution_options.resource_limits
    if limits.object_store_memory == float("inf"):  # a limit the user set stays
        ds.context.execution_options.resource_limits = limits.copy(object_store_memory=plan.buffer_bytes)
    distinct_specs, model_pixels = pixel_columns(specs)
    fetched = ds.map_batches(
        FetchStage,
        fn_constructor_kwargs=dict(
            image_column=image_column, caption_column=caption_column, base_dir=base_dir, fetch=fetch,
            specs=distinct_specs, decode_threads=decode_threads(plan.fetch_cpus),
        ),
        batch_size=pipeline.fetch_batch_size,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=ActorPoolStrategy(min_size=1, max_size=plan.fetch_actors),
        num_cpus=plan.fetch_cpus,
    )
    on_gpu = plan.scorer_gpus > 0
    # On a GPU, two batches at once in each scorer actor (two threads): one's host work (copying
    # its pixels out of Arrow, tokenising, building result columns) runs while the other's
    # kernels do, where one at a time left the GPU idle for all of it. Ray Data 2.60 runs the
    # calls themselves at once only with `enable_true_multi_threading` (else just the batching
    # around them overlaps). A CPU scorer's torch already uses every core: one batch at a time.
    scorers = (ActorPoolStrategy(size=plan.scorer_actors, max_concurrent_calls_per_actor=GPU_SCORER_CALLS,
                                 enable_true_multi_threading=True)
               if on_gpu else ActorPoolStrategy(size=plan.scorer_actors))
    return fetched.map_batches(
        ScoreStage,
        fn_constructor_kwargs=dict(caption_column=caption_column, models=models, pixel_columns=model_pixels,
                                   pipeline=pipeline, results=results),
        batch_size=scorer_batch_size(pipeline.batch_size, "cuda" if on_gpu else "cpu"),
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=scorers,
        num_cpus=plan.scorer_cpus,
        num_gpus=plan.scorer_gpus,
    )
