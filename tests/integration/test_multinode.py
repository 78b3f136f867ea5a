"""The RayService's Serve config on a real multi-node Ray cluster: a CPU head and a worker offering a (logical) GPU.

The config is the one KubeRay would deploy (``serveConfigV2`` of ``k8s/overlays/single-gpu``), scaled down to
this machine: the tiny model with a test-written checkpoint, ``device: auto`` (the cluster has a GPU but torch
sees none, so replicas take GPU shares and run on the CPU), one proxy on the head (both nodes share this host's
ports). It is deployed the way the KubeRay operator deploys it (the dashboard's ``PUT /api/serve/applications``
calls ``serve_start`` + ``deploy_apps`` with the parsed config), from a driver process of its own; the test then
checks placement, HTTP, and a handle call from another driver connected with ``ray.init(address=...)``.

Every Ray-connected step runs in a subprocess driver, so this test never touches the session's shared Ray
instance (tests/integration/conftest.py) whatever order tests run in.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from sam2_serve.testing import free_port
from tests.integration.conftest import app_args
from tests.strict_serve import serve_config_problems

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "k8s" / "overlays" / "single-gpu"
API_KEY = "multinode-test-key-" + "0" * 24

_spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render_k8s.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

DEPLOY = r"""
import json, sys, time
import ray
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

ray.init(address=sys.argv[1], logging_level="ERROR")
config = ServeDeploySchema.model_validate(json.loads(sys.argv[2]))
client = serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location,
                     grpc_options=config.grpc_options.model_dump())
client.deploy_apps(config)
deadline = time.time() + 300
while time.time() < deadline:
    app = serve.status().applications.get("sam2")
    if app is not None and app.status in ("RUNNING", "DEPLOY_FAILED"):
        break
    time.sleep(1)
client.wait_for_proxies_serving(wait_for_applications_running=True)
details = client.get_serve_details()
replicas = {name: [r["node_id"] for r in dep["replicas"]]
            for name, dep in details["applications"]["sam2"]["deployments"].items()}
from ray._private.state import available_resources_per_node
print(json.dumps({"status": app.status if app else None, "message": app.message if app else "",
                  "replicas": replicas, "available": available_resources_per_node()}))
"""

PREDICT = r"""
import json, sys
import numpy as np
import ray
from ray import serve

ray.init(address=sys.argv[1], logging_level="ERROR")
image = open(sys.argv[2], "rb").read()
result = serve.get_app_handle("sam2").predict.remote(image=image, regions=[{"point": [0.5, 0.5]}]).result(
    timeout_s=300)
mask = result.regions[0].mask
print(json.dumps({"image_id": result.image_id, "width": result.width, "height": result.height,
                  "regions": len(result.regions), "shape": list(mask.shape), "dtype": str(mask.dtype),
                  "area": float(np.mean(mask))}))
"""


def _driver(code: str, *args: str, timeout: float = 420) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_SERVE_LOG_TO_STDERR="0")
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"driver failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def scaled_down(serve_v2: dict, checkpoint: Path, port: int) -> dict:
    """The production config, with this machine's model, checkpoint, ports and threads; GPU shares unchanged."""
    config = copy.deepcopy(serve_v2)
    config["proxy_location"] = "HeadOnly"  # one proxy: the nodes share 127.0.0.1
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    production = app["args"]
    args = _deep_merge(production, app_args(checkpoint))  # tiny model, checkpoint, test settings
    args["device"] = "auto"  # the cluster has GPUs, torch has none: GPU shares, CPU compute
    for key, placement in args.items():
        if isinstance(placement, dict) and "num_cpus" in placement:
            for share in ("num_cpus", "num_gpus"):
                if share in production.get(key, {}):
                    placement[share] = production[key][share]
            if "torch_threads" in _placement_fields(key):
                placement["torch_threads"] = 1  # two cores for the whole cluster
    app["args"] = args
    # In the cluster the key comes from the Secret (k8s/base/secret.yaml) as this environment variable.
    assert args["auth"]["required"], "production must refuse to start without a key"
    env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
    env[args["auth"]["api_key_env"]] = API_KEY
    return config


def _placement_fields(key: str) -> set[str]:
    from sam2_serve.deployments.app import AppArgs

    annotation = AppArgs.model_fields[key].annotation
    return set(getattr(annotation, "model_fields", {}))


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    mb = 1 << 20
    c = Cluster(initialize_head=True, connect=False, shutdown_at_exit=False, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "gcs_server_port": free_port(), "include_dashboard": False,
        "dashboard_agent_listen_port": free_port(),
        "object_store_memory": 100 * mb})
    try:
        gpu_node = c.add_node(num_cpus=3, num_gpus=1, object_store_memory=300 * mb)
        c.wait_for_nodes()
        yield c, gpu_node
    finally:
        # Not Cluster.shutdown(): it also resets this process's GCS client, which would cut off the session's
        # shared Ray instance if this process is connected to one.
        for node in list(c.worker_nodes):
            c.remove_node(node)
        if c.head_node is not None:
            c.remove_node(c.head_node)
        from ray._common.utils import reset_ray_address

        reset_ray_address()


def test_rayservice_config_on_a_multinode_cluster(cluster, tiny_checkpoint, groceries_path):
    c, gpu_node = cluster
    serve_v2 = yaml.safe_load(render._rayservice(render.kustomize_build(OVERLAY))["spec"]["serveConfigV2"])
    port = free_port()
    config = scaled_down(serve_v2, tiny_checkpoint, port)
    assert serve_config_problems(config) == []
    (app,) = config["applications"]
    shares = render.gpu_shares(app)
    assert shares, "the production layout asks for no GPU"

    deployed = _driver(DEPLOY, c.address, json.dumps(config))
    assert deployed["status"] == "RUNNING", deployed["message"]

    # Every replica of every GPU deployment is on the GPU node, and holds its GPU share there.
    for name in shares:
        assert deployed["replicas"][name], f"{name} has no replica"
        assert set(deployed["replicas"][name]) == {gpu_node.node_id}, f"{name} replicas off the GPU node"
    deps = {d["name"]: d for d in app["deployments"]}
    held = sum(share * len(deployed["replicas"][name]) for name, share in shares.items())
    assert held == pytest.approx(sum(share * render.replica_range(deps[name])[0] for name, share in shares.items()))
    assert deployed["available"][gpu_node.node_id].get("GPU", 0.0) == pytest.approx(1.0 - held)
    assert set(deployed["replicas"]) >= {d["name"] for d in app["deployments"]}

    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert requests.get(f"{base}/v1/models", timeout=60).status_code == 401  # auth.required is in force
    models = requests.get(f"{base}/v1/models", headers=auth, timeout=60)
    assert models.status_code == 200, models.text
    assert models.json()[0]["device"] == "cpu"  # torch fell back: the GPU is only logical

    image = groceries_path.read_bytes()
    body = {"image": {"base64": base64.b64encode(image).decode()}, "regions": [{"point": [0.5, 0.5]}]}
    r = requests.post(f"{base}/v1/predict", json=body, headers=auth, timeout=300)
    assert r.status_code == 200, r.text
    http = r.json()
    assert (http["width"], http["height"]) == (800, 534) and len(http["regions"]) == 1
    assert http["regions"][0]["mask"]["png"]

    # A second driver, connected to the cluster by address, reaches the application by name.
    via_handle = _driver(PREDICT, c.address, str(groceries_path))
    assert via_handle["image_id"] == http["image_id"]  # same image, same id (its embedding is cached)
    assert via_handle["regions"] == 1 and via_handle["shape"] == [534, 800] and via_handle["dtype"] == "bool"
    assert 0.0 < via_handle["area"] < 1.0
