"""Placement on a simulated multi-node cluster (`ray.cluster_utils.Cluster`, all on
this machine): a head with no CPUs for work (as in cluster.yaml), one node that
advertises a GPU, and two CPU-only nodes. A real scoring job runs through the real
`python -m tis_ray score` driver, then Ray's state API says where each actor ran:
the scorer on the GPU node holding its GPU, fetch actors on CPUs only.

No real GPU exists here: the scorer actor is placed on the GPU-advertising node
because it asks Ray for one GPU, and inside it torch sees no CUDA. Rather than score at
CPU speed while it holds the GPU, it fails to start, saying so in one line (`loading`),
and the job stops; where torch does see CUDA, the scores are checked against the reference.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import free_port, loopback_ray_env
from job_rows import check_scored, read_scored_csv, sample_rows, write_pairs_csv
from jobs import assert_stats_add_up
from ray.cluster_utils import Cluster
from ray.util.state import list_actors


@pytest.fixture(scope="module")
def simulated_cluster():
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, node_ip_address="127.0.0.1", include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=free_port(), dashboard_agent_listen_port=free_port()))
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
        cpu_nodes = [cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        yield {"address": cluster.address, "dashboard": f"http://{cluster.webui_url}",
               "head": cluster.head_node.node_id,
               "gpu": gpu_node.node_id, "cpu": {node.node_id for node in cpu_nodes}}
    finally:
        cluster.shutdown()


def test_fetch_actors_on_cpu_nodes_scorer_on_the_gpu_node(simulated_cluster, tiny_model, image_server,
                                                          photos, tmp_path):
    rows = sample_rows(image_server, photos)
    write_pairs_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "scored.csv"
    job = subprocess.run(
        [sys.executable, "-m", "tis_ray", "score", str(tmp_path / "pairs.csv"), "-o", str(out),
         "--model", tiny_model, "--dtype", "float32", "--timeout", "5", "--retries", "1"],
        env=loopback_ray_env(RAY_ADDRESS=simulated_cluster["address"]),
        capture_output=True, text=True, timeout=180,
    )
    if _torch_sees_cuda():
        assert job.returncode == 0, job.stdout + job.stderr
        assert "on cuda/float32" in job.stdout
        check_scored(read_scored_csv(out), rows, tiny_model, photos)
        assert_stats_add_up(out, len(rows))
    else:
        assert job.returncode == 2 and not out.exists(), job.stdout
        # One line of ours, the user's to act on, and no traceback from the driver: the actor's
        # own, which Ray forwards from the worker under its "(MapWorker...)" prefix, is Ray's.
        lines = job.stderr.strip().splitlines()
        assert lines[-1].startswith("tis-ray: error: Ray gave this actor GPU 0 but torch "), job.stderr[-3000:]
        assert not [line for line in lines if "Traceback" in line and "(MapWorker" not in line], job.stderr[-3000:]

    actors = list_actors(address=simulated_cluster["dashboard"], detail=True, limit=1000, raise_on_missing_output=False)
    scorers = [a for a in actors if "ScoreStage" in a.class_name]
    fetchers = [a for a in actors if "FetchStage" in a.class_name]
    assert len(scorers) == 1 and fetchers, [a.class_name for a in actors]
    for actor in scorers:
        assert actor.node_id == simulated_cluster["gpu"]
        assert actor.required_resources.get("GPU") == 1
    for actor in fetchers:
        # CPU only, so Ray may put one on any CPU a node has spare (a GPU node's spare
        # CPU included, as on a real cluster), never on the head, which offers none.
        # Of the 5 CPUs, the scorer reserves 1 and the file listing 1 as the pools start:
        # 3 left is room for one-core fetch actors (one decode thread each), not two-core ones.
        assert actor.required_resources == {"CPU": 1.0}
        assert actor.node_id in simulated_cluster["cpu"] | {simulated_cluster["gpu"]}


def _torch_sees_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
