"""A model replica whose torch thread is stuck fails Serve's health check and is replaced, while the deployment's
other replica keeps answering.

``sam2-health`` (route prefix ``/wedge``) runs in the session's Serve instance next to the shared app, as
test_faults' app does, and is deleted at the end. Its two ImageEncoder replicas have a tiny ``stuck_after_s`` and a
1 s health-check period, so one real encode (a tiny-model forward pass on one CPU thread takes several seconds)
outlasts the bound on the replica that runs it: its ``check_health`` fails (``TorchThread.check_health``), three
times in a row, and Serve stops it and starts another. Everything else is small: one replica each, few CPUs.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.integration

APP, PREFIX = "sam2-health", "/wedge"
STUCK_AFTER_S = 0.5
REPLACED_BOUND_S = 300  # replicas load a model on a shared 2-core machine; the figure is printed


def encoder_replicas() -> set[str]:
    """Unique ids of the live ImageEncoder replica actors of this app."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#ImageEncoder#"
    return {a["name"][len(prefix):] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)}


@pytest.fixture(scope="module")
def wedge_app(serve_app, tiny_checkpoint):
    """Base URL of the app, deployed for this module and deleted after it."""
    from ray import serve

    from sam2_serve.deployments.app import build_app

    small = {"num_cpus": 0.05, "num_replicas": 1}
    args = {"model": "sam2.1-hiera-tiny", "checkpoint": str(tiny_checkpoint), "device": "cpu", "cache_bytes": 64 << 20,
            # One torch thread: an encode takes several seconds, well past the bound and 3 health checks.
            "encoder": {"num_cpus": 0.05, "num_replicas": 2, "torch_threads": 1, "stuck_after_s": STUCK_AFTER_S,
                        "health_check_period_s": 1, "health_check_timeout_s": 10},
            "decoder": small, "ingress": small,
            "tracker": {**small, "hydra_overrides": ["++model.image_size=256"], "max_sessions": 1}}
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_app[0] + PREFIX
    serve.delete(APP)


def _image_b64(seed: int) -> str:
    """A small image of its own (not in the cache: it is encoded)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 128, 3), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _replica_log(replica: str) -> list[dict]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [json.loads(line) for path in logs.glob(f"replica_{APP}_ImageEncoder_{replica}.log")
            for line in path.read_text(errors="replace").splitlines() if line.strip()]


def test_a_stuck_encoder_is_replaced_while_the_other_keeps_answering(wedge_app, http):
    """Serve marks a replica unhealthy after 3 failed checks in a row. On a starved machine its controller may not
    get 3 checks done while one encode runs (seen: one check in an 18 s encode at load 27 on 2 cores); the encode
    then ends, the replica is healthy again, and the test wedges one more (a new image) until one is replaced."""
    from ray import serve
    from ray.serve._private.common import DeploymentStatus

    before = encoder_replicas()
    assert len(before) == 2, before
    status = serve.status().applications[APP].deployments["ImageEncoder"]
    assert status.status == DeploymentStatus.HEALTHY, status
    answers, seen, wedges = [], [], []
    with ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        while True:
            now = encoder_replicas()
            settled = status.status == DeploymentStatus.HEALTHY and status.replica_states == {"RUNNING": 2}
            if settled and not before - now and (not wedges or wedges[-1].done()):
                # The wedge: a real encode on one replica, longer than stuck_after_s.
                wedges.append(pool.submit(requests.post, f"{wedge_app}/v1/embed", timeout=300,
                                          json={"image": {"base64": _image_b64(len(wedges))}}))
            elif settled and before - now and wedges[-1].done() and len(now) == 2:
                break
            # Other requests, served throughout: /v1/models is answered by an ImageEncoder replica (info()).
            answers.append(http.get(f"{wedge_app}/v1/models", timeout=60).status_code)
            answers.append(http.get(f"{wedge_app}/healthz", timeout=60).status_code)
            status = serve.status().applications[APP].deployments["ImageEncoder"]
            if status.status != DeploymentStatus.HEALTHY:
                seen.append((status.status, status.message, dict(status.replica_states)))
            assert time.monotonic() - start < REPLACED_BOUND_S, (
                f"not replaced after {REPLACED_BOUND_S} s and {len(wedges)} wedged encodes: replicas {before} -> "
                f"{now}, {status}")
            time.sleep(0.3)
    took, results = time.monotonic() - start, [w.result() for w in wedges]
    replaced, added = before - now, now - before
    print(f"\nreplaced {replaced} by {added} in {took:.0f} s after {len(wedges)} wedged encode(s) (answered "
          f"{[r.status_code for r in results]}); {len(answers)} other requests, statuses {sorted(set(answers))}; "
          f"seen while replacing: {[(str(st), states) for st, _, states in seen][:2]}")
    # Stuck replicas only were replaced, each by a new one. Usually that is one; a second wedge sent after the
    # first ended, before Serve acted on the first's failed checks, may land on the other replica and be replaced
    # too (seen once in CI): what matters is that no replica was replaced without being stuck.
    assert replaced and len(replaced) == len(added) and len(now) == 2, (before, now)
    assert len(replaced) <= len(wedges), (replaced, len(wedges))
    assert set(answers) == {200}, answers  # the deployment kept answering throughout
    assert seen and any("health check" in message for _, message, _ in seen), seen
    # Each encode finished (during the graceful stop, for the last one) or was cut off with a retryable 503.
    assert all(r.status_code in (200, 503) for r in results), [r.text for r in results]
    # Each replaced replica said why, in its (JSON) log: it was stuck.
    for gone in replaced:
        reasons = [x["message"] for x in _replica_log(gone) if "health check failed" in x["message"]]
        assert reasons and f"more than stuck_after_s={STUCK_AFTER_S:g} s" in reasons[0], (gone, reasons)
    assert http.get(f"{wedge_app}/v1/models", timeout=60).status_code == 200
