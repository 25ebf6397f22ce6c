"""Which device a scorer runs on, and the loud failure when Ray gave it a GPU that torch
cannot use (the batch scorer actors, Serve replicas and the warm scorer all build their
scorer through `loading.resolve_device`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import loopback_ray_env

from tis_ray.errors import ModelLoadError
from tis_ray.loading import choose_device

CUDA_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
NO_DRIVER = "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver"


# (requested, GPUs Ray assigned, torch version, built with CUDA, why CUDA is unusable) -> device
@pytest.mark.parametrize(("requested", "gpu_ids", "version", "built", "unusable", "device"), [
    ("auto", [], "2.13.0+cu128", True, None, "cuda"),
    ("auto", ["0"], "2.13.0+cu128", True, None, "cuda"),
    ("cuda", ["3"], "2.13.0+cu128", True, None, "cuda"),
    ("auto", [], "2.13.0+cpu", False, "Torch not compiled with CUDA enabled", "cpu"),  # a laptop: no GPU, none held
    ("cpu", ["0"], "2.13.0+cpu", False, "Torch not compiled with CUDA enabled", "cpu"),  # asked for the CPU
    ("cpu", [], "2.13.0+cu128", True, None, "cpu"),
])
def test_the_device_follows_the_request_and_what_torch_can_use(requested, gpu_ids, version, built, unusable, device):
    assert choose_device(requested, gpu_ids, version, built, unusable) == device


@pytest.mark.parametrize(("requested", "gpu_ids", "version", "built", "unusable", "line"), [
    ("auto", ["0"], "2.13.0+cpu", False, "Torch not compiled with CUDA enabled",
     f"Ray gave this actor GPU 0 but torch 2.13.0+cpu was built without CUDA; install the CUDA build of torch: "
     f"{CUDA_INSTALL} (or run with --device cpu)"),
    ("cuda", ["1", "3"], "2.13.0+cu128", True, NO_DRIVER,
     f"Ray gave this actor GPU 1, 3 but torch 2.13.0+cu128 cannot use it: CUDA is not available: {NO_DRIVER}; "
     f"install the CUDA build of torch: {CUDA_INSTALL} (or run with --device cpu)"),
    ("cuda", [], "2.13.0+cpu", False, "Torch not compiled with CUDA enabled",
     "--device cuda was asked for, but no CUDA device is visible here"),
    ("tpu", [], "2.13.0+cpu", False, "Torch not compiled with CUDA enabled",
     "unknown device 'tpu' (use auto, cpu or cuda)"),
])
def test_a_gpu_torch_cannot_use_fails_in_one_line_that_says_what_to_install(requested, gpu_ids, version, built,
                                                                             unusable, line):
    with pytest.raises(ModelLoadError) as failed:
        choose_device(requested, gpu_ids, version, built, unusable)
    assert str(failed.value) == line


# Ray started with num_gpus=1 on a machine without one assigns GPU 0 to an actor that asks for
# it, as it does on a GPU node: the scorer's constructor is where the actor learns it.
FAKE_GPU_ACTOR = """
import sys, ray
from tis_ray.config import ModelConfig
from tis_ray.scorer import ClipScorer
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, logging_level="ERROR",
         _node_ip_address="127.0.0.1")
scorer = ray.remote(num_cpus=0, num_gpus=1)(ClipScorer).remote(ModelConfig(model=sys.argv[1], device="auto"))
try:
    ray.get(scorer.__ray_ready__.remote())
    print("started")
except ray.exceptions.ActorDiedError as died:
    print(died.actor_init_failed, died.error_msg.splitlines()[-1])
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use this machine's GPU 0: nothing to refuse")
def test_a_real_actor_ray_gave_a_gpu_to_fails_to_start_with_that_line(tiny_model):
    ran = subprocess.run([sys.executable, "-c", FAKE_GPU_ACTOR, tiny_model], env=loopback_ray_env(),
                         capture_output=True, text=True, timeout=240)
    assert ran.returncode == 0, ran.stderr
    init_failed, _, last_line = ran.stdout.strip().splitlines()[-1].partition(" ")
    assert init_failed == "True"  # the constructor, not a later call
    problem = "was built without CUDA" if torch.version.cuda is None else "cannot use it: CUDA is not available: "
    assert last_line.startswith(f"tis_ray.errors.ModelLoadError: Ray gave this actor GPU 0 but torch "
                                f"{torch.__version__} {problem}")
    assert last_line.endswith(f"install the CUDA build of torch: {CUDA_INSTALL} (or run with --device cpu)")


def test_a_user_error_an_actor_died_of_is_rebuilt_from_rays_text_only():
    from tis_ray.errors import InputError, ModelLoadError, user_error_in

    # The shape of Ray 2.60's ActorDiedError text: the actor's traceback, ours last.
    died = ("The actor died because of an error raised in its creation task, ray::MapWorker.__init__()\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
            "tis_ray.errors.ModelLoadError: Ray gave this actor GPU 0 but torch 2.13.0+cpu was built without CUDA")
    error = user_error_in(died)
    assert type(error) is ModelLoadError
    assert str(error) == "Ray gave this actor GPU 0 but torch 2.13.0+cpu was built without CUDA"
    assert type(user_error_in("tis_ray.errors.InputError: no model given")) is InputError
    # Anything else is not ours to rebuild: a library's error, a row error, a name that only looks like ours.
    assert user_error_in("ValueError: tis_ray.errors.ModelLoadError: quoted") is None
    assert user_error_in("tis_ray.errors.RowError: timeout: slow") is None
    assert user_error_in("tis_ray.errors.ModelLoadErrorX: no") is None
