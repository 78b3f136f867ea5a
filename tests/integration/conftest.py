"""One Ray cluster and one Serve application for the whole test session, on 127.0.0.1.

Starting Ray and Serve costs ~10-15 s and each replica loads a model, so every integration test shares them.
The application is the real one (``sam2_serve.deployments.app:build_app``) with a test-written tiny checkpoint on CPU.
"""

from __future__ import annotations

import pytest
import requests

from sam2_serve.testing import free_port

APP_NAME = "sam2"


def app_args(checkpoint) -> dict:
    """build_app args of the shared test application (extend here when a deployment needs test settings)."""
    return {"model": "sam2.1-hiera-tiny", "checkpoint": str(checkpoint), "device": "cpu",
            "cache_bytes": 256 << 20,
            "limits": {"max_body_bytes": 16 << 20, "max_image_pixels": 5_000_000, "max_points": 16},
            # Two ingress replicas: a cached embedding must serve a click whichever replica takes it.
            "ingress": {"num_cpus": 0.1, "num_replicas": 2},
            # Batching on the CPU too, so that tests see concurrent images share forward passes.
            "encoder": {"cpu_max_batch_size": 4},
            # OpenVINO whatever its speed here (auto races it against torch): every served encoding is the fast
            # path's, so the equivalence tests check it against upstream.
            "encoder_backend": "openvino",
            # Two tracker replicas (session routing); 256-pixel input so a frame takes ~0.25 s; few sessions each.
            "tracker": {"num_cpus": 0.5, "num_replicas": 2, "hydra_overrides": ["++model.image_size=256"],
                        "max_sessions": 3, "session_ttl_s": 300}}


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # 4 logical CPUs on a 2-core machine: replicas take fractional shares; torch threads are set separately.
    # Ray's Prometheus endpoint on a free port (ray.nodes()[i]["MetricsExportPort"]): test_observability scrapes it.
    ray.init(num_cpus=4, include_dashboard=False, namespace="sam2-serve-tests", _metrics_export_port=free_port(),
             runtime_env={"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_app(ray_cluster, tiny_checkpoint):
    """(base_url, app handle) of the shared application."""
    from ray import serve

    from sam2_serve.deployments.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(build_app(app_args(tiny_checkpoint)), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}", handle
    serve.shutdown()


@pytest.fixture(scope="session")
def base_url(serve_app) -> str:
    return serve_app[0]


@pytest.fixture(scope="session")
def handle(serve_app):
    return serve_app[1]


@pytest.fixture
def http() -> requests.Session:
    with requests.Session() as s:
        yield s


@pytest.fixture
def deployment_handle(serve_app):
    """Handle to one deployment of the shared app, e.g. ``deployment_handle("ImageEncoder")``."""
    from ray import serve

    return lambda name: serve.get_deployment_handle(name, app_name=APP_NAME)


def assert_healthy(base_url: str) -> None:
    r = requests.get(f"{base_url}/healthz", timeout=30)
    assert r.status_code == 200, r.text
