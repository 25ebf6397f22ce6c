"""How many actors of each kind, and what each asks Ray for: pure arithmetic on the
cluster's resource totals, so it is tested without a cluster.

The totals are what the cluster can reach, not only what is up: on an autoscaling
cluster, the node groups' ``max_workers`` x ``resources``. Actors that wait for
resources are what makes Ray's autoscaler add nodes, so GPUs that are not up yet are
asked for only as the job's size warrants.

Fetch actors ask for CPU only, so Ray never parks them on a GPU; scorer actors ask
for one GPU each where the cluster has or can add GPUs (or the user asked for CUDA),
else they are CPU actors. Pool sizes follow the cluster unless the user set them.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .config import ModelConfig, PipelineConfig

# CPUs reserved per task or actor: small enough that a 2-core laptop fits Ray Data's
# file listing (1 CPU, not ours to set), a reader, a fetch actor and a CPU scorer at
# once. A CPU scorer runs torch on all the node's cores whatever it reserves.
READ_CPUS = 0.25
FETCH_CPUS = 0.5
CPU_SCORER_CPUS = 0.5
GPU_SCORER_CPUS = 1.0  # feeds its GPU: collates batches and tokenizes captions
# Cores one fetch actor keeps busy (its event loop and two decode threads); the
# default pool has one actor per this many spare cores.
CORES_PER_FETCH_ACTOR = 2
# Object-store bytes the job may hold (fetched pixels waiting for a scorer, 150 KB a row
# at 224x224), per scorer actor: fetching runs ahead of scoring by this much and no
# further, so memory stays flat however long the input. A CPU scorer takes ~20 pairs/s
# (256 MiB is over a minute of its work); a GPU one over a thousand.
CPU_SCORER_BUFFER_BYTES = 256 * 2**20
GPU_SCORER_BUFFER_BYTES = 1024 * 2**20
# A GPU node takes minutes to start (boot, image pull, model load), so a job asks for
# one GPU scorer per this many rows, and no more: ~8 minutes of one A10G at the
# 1,000 pairs/s that docs/scaling.md plans with.
ROWS_PER_GPU_SCORER = 500_000


def launcher_capacity(config: Mapping) -> dict[str, float]:
    """What a cluster launcher config's node types reach together: the head, plus up to
    each type's ``max_workers`` workers and no more than the global ``max_workers`` in
    all, counted per resource from the nodes richest in it. A type without
    ``resources`` (left to the launcher to detect) counts for nothing."""
    head = config.get("head_node_type")
    types = config.get("available_node_types") or {}
    most_workers = config.get("max_workers")
    workers: list[Mapping] = []
    for node_type in types.values():
        count = node_type.get("max_workers", most_workers or 0)  # Ray's default for a type
        workers += [node_type.get("resources") or {}] * count
    total: Counter = Counter((types.get(head) or {}).get("resources") or {})
    for key in {k for resources in workers for k in resources}:
        richest = sorted((resources.get(key, 0) for resources in workers), reverse=True)
        total[key] += sum(richest[:most_workers] if most_workers is not None else richest)
    return dict(total)


def reachable_resources(now: Mapping[str, float], *capacities: Mapping[str, float] | None) -> dict[str, float]:
    """Per resource, the most of what the cluster has now and what each capacity says it
    can scale to (None: not known; an unlimited resource is left at what it has now)."""
    reachable = dict(now)
    for capacity in capacities:
        for key, value in (capacity or {}).items():
            if value < sys.maxsize:  # Ray's way of saying unlimited
                reachable[key] = max(reachable.get(key, 0), value)
    return reachable


@dataclass(frozen=True)
class PoolPlan:
    fetch_actors: int
    scorer_actors: int
    scorer_gpus: float
    scorer_cpus: float
    buffer_bytes: int  # the job's object-store limit


def plan_pools(model: ModelConfig, pipeline: PipelineConfig, resources: Mapping[str, float], *,
               up_now: Mapping[str, float] | None = None, rows: int | None = None) -> PoolPlan:
    """Actor counts and per-actor resources from the cluster's reachable totals, unless set by the user.

    GPU scorers: one per `ROWS_PER_GPU_SCORER` of the job's `rows` (at least one; None:
    unknown, as many as reachable), up to the GPUs reachable, and never fewer than the
    GPUs up (`up_now`; default: all of `resources`), which cost nothing more to use.
    """
    gpus = int(resources.get("GPU", 0))
    gpus_up = int((up_now if up_now is not None else resources).get("GPU", 0))
    cpus = resources.get("CPU", 0)
    use_gpus = model.device == "cuda" or (model.device == "auto" and gpus > 0)
    worth_starting = gpus if rows is None else -(-rows // ROWS_PER_GPU_SCORER)
    scorers = pipeline.scorer_actors or (max(1, gpus_up, min(gpus, worth_starting)) if use_gpus else 1)
    # GPU scorers hold their own CPUs; a CPU scorer shares its node, so keep one core for it.
    busy = scorers * GPU_SCORER_CPUS if use_gpus else 1
    fetchers = pipeline.fetch_actors or max(1, int((cpus - busy) // CORES_PER_FETCH_ACTOR))
    return PoolPlan(
        fetch_actors=fetchers,
        scorer_actors=scorers,
        scorer_gpus=1.0 if use_gpus else 0.0,
        scorer_cpus=GPU_SCORER_CPUS if use_gpus else CPU_SCORER_CPUS,
        buffer_bytes=scorers * (GPU_SCORER_BUFFER_BYTES if use_gpus else CPU_SCORER_BUFFER_BYTES),
    )


def gpu_wait_message(plan: PoolPlan, resources: Mapping[str, float]) -> str | None:
    """A warning when scorers ask for more GPUs than the cluster has now, `resources`
    (they wait for the autoscaler)."""
    gpus = int(resources.get("GPU", 0))
    wanted = int(plan.scorer_actors * plan.scorer_gpus)
    if wanted <= gpus:
        return None
    return (f"{wanted} scorer actor(s) need a GPU each and the cluster has {gpus} now: the job waits until "
            f"the autoscaler adds GPU nodes (cluster.yaml's gpu_workers). If this cluster cannot add any, use "
            f"--device cpu.")
