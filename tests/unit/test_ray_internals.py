"""``sam2_serve.deployments.ray_internals`` against the installed Ray: each private touch must still be there.

These fail, naming the touch, when Ray is upgraded past the pin without reviewing that module; the integration
tests exercise the same touches for real (request ids in error bodies, session routing).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import inspect

from sam2_serve.deployments import ray_internals


def test_installed_ray_is_the_pinned_one():
    installed = importlib.metadata.version("ray")
    assert installed == ray_internals.RAY_PIN, (
        f"Ray {installed} is installed, sam2_serve.deployments.ray_internals is written for Ray "
        f"{ray_internals.RAY_PIN}: review every touch listed in its docstring, then move RAY_PIN and pyproject's pin")


def test_request_context_has_a_request_id():
    from ray.serve import context

    assert callable(getattr(context, "_get_serve_request_context", None)), \
        "request_id(): ray.serve.context._get_serve_request_context is gone"
    fields = {f.name for f in dataclasses.fields(context._RequestContext)}
    assert "request_id" in fields, "request_id(): Serve's request context has no request_id field"
    assert ray_internals.request_id() is None  # outside a request


def test_pending_request_metadata_has_a_session_id():
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    params = inspect.signature(PendingRequest).parameters
    assert "metadata" in params, "session_id_of(): PendingRequest has no metadata"
    metadata = RequestMetadata(request_id="r", internal_request_id="i", session_id="replica.token")

    async def make():  # PendingRequest makes an asyncio.Future: in a loop, as the router does
        return PendingRequest(args=[], kwargs={}, metadata=metadata)

    request = asyncio.run(make())
    assert ray_internals.session_id_of(request) == "replica.token"
    assert ray_internals.session_id_of(None) == ""


def test_replica_ids_have_a_unique_id():
    from ray.serve.request_router import ReplicaID, RunningReplica

    assert "unique_id" in {f.name for f in dataclasses.fields(ReplicaID)}, "ReplicaID.unique_id is gone"
    assert isinstance(inspect.getattr_static(RunningReplica, "replica_id"), property), \
        "replica_tag_of(): RunningReplica.replica_id is gone"
    assert ray_internals.replica_tag() is None  # outside a replica


def test_quiet_idle_env_is_read_by_serve():
    """The installed Serve still reads each variable of QUIET_IDLE_ENV, as the number it is given."""
    import os
    import subprocess
    import sys

    code = ("from ray.serve._private import constants as c; "
            "print(c.CONTROL_LOOP_INTERVAL_S, c.RAY_SERVE_METRICS_EXPORT_INTERVAL_MS)")
    env = {**os.environ, **ray_internals.QUIET_IDLE_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    loop_s, export_ms = out.split()
    assert float(loop_s) == float(ray_internals.QUIET_IDLE_ENV["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]), out
    assert int(export_ms) == int(ray_internals.QUIET_IDLE_ENV["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"]), out
