"""API-key authentication and the guarded routes of the ingress, without Ray.

``sam2_serve.common.auth`` (where keys come from, how they are compared, failing closed) and ``_GuardedRoute`` (key check
before the body is read, /healthz open, request timeout, Ray failures mapped to retryable 503s) on the real
FastAPI app of the ingress, served in-process by Starlette's TestClient. The same over real HTTP, on a deployed
application, is in tests/integration/test_faults.py.
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sam2_serve.common.auth import MIN_KEY_LENGTH, ApiKeys, AuthConfig
from sam2_serve.common.errors import Unauthorized

KEY = "k3y-" + "a" * 28
OTHER = "other-" + "b" * 26


def _keys(**cfg) -> ApiKeys:
    return ApiKeys.load(AuthConfig(**cfg), environ={})


def test_no_key_configured_leaves_the_api_open():
    keys = _keys()
    assert not keys.enabled
    keys.check(None)  # no exception


def test_keys_from_env_and_file_rotation(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2025-01\n{KEY}\n\n  {OTHER}  \n")
    keys = ApiKeys.load(AuthConfig(api_key_env="MY_KEYS", api_key_file=str(path)),
                        environ={"MY_KEYS": f" {'c' * 20} , {'d' * 20}"})
    assert len(keys) == 4
    for key in (KEY, OTHER, "c" * 20, "d" * 20):
        keys.check(f"Bearer {key}")
        keys.check(f"bearer   {key}  ")  # scheme is case-insensitive, whitespace tolerated


@pytest.mark.parametrize("header, needle", [
    (None, "Authorization: Bearer"),
    ("", "Authorization: Bearer"),
    (f"Basic {KEY}", "must be 'Bearer <key>'"),
    ("Bearer", "must be 'Bearer <key>'"),
    ("Bearer " + KEY[:-1], "not valid"),
    ("Bearer " + KEY + "x", "not valid"),
    ("Bearer " + OTHER, "not valid"),
    (KEY, "must be 'Bearer <key>'"),
])
def test_missing_or_wrong_key_is_401(header, needle):
    keys = ApiKeys([KEY])
    with pytest.raises(Unauthorized) as info:
        keys.check(header)
    assert info.value.status == 401 and needle in info.value.message
    assert KEY not in info.value.message
    assert info.value.headers()["WWW-Authenticate"].startswith("Bearer")


def test_keys_are_kept_as_digests_and_compared_in_constant_time(monkeypatch):
    import hmac

    keys = ApiKeys([KEY, OTHER])
    assert KEY not in repr(vars(keys)) and OTHER not in repr(vars(keys))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    keys.check("Bearer " + KEY)  # matches the first key: the second is compared all the same
    assert calls == [(32, 32), (32, 32)]


@pytest.mark.parametrize("case", ["missing file", "empty file", "short key", "required without key"])
def test_misconfiguration_fails_closed(case, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# no key here\n\n")
    cfg, env, needle = {
        "missing file": ({"api_key_file": str(tmp_path / "nope")}, {}, "cannot be read"),
        "empty file": ({"api_key_file": str(empty)}, {}, "holds no key"),
        "short key": ({"api_key_env": "K"}, {"K": "short"}, f"at least {MIN_KEY_LENGTH}"),
        "required without key": ({"required": True}, {}, "no API key was found"),
    }[case]
    with pytest.raises(ValueError, match=needle):
        ApiKeys.load(AuthConfig(**cfg), environ=env)


def test_unknown_auth_option_is_rejected():
    with pytest.raises(ValueError, match="api_key"):
        AuthConfig.model_validate({"api_key": KEY})


# ---- the ingress's own FastAPI app, in process --------------------------------------------------------------------


# ``ingress_app``: tests/unit/conftest.py


def test_ingress_with_key_missing_wrong_right(ingress_app, tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    client = ingress_app(auth={"api_key_env": None, "api_key_file": str(tmp_path / "key")})
    body = {"image": {"image_id": "0123"}, "regions": [{"point": [0.5, 0.5]}], "nonsense": 1}
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": f"Basic {KEY}"}):
        r = client.post("/v1/predict", json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "nonsense" in r.json()["error"]["message"]  # past auth, into validation
    assert client.get("/healthz").status_code == 200  # open without a key
    for path in ("/v1/models", "/v1/sessions/abc"):
        assert client.get(path).status_code == 401


def test_ingress_from_environment(ingress_app, monkeypatch):
    monkeypatch.setenv("SAM2_SERVE_API_KEY", f"{KEY},{OTHER}")
    client = ingress_app()  # default config: the SAM2_SERVE_API_KEY variable
    assert client.post("/v1/embed", json={}).status_code == 401
    for key in (KEY, OTHER):
        assert client.post("/v1/embed", json={}, headers={"Authorization": f"Bearer {key}"}).status_code == 400


def test_ingress_refuses_to_start_misconfigured(ingress_app, tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        ingress_app(auth={"api_key_file": str(tmp_path / "missing")})


# ---- timeouts and Ray failures, through a guarded route -------------------------------------------------------------


def _guarded_app(exc: BaseException | None = None, sleep_s: float = 0.0, timeout_s: float | None = None):
    """A FastAPI app whose one route uses the ingress's route class and error handlers."""
    from types import SimpleNamespace

    from sam2_serve.deployments.metrics import RequestMetrics
    from sam2_serve.http.guard import GuardedRoute, install_error_handlers

    app = FastAPI()
    app.router.route_class = GuardedRoute
    install_error_handlers(app)
    # The settings GuardedRoute reads of the ingress it guards, and where it counts requests.
    app.state.ingress = SimpleNamespace(api_keys=ApiKeys([]), request_timeout_s=timeout_s, retry_after_s=3)
    app.state.request_metrics = RequestMetrics()

    @app.post("/work")
    async def work():
        await asyncio.sleep(sleep_s)
        if exc is not None:
            raise exc
        return {"ok": True}

    return TestClient(app, raise_server_exceptions=False)


def _ray_failures():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, OutOfMemoryError, OwnerDiedError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    return {
        "backpressure": (BackPressureError(num_queued_requests=8, max_queued_requests=8, retry_after_s=None),
                         503, "overloaded", "3"),
        "backpressure with its own delay": (BackPressureError(num_queued_requests=8, max_queued_requests=8,
                                                              retry_after_s=4.2), 503, "overloaded", "5"),
        "actor died": (ActorDiedError(), 503, "replica_unavailable", "3"),
        "actor unavailable": (ActorUnavailableError("unreachable", None), 503, "replica_unavailable", "3"),
        "replica unavailable": (ReplicaUnavailableError("r1"), 503, "replica_unavailable", "3"),
        "embedding owner died": (OwnerDiedError("ab" * 28, None, ""), 503, "replica_unavailable", "3"),
        "killed for memory": (OutOfMemoryError("2 worker(s) were killed"), 503, "replica_unavailable", "3"),
        "deployment failed": (DeploymentUnavailableError("sam2#ImageEncoder"), 503, "replica_unavailable", "10"),
    }


@pytest.mark.parametrize("name", list(_ray_failures()))
def test_ray_failures_become_retryable_503(name):
    exc, status, code, retry_after = _ray_failures()[name]
    r = _guarded_app(exc).post("/work")
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.headers["retry-after"] == retry_after
    assert "retry" in r.json()["error"]["message"] or "serve status" in r.json()["error"]["message"]


def test_a_bug_stays_a_500_without_internals():
    r = _guarded_app(KeyError("secret internal detail")).post("/work")
    assert r.status_code == 500 and "secret" not in r.text and "retry-after" not in r.headers


def test_request_timeout_is_504():
    r = _guarded_app(sleep_s=5.0, timeout_s=0.2).post("/work")
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "request_timeout" and "request_timeout_s" in r.json()["error"]["message"]
    assert _guarded_app(sleep_s=0.01, timeout_s=5.0).post("/work").json() == {"ok": True}
