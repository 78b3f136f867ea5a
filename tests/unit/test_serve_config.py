"""serve_config.yaml is a valid Serve config, strictly (Ray itself drops unknown keys without a word)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from tests.strict_serve import serve_config_problems

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


@pytest.fixture(scope="module")
def built(serve_config):
    """The application of serve_config.yaml bound as on a GPU cluster (nothing is loaded)."""
    from ray.serve._private.build_app import build_app as build_serve_app

    from sam2_serve.deployments.app import bind_app

    app = serve_config["applications"][0]
    return build_serve_app(bind_app(dict(app["args"], device="cuda")), name=app["name"])


def test_serve_config_is_strictly_valid(serve_config):
    assert serve_config_problems(serve_config) == []
    ServeDeploySchema.model_validate(serve_config)


def test_every_autoscaling_config_passes_ray(serve_config):
    autos = [d["autoscaling_config"] for a in serve_config["applications"] for d in a["deployments"]
             if "autoscaling_config" in d]
    assert autos, "serve_config.yaml autoscales no deployment"
    for auto in autos:
        parsed = AutoscalingConfig.model_validate(auto)
        assert 1 <= parsed.min_replicas <= parsed.max_replicas


def test_config_names_only_deployments_the_app_has(serve_config, built):
    names = {d.name for d in built.deployments}
    configured = {d["name"] for d in serve_config["applications"][0]["deployments"]}
    assert configured <= names, f"config for deployments the app does not build: {configured - names}"


def test_gpu_deployments_autoscale_and_stay_up(serve_config, built):
    deps = {d["name"]: d for d in serve_config["applications"][0]["deployments"]}
    gpu = [d.name for d in built.deployments if (d.ray_actor_options or {}).get("num_gpus")]
    assert gpu, "on device=cuda no deployment asks for a GPU"
    for name in gpu + [built.ingress_deployment_name]:
        auto = (deps.get(name) or {}).get("autoscaling_config")
        assert auto, f"{name} has no autoscaling_config in serve_config.yaml"
        assert auto["min_replicas"] >= 1, f"{name} may scale to zero: its first request would wait for a model load"


def _autoscaled(config: dict) -> int:
    """Index of the first deployment entry with an autoscaling_config."""
    return next(i for i, d in enumerate(config["applications"][0]["deployments"]) if "autoscaling_config" in d)


@pytest.mark.parametrize("path, typo", [
    ((), "proxy_locaton"),
    (("http_options",), "request_timeout"),
    (("applications", 0), "import_pth"),
    (("applications", 0, "deployments", "AUTO"), "max_ongoing_request"),
    (("applications", 0, "deployments", "AUTO", "autoscaling_config"), "max_replica"),
])
def test_misspelt_keys_are_rejected(serve_config, path, typo):
    config = copy.deepcopy(serve_config)
    path = tuple(_autoscaled(config) if key == "AUTO" else key for key in path)
    node = config
    for key in path:
        node = node[key]
    node[typo] = 1
    ServeDeploySchema.model_validate(config)  # Ray accepts it: why the strict check exists
    problems = serve_config_problems(config)
    assert len(problems) == 1 and problems[0].startswith(".".join(map(str, (*path, typo)))), problems


def test_misspelt_ray_actor_option_and_app_arg_are_rejected(serve_config):
    config = copy.deepcopy(serve_config)
    config["applications"][0]["deployments"][0]["ray_actor_options"] = {"num_gpu": 1}
    config["applications"][0]["args"]["cache_byte"] = 1
    problems = serve_config_problems(config)
    assert any("ray_actor_options.num_gpu" in p for p in problems), problems
    assert any("args" in p and "cache_byte" in p for p in problems), problems


def test_wrong_types_are_rejected(serve_config):
    config = copy.deepcopy(serve_config)
    i = _autoscaled(config)
    config["applications"][0]["deployments"][i]["autoscaling_config"]["min_replicas"] = "one"
    assert serve_config_problems(config)
    config = copy.deepcopy(serve_config)
    auto = config["applications"][0]["deployments"][i]["autoscaling_config"]
    auto["min_replicas"] = auto["max_replicas"] + 1
    assert any("autoscaling_config" in p for p in serve_config_problems(config))  # min > max


def _envs(app) -> dict[str, dict]:
    from ray.serve._private.build_app import build_app as build_serve_app

    built = build_serve_app(app, name="sam2")
    return {d.name: ((d.ray_actor_options or {}).get("runtime_env") or {}).get("env_vars", {}) for d in built.deployments}


def test_model_replicas_keep_activations_in_the_heap_and_io_replicas_mmap_large_buffers():
    from sam2_serve.deployments.app import bind_app

    envs = _envs(bind_app({"device": "cpu"}))
    for name in ("ImageEncoder", "MaskDecoder", "VideoTracker"):
        assert envs[name]["MALLOC_MMAP_MAX_"] == "0" and int(envs[name]["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 32, name
        assert "MALLOC_MMAP_THRESHOLD_" not in envs[name], f"{name} would page-fault every large activation afresh"
        # one arena: a thread's own arena maps its 64 MiB heaps afresh whenever they empty
        assert envs[name]["MALLOC_ARENA_MAX"] == "1"
    for name in ("SAM2Ingress", "EmbeddingCache"):
        assert envs[name]["MALLOC_MMAP_THRESHOLD_"] == str(1 << 20) and "MALLOC_MMAP_MAX_" not in envs[name], name
        assert envs[name]["MALLOC_ARENA_MAX"] == "2"
    # a user's replica_env wins over the defaults of either kind
    envs = _envs(bind_app({"device": "cpu", "replica_env": {"MALLOC_MMAP_MAX_": "65536", "X": "1"}}))
    assert envs["MaskDecoder"]["MALLOC_MMAP_MAX_"] == "65536" and envs["SAM2Ingress"]["X"] == "1"
    assert envs["MaskDecoder"]["MALLOC_ARENA_MAX"] == "1" and envs["MaskDecoder"]["X"] == "1"


def test_logs_json_and_health_checks_come_from_the_args():
    from ray.serve._private.build_app import build_app as build_serve_app

    from sam2_serve.deployments.app import ModelPlacement, _options, bind_app

    deps = {d.name: d for d in build_serve_app(bind_app({"device": "cpu", "encoder": {"stuck_after_s": 5},
                                                         "tracker": {"stuck_after_s": None}}), name="sam2").deployments}
    assert {name: d.logging_config["encoding"] for name, d in deps.items()} == dict.fromkeys(deps, "JSON")
    assert deps["ImageEncoder"].init_kwargs["stuck_after_s"] == 5 and deps["MaskDecoder"].init_kwargs[
        "stuck_after_s"] == 300 and deps["VideoTracker"].init_kwargs["stuck_after_s"] is None
    text = build_serve_app(bind_app({"device": "cpu", "logging": {"encoding": "TEXT", "log_level": "DEBUG"}}),
                           name="sam2").deployments
    assert {(d.logging_config["encoding"], d.logging_config["log_level"]) for d in text} == {("TEXT", "DEBUG")}
    options = _options(ModelPlacement(health_check_period_s=2, health_check_timeout_s=7), gpu=False)
    assert (options["health_check_period_s"], options["health_check_timeout_s"]) == (2, 7)


def test_serve_config_logs_json(serve_config):
    assert serve_config["applications"][0]["args"]["logging"]["encoding"] == "JSON"
