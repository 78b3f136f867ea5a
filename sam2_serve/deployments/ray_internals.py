"""Every touch of Ray Serve internals that are not public API, in one place (Ray ``RAY_PIN``, as pyproject pins it).

Serve offers no public way to read these; each is one attribute read, kept here so that an upgrade of Ray has one
file to review. ``tests/unit/test_ray_internals.py`` fails, naming the touch, when the installed Ray differs from the
pin or one of them is no longer there.

* ``request_id()``: the id Serve gives each request (``x-request-id`` of the response), for log lines and error
  bodies: ``ray.serve.context._get_serve_request_context()``.
* ``session_id_of(pending_request)``: the ``session_id`` a caller set with ``handle.options(session_id=...)``, as a
  request router sees it: ``PendingRequest.metadata.session_id`` (``PendingRequest`` is public, its metadata type
  ``RequestMetadata`` is not).
* ``replica_tag()`` / ``replica_tag_of(replica)``: a replica's unique id, from the replica itself
  (``get_replica_context().replica_id``) and from a router's ``RunningReplica`` (``.replica_id``); both
  ``ReplicaID.unique_id``.
* ``QUIET_IDLE_ENV``: two of Serve's internal intervals, environment variables read in each Ray process when it
  imports ``ray.serve._private.constants``; ``sam2-serve serve`` sets them (where unset) for the Ray instance it starts.
"""

from __future__ import annotations

from typing import Optional

RAY_PIN = "2.60.0"

#: Serve's controller runs its control loop every 0.1 s and each router (in the proxy and in every replica holding a
#: handle) exports its cached metrics every 0.1 s: together about 0.03 of a core on 2 cores with nobody calling
#: (``bench/idle.py``: 0.108 -> 0.077 cores for the whole Ray instance). Every 0.5 s and 1 s instead: a dead replica
#: or a new version is acted on up to 0.4 s later, and a router's gauges (queued requests) reach Prometheus, which
#: scrapes every 10 s or more, 0.9 s later. Requests are routed as before (replica sets are pushed to routers).
QUIET_IDLE_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}


def request_id() -> Optional[str]:
    """The current request's id inside a replica; None outside a request (or outside Ray)."""
    try:
        from ray.serve import context

        return context._get_serve_request_context().request_id or None
    except Exception:
        return None


def session_id_of(pending_request) -> str:
    """The session id a handle call was made with (``""`` when none), as a request router sees the request."""
    return pending_request.metadata.session_id if pending_request is not None else ""


def replica_tag() -> Optional[str]:
    """This replica's unique id; None when the class runs outside a Serve replica (unit tests)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return None


def replica_tag_of(replica) -> str:
    """The unique id of a ``ray.serve.request_router.RunningReplica``."""
    return replica.replica_id.unique_id
