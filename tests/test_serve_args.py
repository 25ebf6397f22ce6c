"""The Serve app's ``args``: every shipped config goes through Ray Serve's own builder call
(the one ``serve deploy`` and ``serve run`` make, which turns ``args`` into a `ServeArgs`
because `build_app` says so in its type hint) to the `ScoringService` arguments. Ray is
imported; no cluster is started."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from conftest import REPO
from pydantic import ValidationError
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from tis_ray.cli import build_parser
from tis_ray.config import DEFAULT_MODEL, SERVE_MAX_PIXELS, FetchConfig
from tis_ray.errors import RowError
from tis_ray.netguard import DEFAULT_PORTS
from tis_ray.pool_sizing import serve_replica_gpus
from tis_ray.request_checks import ServiceLimits
from tis_ray.serve import ScoringService, ServedModel, build_app, service_deployment


def _shipped_app_configs() -> dict[str, dict]:
    configs = {name: yaml.safe_load((REPO / "deploy" / name).read_text())
               for name in ("serve-cpu.yaml", "serve-gpu.yaml", "serve-scale-to-zero.yaml", "serve-two-models.yaml")}
    service = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    configs["rayservice.yaml"] = yaml.safe_load(service["spec"]["serveConfigV2"])
    return {name: config["applications"][0] for name, config in configs.items()}


def built_with(args: dict) -> dict:
    """The `ScoringService` constructor arguments Serve's builder call ends with."""
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    assert app._bound_deployment.func_or_class is ScoringService.func_or_class
    return app._bound_deployment.init_kwargs


@pytest.mark.parametrize("name", sorted(_shipped_app_configs()))
def test_each_shipped_config_builds_the_service_it_describes(name, monkeypatch):
    monkeypatch.delenv("TIS_API_KEY", raising=False)
    app = _shipped_app_configs()[name]
    assert app["import_path"] == "tis_ray.serve:build_app"
    args = app["args"]
    options = built_with(args)
    if "models" in args:
        assert "model" not in options
        assert options["models"] == tuple(ServedModel(**served) for served in args["models"])
    else:
        assert options["model"] == args["model"] and "models" not in options
    assert (options["device"], options["dtype"]) == (args["device"], args["dtype"])
    assert options["limits"] == ServiceLimits(max_pairs=args["max_pairs"], max_body_bytes=args["max_body_bytes"])
    assert options["api_key"] is None
    assert options["policy"].allow == tuple(args["allow_hosts"])


def test_unset_args_take_the_service_defaults(monkeypatch):
    monkeypatch.delenv("TIS_API_KEY", raising=False)
    options = built_with({})
    assert options["model"] == DEFAULT_MODEL and (options["device"], options["dtype"]) == ("auto", "auto")
    assert options["fetch"] == FetchConfig(max_pixels=SERVE_MAX_PIXELS)  # the service's own pixel cap
    assert options["limits"] == ServiceLimits()
    assert options["policy"].ports == tuple(sorted(DEFAULT_PORTS)) and options["policy"].allow == ()


def test_each_arg_reaches_the_setting_it_names(monkeypatch):
    monkeypatch.setenv("TIS_API_KEY", "from-the-environment")
    options = built_with({
        "model": "/models/clip", "device": "cpu", "dtype": "float32", "allow_hosts": [" images.internal ", ""],
        "allowlist_only": True, "allow_ports": ["8080", 9000], "allow_wide_networks": True, "max_pairs": 8,
        "max_body_bytes": 1000, "timeout_s": "2.5", "max_image_bytes": 5000, "max_pixels": 1_000_000,
        "ignore_opt_out": True, "user_agent": "tests/1.0"})
    assert (options["model"], options["device"], options["dtype"]) == ("/models/clip", "cpu", "float32")
    assert options["api_key"] == "from-the-environment"
    assert options["limits"] == ServiceLimits(max_pairs=8, max_body_bytes=1000)
    assert options["fetch"] == FetchConfig(timeout_s=2.5, max_bytes=5000, max_pixels=1_000_000, honor_opt_out=False,
                                           user_agent="tests/1.0")
    policy = options["policy"]
    assert policy.allow == ("images.internal",) and policy.allowlist_only and policy.allow_wide_networks
    assert policy.ports == tuple(sorted({*DEFAULT_PORTS, 8080, 9000}))
    with pytest.raises(RowError):  # allowlist-only: a public address off the list is refused
        policy.check_ip(ipaddress.ip_address("93.184.216.34"), "example.com", 80)  # judged, never dialled


def test_an_unknown_arg_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(ValidationError) as caught:
        built_with({"model": "m", "max_pair": 8})
    message = str(caught.value)
    assert "unknown tis-ray app args: max_pair" in message
    assert all(name in message for name in ("max_pairs", "max_body_bytes", "allow_hosts", "user_agent"))


@pytest.mark.parametrize("field, value", [("max_pairs", "many"), ("max_pairs", 0), ("device", "tpu"),
                                          ("allow_ports", [70000]), ("timeout_s", -1), ("allowlist_only", "maybe")])
def test_a_wrong_value_is_refused_naming_its_field(field, value):
    with pytest.raises(ValidationError) as caught:
        built_with({field: value})
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_a_bad_allowlist_entry_is_one_clear_error_before_any_replica():
    with pytest.raises(ValueError, match=r"^allowlist entry '10.0.0.1/0' has host bits set"):
        built_with({"allow_hosts": ["10.0.0.1/0"]})


def test_several_models_reach_the_service_in_their_order():
    options = built_with({"models": [{"name": "b32", "model": "/models/clip"},
                                     {"name": "sig.v2", "model": "/models/siglip", "dtype": "float32"}],
                          "dtype": "bfloat16"})
    assert "model" not in options and options["dtype"] == "bfloat16"  # the app's, for models that name none
    assert options["models"] == (ServedModel(name="b32", model="/models/clip"),
                                 ServedModel(name="sig.v2", model="/models/siglip", dtype="float32"))


@pytest.mark.parametrize("args, message", [
    ({"model": "/models/clip", "models": [{"name": "a", "model": "/models/siglip"}]}, "give `model`"),
    ({"models": [{"name": "a", "model": "/m/1"}, {"name": "a", "model": "/m/2"}]}, "a named twice"),
])
def test_models_are_given_one_way_with_a_name_each(args, message):
    with pytest.raises(ValidationError, match=message):
        built_with(args)


@pytest.mark.parametrize("served, loc", [
    ({"name": "has space", "model": "/m"}, ("models", 0, "name")),
    ({"name": "", "model": "/m"}, ("models", 0, "name")),
    ({"model": "/m"}, ("models", 0, "name")),
    ({"name": "a", "model": "/m", "dtype": "float8"}, ("models", 0, "dtype")),
    ({"name": "a", "model": "/m", "device": "cuda"}, ("models", 0, "device")),
])
def test_a_bad_model_entry_is_refused_naming_its_field(served, loc):
    with pytest.raises(ValidationError) as caught:
        built_with({"models": [served]})
    assert [error["loc"] for error in caught.value.errors()] == [loc]



# `tis-ray serve --device D --gpus-per-replica G` on a cluster with some GPUs -> what each replica reserves
@pytest.mark.parametrize(("flags", "cluster_gpus", "num_gpus"), [
    (["--device", "cuda"], 0, 1.0),
    (["--device", "cuda", "--gpus-per-replica", "0.5"], 1, 0.5),
    ([], 4, 1.0),  # auto, on a cluster with GPUs: the replica runs on one
    ([], 0, 0.0),
    (["--device", "cpu", "--gpus-per-replica", "0.25"], 8, 0.0),
])
def test_tis_ray_serve_reserves_the_gpu_its_replica_runs_on(flags, cluster_gpus, num_gpus):
    args = build_parser().parse_args(["serve", *flags])
    batching = {"max_batch_size": 8, "batch_wait_ms": 5.0}
    deployment = service_deployment(batching, serve_replica_gpus(args.device, cluster_gpus, args.gpus_per_replica))
    assert deployment.ray_actor_options["num_gpus"] == num_gpus
    assert deployment.user_config == batching


@pytest.mark.parametrize("share", ["0", "-1", "1.5", "two"])
def test_gpus_per_replica_is_a_share_of_one_gpu(share, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--gpus-per-replica", share])
    assert "--gpus-per-replica" in capsys.readouterr().err
