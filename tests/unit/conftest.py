"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def ingress_app():
    """The FastAPI app an ingress replica builds, over a local ``SAM2Ingress`` (no Ray: no handle is reached).

    ``ingress_app(**SAM2Ingress kwargs, root_path=...)`` -> a ``TestClient`` of it.
    """
    from sam2_serve.deployments.ingress import SAM2Ingress
    from sam2_serve.http.routes import build_http_app

    def make(root_path: str = "", **kwargs):
        # No model work is reached in these tests: every request is refused or invalid before a handle is used.
        app = build_http_app(SAM2Ingress(encoder=None, decoder=None, cache=None, **kwargs))
        return TestClient(app, root_path=root_path)

    return make
