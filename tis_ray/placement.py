"""How many actors of each kind, and what each asks Ray for: pure arithmetic on the
cluster's resource totals, so it is tested without a cluster.

The totals are what the cluster can reach, not only what is up: on an autoscaling
cluster, the node groups' ``max_workers`` x ``resources``. Actors that wait for
resources are what makes Ray's autoscaler add nodes.

Fetch actors ask for CPU only, so Ray never parks them on a GPU node's slot; scorer
actors ask for one GPU each where the cluster has GPUs (or the user asked for CUDA,
which on an autoscaling cluster brings GPU nodes up from zero), else they are CPU
actors. Pool sizes follow the cluster unless the user set them.
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


def launcher_capacity(config: Mapping) -> dict[str, float]:
    """What a cluster launcher config's node types reach together: ``max_workers`` x
    ``resources`` each, the head once more. A type without ``resources`` (left to the
    launcher to detect) counts for nothing; the global ``max_workers`` is not applied."""
    head = config.get("head_node_type")
    total: Counter = Counter()
    for name, node_type in (config.get("available_node_types") or {}).items():
        count = node_type.get("max_workers", 0) + (1 if name == head else 0)
        for key, value in (node_type.get("resources") or {}).items():
            total[key] += count * value
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


def plan_pools(model: ModelConfig, pipeline: PipelineConfig, resources: Mapping[str, float]) -> PoolPlan:
    """Actor counts and per-actor resources from the cluster's totals, unless set by the user."""
    gpus = int(resources.get("GPU", 0))
    cpus = resources.get("CPU", 0)
    use_gpus = model.device == "cuda" or (model.device == "auto" and gpus > 0)
    scorers = pipeline.scorer_actors or (max(gpus, 1) if use_gpus else 1)
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
            f"the autoscaler adds GPU nodes (cluster.yaml's gpu_workers). On a cluster without GPUs, use "
            f"--device cpu (or auto).")
