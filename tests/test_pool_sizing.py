"""Pool sizes and per-actor resources from the cluster's totals, and input blocks from a file's size
(pure arithmetic, no Ray)."""

from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO

from tis_ray.config import ModelConfig, PipelineConfig
from tis_ray.pipeline import (
    estimated_rows,
    input_blocks,
)
from tis_ray.pool_sizing import (
    decode_threads,
    gpu_wait_message,
    launcher_capacity,
    plan_pools,
    reachable_resources,
    serve_replica_gpus,
)
from tis_ray.tables import TableFile

AUTO = ModelConfig(device="auto")
DEFAULTS = PipelineConfig()


@pytest.mark.parametrize("gpus", [1, 4])
def test_one_gpu_scorer_per_gpu_and_fetchers_from_the_cpus_left(gpus):
    plan = plan_pools(AUTO, DEFAULTS, {"CPU": 4 + 16 * 2, "GPU": gpus})
    assert (plan.scorer_actors, plan.scorer_gpus, plan.scorer_cpus) == (gpus, 1.0, 1.0)
    # 36 CPUs, one per GPU scorer, the rest two per fetch actor: 35 // 2 and 32 // 2
    assert plan.fetch_actors == {1: 17, 4: 16}[gpus]


def test_cpu_only_cluster_gets_one_cpu_scorer_and_keeps_a_core_for_it():
    plan = plan_pools(AUTO, DEFAULTS, {"CPU": 9})
    assert (plan.scorer_actors, plan.scorer_gpus) == (1, 0.0)
    assert plan.scorer_cpus < 1  # fits beside a fetch actor on a 2-core laptop
    assert plan.fetch_actors == 4


# cluster -> fetch actors, and the CPUs each reserves, and its decode threads
@pytest.mark.parametrize(("resources", "fetchers", "cpus_each", "threads"), [
    # A 2-core laptop: the file listing (1), the CPU scorer (0.5) and a fetch actor must fit at
    # once; a 1-CPU fetch actor would not (2.5 > 2, and the job would wait forever).
    ({"CPU": 2}, 1, 0.5, 1),
    # 4 cores: 1 + 0.5 + 1 fits; one core is kept for the CPU scorer and 3 one-core actors take the rest.
    ({"CPU": 4}, 3, 1.0, 1),
    ({"CPU": 8}, 3, 2.0, 2),  # 7 cores after the scorer's: 3 two-core actors
    # One g5.xlarge (4 vCPU, 1 GPU): the scorer's 1 and the listing's 1 leave 2, room for one
    # two-core actor only; three one-core actors use the 3 the scorer leaves.
    ({"CPU": 4, "GPU": 1}, 3, 1.0, 1),
    ({"CPU": 16, "GPU": 1}, 7, 2.0, 2),  # a 16-core GPU node: 7 x 2 + the scorer's 1 = 15 of 16
    ({"CPU": 64, "GPU": 8}, 28, 2.0, 2),  # 8 scorers hold 8: (64 - 8) / 2
])
def test_fetch_actors_reserve_the_cores_their_decode_threads_use(resources, fetchers, cpus_each, threads):
    plan = plan_pools(AUTO, DEFAULTS, resources)
    assert (plan.fetch_actors, plan.fetch_cpus, decode_threads(plan.fetch_cpus)) == (fetchers, cpus_each, threads)


@pytest.mark.parametrize("gpus", [0, 1, 2, 8])
@pytest.mark.parametrize("cpus", range(3, 100))
def test_what_fetch_actors_reserve_fits_beside_the_scorers_and_the_file_listing(cpus, gpus):
    plan = plan_pools(AUTO, DEFAULTS, {"CPU": cpus, "GPU": gpus})
    scorers = plan.scorer_actors * plan.scorer_cpus
    scorers_share = scorers if gpus else 1  # a CPU scorer reserves half a core and is given a whole one
    if cpus - scorers_share >= 1:  # else the one fetch actor a job needs waits for the autoscaler
        assert plan.fetch_actors * plan.fetch_cpus + scorers_share <= cpus
    if cpus >= 1 + scorers + 0.5:  # room for the listing task (1 CPU) and the smallest fetch actor
        assert 1 + plan.fetch_cpus + scorers <= cpus  # the job's first moments fit: no wait forever
    assert plan.fetch_cpus in (0.5, 1, 2) and decode_threads(plan.fetch_cpus) == max(1, plan.fetch_cpus)


@pytest.mark.parametrize("cpus", [0, 1, 2])
def test_small_machines_still_get_one_of_each(cpus):
    plan = plan_pools(AUTO, DEFAULTS, {"CPU": cpus})
    assert (plan.fetch_actors, plan.scorer_actors) == (1, 1)


def test_device_cpu_ignores_the_gpus():
    plan = plan_pools(ModelConfig(device="cpu"), DEFAULTS, {"CPU": 8, "GPU": 2})
    assert (plan.scorer_actors, plan.scorer_gpus) == (1, 0.0)
    assert gpu_wait_message(plan, {"CPU": 8, "GPU": 2}) is None


def test_device_cuda_asks_for_gpus_the_cluster_has_not_got_yet():
    """An autoscaling GPU group at min 0 has no GPU until a job asks for one."""
    resources = {"CPU": 4}
    plan = plan_pools(ModelConfig(device="cuda"), PipelineConfig(scorer_actors=3), resources)
    assert (plan.scorer_actors, plan.scorer_gpus) == (3, 1.0)
    message = gpu_wait_message(plan, resources)
    assert "3 scorer actor(s)" in message and "has 0" in message and "--device cpu" in message
    assert gpu_wait_message(plan, {"CPU": 4, "GPU": 3}) is None


def test_the_shipped_cluster_yaml_sizes_pools_for_what_its_groups_reach():
    """Head (CPU 0) + 12 GPU nodes {CPU 4, GPU 1} + 16 CPU nodes {CPU 8}: nothing is up but the head."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    capacity = launcher_capacity(config)
    assert capacity == {"CPU": 12 * 4 + 16 * 8, "GPU": 12}
    now = {"CPU": 0}
    plan = plan_pools(AUTO, DEFAULTS, reachable_resources(now, capacity), up_now=now)
    assert (plan.scorer_actors, plan.scorer_gpus) == (12, 1.0)  # waiting scorers bring the GPU nodes up
    assert plan.fetch_actors == 82  # (176 CPUs - 12 for the GPU scorers) // 2 per fetch actor


# One GPU that is not up yet is asked for per 500,000 rows (docs/scaling.md).
@pytest.mark.parametrize(("rows", "gpus_up", "scorers"), [
    (10, 0, 1),  # a small job starts one GPU node, not twelve
    (500_000, 0, 1),
    (500_001, 0, 2),
    (2_500_000, 0, 5),
    (50_000_000, 0, 12),  # no more than the cluster can reach
    (10, 3, 3),  # GPUs already up are used whatever the job's size
    (2_000_000, 3, 4),
])
def test_gpus_not_up_yet_are_asked_for_by_the_jobs_size(rows, gpus_up, scorers):
    reachable, now = {"CPU": 176, "GPU": 12}, {"CPU": 4 * gpus_up, "GPU": gpus_up}
    plan = plan_pools(AUTO, DEFAULTS, reachable, up_now=now, rows=rows)
    assert (plan.scorer_actors, plan.scorer_gpus) == (scorers, 1.0)
    assert plan_pools(AUTO, PipelineConfig(scorer_actors=7), reachable, up_now=now, rows=rows).scorer_actors == 7


def test_launcher_capacity_stops_at_the_global_max_workers_with_the_richest_nodes():
    config = {"head_node_type": "head", "max_workers": 5, "available_node_types": {
        "head": {"resources": {"CPU": 2}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4},
        "cpu": {"resources": {"CPU": 8}, "max_workers": 4},
        "unset": {"resources": {"CPU": 1}},  # a type's max_workers defaults to the global one
    }}
    # GPU: 4 GPU nodes fit in 5 workers; CPU: the richest 5 workers are the 4 CPU nodes and a GPU node.
    assert launcher_capacity(config) == {"CPU": 2 + 4 * 8 + 4, "GPU": 4}


def test_launcher_capacity_counts_the_head_once_and_skips_types_without_resources():
    config = {"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 4}, "max_workers": 2},  # the head, and up to 2 more of its type
        "detected": {"max_workers": 10},  # resources left to the launcher to detect
        "gpu": {"resources": {"CPU": 8, "GPU": 2}, "min_workers": 1, "max_workers": 3},
    }}
    assert launcher_capacity(config) == {"CPU": 3 * 4 + 3 * 8, "GPU": 6}


def test_reachable_resources_take_the_most_of_now_and_each_known_capacity():
    now = {"CPU": 16, "GPU": 1, "memory": 5e10}
    assert reachable_resources(now, None) == now
    assert reachable_resources(now, {"CPU": 8, "GPU": 4}, None, {"GPU": 2, "TPU": 8}) == {
        "CPU": 16, "GPU": 4, "memory": 5e10, "TPU": 8}
    assert reachable_resources(now, {"GPU": sys.maxsize}) == now  # unlimited: plan for what is up


@pytest.mark.parametrize(("device", "cluster_gpus", "per_replica", "reserved"), [
    ("cuda", 0, 1.0, 1.0),  # the autoscaler adds the GPU node the replica waits for
    ("cuda", 4, 0.5, 0.5),  # two replicas share each GPU
    ("auto", 2, 1.0, 1.0),
    ("auto", 0, 1.0, 0.0),  # a CPU-only cluster: auto is the CPU
    ("cpu", 8, 1.0, 0.0),
])
def test_a_serve_replica_on_cuda_reserves_its_gpu(device, cluster_gpus, per_replica, reserved):
    assert serve_replica_gpus(device, cluster_gpus, per_replica) == reserved


def test_decode_threads_are_one_per_whole_cpu_reserved_and_at_least_one():
    assert [decode_threads(cpus) for cpus in (0, 0.25, 0.5, 1, 1.5, 2, 4)] == [1, 1, 1, 1, 1, 2, 4]


def test_user_sizes_win():
    plan = plan_pools(AUTO, PipelineConfig(fetch_actors=7, scorer_actors=2), {"CPU": 64, "GPU": 8})
    assert (plan.fetch_actors, plan.scorer_actors) == (7, 2)


def test_the_object_store_budget_follows_the_scorers():
    """Fetching runs ahead of scoring by a fixed budget per scorer, not by the input's length."""
    cpu = plan_pools(AUTO, DEFAULTS, {"CPU": 2})
    gpu = plan_pools(AUTO, DEFAULTS, {"CPU": 36, "GPU": 4})
    assert cpu.buffer_bytes == 256 * 2**20  # 256 MiB for a CPU scorer (docs/benchmarks.md)
    assert gpu.buffer_bytes == 4 * 2**30  # 1 GiB per GPU scorer


# A block is ~64 rows of ~128 bytes (8 KiB of CSV); at least 8 blocks, at most 4096.
@pytest.mark.parametrize(("size", "blocks"), [(0, 8), (100, 8), (20 * 8_192, 20), (20 * 8_192 + 128, 21),
                                              (10**12, 4096)])
def test_an_input_file_is_read_into_blocks_of_about_rows_per_block(size, blocks):
    assert input_blocks(size) == blocks


def test_estimated_rows_are_parquets_own_count_or_a_csv_files_size_per_row(tmp_path):
    table = pa.table({"image_url": [f"http://127.0.0.1/{i}.jpg" for i in range(1000)], "caption": ["a cat"] * 1000})
    pq.write_table(table, tmp_path / "pairs.parquet")
    pacsv.write_csv(table, tmp_path / "pairs.csv")
    assert estimated_rows(TableFile.open(str(tmp_path / "pairs.parquet"))) == 1000
    assert estimated_rows(TableFile.open(str(tmp_path / "pairs.csv"))) == (tmp_path / "pairs.csv").stat().st_size // 128
