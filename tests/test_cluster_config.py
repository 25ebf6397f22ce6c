"""cluster.yaml as `ray up` reads it: Ray's own defaults merged in, then Ray's own
validation (the JSON schema shipped inside the ray package, plus its extra checks)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from conftest import REPO
from ray.autoscaler._private.util import prepare_config, validate_config


def _load() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def config() -> dict:
    """What `ray up` validates: the file with the AWS defaults filled in."""
    prepared = prepare_config(_load())
    validate_config(prepared)
    return prepared


def test_cluster_yaml_validates_against_rays_schema(config):
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]


def test_gpu_group_scales_from_zero_and_advertises_one_gpu_per_node(config):
    gpu = config["available_node_types"]["gpu_workers"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] == 1 and gpu["resources"]["CPU"] >= 1
    assert gpu["docker"]["worker_image"].endswith("-gpu")


def test_cpu_group_and_head_advertise_no_gpu(config):
    types = config["available_node_types"]
    cpu = types["cpu_workers"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] >= 1
    assert cpu["resources"]["CPU"] >= 1 and "GPU" not in cpu["resources"]
    assert types["head"]["resources"] == {"CPU": 0}  # no scoring work on the head
    assert sum(t.get("max_workers", 0) for t in types.values()) >= config["max_workers"]


def test_setup_installs_the_pinned_torch_and_the_wheel_everywhere(config):
    wheel = "pip install -c ~/tis-ray-deploy/constraints.txt ~/tis-ray-dist/tis_ray-0.1.0-py3-none-any.whl"
    assert config["file_mounts"] == {"~/tis-ray-dist": "./dist", "~/tis-ray-deploy": "./deploy",
                                     "~/.ray/auth_token": "~/.ray/auth_token"}
    cpu_torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    for merged in (config["head_setup_commands"], config["worker_setup_commands"]):  # common + own
        assert merged.index(cpu_torch) < merged.index(wheel)
    gpu_setup = config["available_node_types"]["gpu_workers"]["worker_setup_commands"]
    assert any(c.startswith("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu")
               for c in gpu_setup)
    assert gpu_setup[-1] == wheel


def test_constraints_pin_every_dependency_within_the_projects_own_ranges():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (REPO / "deploy" / "constraints.txt").read_text().splitlines()
    pins = {canonicalize_name(r.name): r for r in map(Requirement, (ln for ln in lines if ln and ln[0] != "#"))}
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins.values()), pins
    for dependency in map(Requirement, tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]):
        pin = pins[canonicalize_name(dependency.name)]  # every dependency is pinned ...
        assert dependency.specifier.contains(next(iter(pin.specifier)).version), (dependency, pin)  # ... in range


def test_every_node_starts_ray_in_token_mode_with_the_mounted_token(config):
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert start.startswith("export RAY_AUTH_MODE=token;")


def test_wheel_name_in_setup_matches_the_project_version():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wheel = f"tis_ray-{project['version']}-py3-none-any.whl"
    assert (REPO / "cluster.yaml").read_text().count(wheel) == 2


@pytest.mark.parametrize("breakage", ["misspelt_key", "fractional_gpu", "unknown_head_type"])
def test_broken_copies_are_rejected(breakage):
    broken = copy.deepcopy(_load())
    types = broken["available_node_types"]
    if breakage == "misspelt_key":
        types["gpu_workers"]["min_worker"] = types["gpu_workers"].pop("min_workers")
    elif breakage == "fractional_gpu":
        types["gpu_workers"]["resources"]["GPU"] = 0.5
    else:
        broken["head_node_type"] = "no_such_type"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(broken))
