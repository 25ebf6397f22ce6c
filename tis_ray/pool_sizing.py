"""How many actors of each kind, and what each asks Ray for: pure arithmetic on the
cluster's resource totals, so it is tested without a cluster.

The totals are what the cluster can reach, not only what is up: on an autoscaling
cluster, the node groups' ``max_workers`` x ``resources``. Actors that wait for
resources are what makes Ray's autoscaler add nodes, so GPUs that are not up yet are
asked for only as the job's size warrants.

Fetch actors ask for CPU only, so Ray never parks them on a GPU, and as many CPUs as
they keep busy (`fetch_actor_cpus`); scorer actors ask for one GPU each where the
cluster has or can add GPUs (or the user asked for CUDA), else they are CPU actors.
Pool sizes follow the cluster unless the user set them.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .config import ModelConfig, PipelineConfig

# CPUs reserved per task or actor. A CPU scorer runs torch on all the node's cores
# whatever it reserves; small, so that it fits beside a fetch actor on a 2-core laptop.
READ_CPUS = 0.25
CPU_SCORER_CPUS = 0.5
GPU_SCORER_CPUS = 1.0  # feeds its GPU: collates batches and tokenizes captions
# Ray Data's file listing, the first task of a file read: Ray's default of 1 CPU, not ours
# to set (Ray Data 2.60 `plan_list_files_op` passes no num_cpus). It runs while the actor
# pools start, so one fetch actor, the scorers and it must fit at once or the job waits forever.
LISTING_CPUS = 1.0
# A fetch actor's reservation on a cluster with room to spare: its event loop and this many
# decode threads (`decode_threads`). Two, not one per actor, halve the actors' processes
# and their connections to each host (`FetchConfig.per_host_limit` is per actor).
FETCH_ACTOR_CPUS = 2.0
# Where the listing, the scorers and a 1-CPU fetch actor do not fit (a 2-core laptop with a
# CPU scorer: 1 + 0.5 + 1 > 2), the fetch actor reserves this and uses one decode thread:
# it uses more than it reserves, on a machine too small to hold anything else anyway.
SMALL_FETCH_ACTOR_CPUS = 0.5
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


def decode_threads(reserved_cpus: float) -> int:
    """Decode threads for an actor that reserved `reserved_cpus` (a fetch actor, a Serve replica):
    one per whole CPU, at least one. Decoding and resizing are what keep such an actor's cores
    busy (Pillow releases the GIL there); its event loop mostly waits on the network. So one
    number, the reservation, decides what Ray sets aside and what the actor uses."""
    return max(1, int(reserved_cpus))


def fetch_actor_cpus(cpus: float, scorer_cpus: float) -> float:
    """What one fetch actor reserves, on a cluster of `cpus` whose scorers reserve `scorer_cpus`.

    Ray Data starts one fetch actor and the scorers while its file listing (`LISTING_CPUS`)
    runs, so those must fit at once. `FETCH_ACTOR_CPUS` (2 decode threads) where that leaves
    room for two such actors, else 1 CPU (1 decode thread) where one fits, else
    `SMALL_FETCH_ACTOR_CPUS` (still 1 decode thread): a 2-core laptop with a CPU scorer.
    Not 2 where only one such actor fits: on a lone 4-vCPU GPU node the scorer leaves 3
    cores, which three 1-CPU actors use and one 2-CPU actor would not.
    """
    spare = cpus - LISTING_CPUS - scorer_cpus
    if spare >= 2 * FETCH_ACTOR_CPUS:
        return FETCH_ACTOR_CPUS
    return 1.0 if spare >= 1 else SMALL_FETCH_ACTOR_CPUS


@dataclass(frozen=True)
class PoolPlan:
    fetch_actors: int
    fetch_cpus: float  # each fetch actor's; its decode threads are `decode_threads(fetch_cpus)`
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

    Fetch actors: as many as the CPUs left after the scorers' share hold, counted by the
    cores each keeps busy (its decode threads), so that what they reserve never exceeds
    those CPUs. GPU scorers' share is what they reserve; a CPU scorer's is one core, since
    it runs torch on every core whatever it reserves.
    """
    gpus = int(resources.get("GPU", 0))
    gpus_up = int((up_now if up_now is not None else resources).get("GPU", 0))
    cpus = resources.get("CPU", 0)
    use_gpus = model.device == "cuda" or (model.device == "auto" and gpus > 0)
    worth_starting = gpus if rows is None else -(-rows // ROWS_PER_GPU_SCORER)
    scorers = pipeline.scorer_actors or (max(1, gpus_up, min(gpus, worth_starting)) if use_gpus else 1)
    scorer_cpus = GPU_SCORER_CPUS if use_gpus else CPU_SCORER_CPUS
    scorers_share = scorers * scorer_cpus if use_gpus else 1
    fetch_cpus = fetch_actor_cpus(cpus, scorers * scorer_cpus)
    fetchers = pipeline.fetch_actors or max(1, int((cpus - scorers_share) // decode_threads(fetch_cpus)))
    return PoolPlan(
        fetch_actors=fetchers,
        fetch_cpus=fetch_cpus,
        scorer_actors=scorers,
        scorer_gpus=1.0 if use_gpus else 0.0,
        scorer_cpus=scorer_cpus,
        buffer_bytes=scorers * (GPU_SCORER_BUFFER_BYTES if use_gpus else CPU_SCORER_BUFFER_BYTES),
    )


def serve_replica_gpus(device: str, cluster_gpus: float, gpus_per_replica: float) -> float:
    """GPUs one Serve replica reserves: `gpus_per_replica` where it scores on CUDA (``cuda``, or
    ``auto`` on a cluster that has or can add GPUs), else none. A replica uses its GPU whatever
    Ray knows, so an unreserved one would share it unseen with every other GPU actor of the
    node; a fraction (0.5) is Ray's way to place that many replicas on one GPU on purpose."""
    return gpus_per_replica if device == "cuda" or (device == "auto" and cluster_gpus > 0) else 0.0


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
