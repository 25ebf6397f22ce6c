"""The KubeRay manifests under deploy/: the RayService's embedded Serve config passes
Ray Serve's own schema, and the RayJob's entrypoint parses with our real CLI parser."""

from __future__ import annotations

import shlex

import pytest
import yaml
from conftest import REPO
from ray.serve.schema import ServeDeploySchema

from tis_ray.cli import build_parser, run_score
from tis_ray.serve import APP_ARGS


def _manifest(name: str) -> dict:
    return yaml.safe_load((REPO / "deploy" / name).read_text())


def _gpu_group(cluster_spec: dict) -> dict:
    (group,) = [g for g in cluster_spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    return group


def _container_resources(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container["resources"]


def test_rayservice_serve_config_validates_and_matches_the_shipped_gpu_config():
    service = _manifest("rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = ServeDeploySchema.model_validate(serve_config).applications[0]
    assert app.import_path == "tis_ray.serve:build_app"
    assert set(app.args) <= set(APP_ARGS)
    assert app.deployments[0].ray_actor_options.num_gpus == 1
    # One service definition: the RayService runs what deploy/serve-gpu.yaml deploys.
    assert serve_config["applications"] == _manifest("serve-gpu.yaml")["applications"]


def test_import_path_resolves_to_the_app_builder():
    from ray._common.utils import import_attr

    from tis_ray.serve import build_app

    app = _manifest("rayservice.yaml")["spec"]["serveConfigV2"]
    assert import_attr(yaml.safe_load(app)["applications"][0]["import_path"]) is build_app


@pytest.mark.parametrize("name,spec_key", [("rayservice.yaml", "rayClusterConfig"), ("rayjob.yaml", "rayClusterSpec")])
def test_gpu_worker_pods_ask_for_the_gpu_ray_advertises(name, spec_key):
    cluster = _manifest(name)["spec"][spec_key]
    assert cluster["rayVersion"] == "2.60.0"
    group = _gpu_group(cluster)
    resources = _container_resources(group)
    gpus = resources["limits"]["nvidia.com/gpu"]
    assert gpus == resources["requests"]["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"] == "1"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_entrypoint_parses_with_the_real_cli():
    job = _manifest("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "tis_ray"]
    args = build_parser().parse_args(command[3:])
    assert args.run is run_score
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    assert args.device == "cuda"  # asks for GPUs, so the GPU group scales up from 0
    group = _gpu_group(job["spec"]["rayClusterSpec"])
    assert group["minReplicas"] == 0
    # KubeRay does not tell the job how far the group can grow: the entrypoint says it.
    assert 1 <= args.scorer_actors <= group["maxReplicas"]


def test_one_gpu_limit_across_the_launcher_serve_and_kuberay_configs():
    """docs/scaling.md sizes the GPU group once; every config that bounds it says the same."""
    launcher = yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"]["gpu_workers"]
    serve = _manifest("serve-gpu.yaml")["applications"][0]["deployments"][0]["autoscaling_config"]
    limits = {
        "cluster.yaml gpu_workers.max_workers": launcher["max_workers"],
        "serve-gpu.yaml max_replicas": serve["max_replicas"],
        "rayservice.yaml gpu-workers maxReplicas": _gpu_group(_manifest("rayservice.yaml")["spec"]["rayClusterConfig"])[
            "maxReplicas"],
        "rayjob.yaml gpu-workers maxReplicas": _gpu_group(_manifest("rayjob.yaml")["spec"]["rayClusterSpec"])[
            "maxReplicas"],
    }
    assert len(set(limits.values())) == 1, limits


@pytest.mark.parametrize("field,value", [("import_path", "tis_ray"), ("max_ongoing_requests", 0)])
def test_a_broken_serve_config_is_rejected(field, value):
    broken = yaml.safe_load(_manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    app = broken["applications"][0]
    (app if field in app else app["deployments"][0])[field] = value
    with pytest.raises(ValueError, match=field):
        ServeDeploySchema.model_validate(broken)


@pytest.mark.parametrize("name,spec_key", [("rayservice.yaml", "rayClusterConfig"), ("rayjob.yaml", "rayClusterSpec")])
def test_kuberay_clusters_run_with_token_authentication(name, spec_key):
    assert _manifest(name)["spec"][spec_key]["authOptions"] == {"mode": "token"}
