"""The API key on Kubernetes: a Secret (k8s/base/secret.yaml), in every Ray container's environment, required by
the application the manifests run (``auth.required`` in the generated serveConfigV2), and a placeholder that
fails closed. The manifests themselves are validated in test_k8s.py (the Secret too)."""

from __future__ import annotations

import pytest

from tests.unit.test_k8s import (K8S, KUSTOMIZATIONS, _id, _pod_templates, _rayservice, _serve_v2,  # noqa: F401
                                 built, render)  # built: the rendered kustomizations (fixture)


def _secret() -> dict:
    (secret,) = render.load_docs(K8S / "base" / "secret.yaml")
    assert secret["kind"] == "Secret"
    return secret


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_api_key_secret_reaches_every_ray_container(directory, built):
    from sam2_serve.common.auth import DEFAULT_KEY_ENV

    secret = _secret()
    rs = _rayservice(built[_id(directory)])
    (app,) = _serve_v2(rs)["applications"]
    auth = app["args"]["auth"]
    assert auth["required"] is True, "production must fail closed without a key"
    assert auth.get("api_key_env", DEFAULT_KEY_ENV) == DEFAULT_KEY_ENV == render.API_KEY_ENV
    for template in _pod_templates(rs):  # head and workers: an ingress replica may run on either
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env[DEFAULT_KEY_ENV]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], ref
            assert not ref.get("optional"), "a missing Secret must stop the pod, not open the API"
    # `kubectl apply -k` must never put the placeholder back over the real key.
    assert all(o["kind"] != "Secret" for o in built[_id(directory)])


def test_placeholder_secret_fails_closed():
    """Applied unchanged, the placeholder stops the ingress with a message instead of serving behind a key that
    is public in this repository; the comment says how to create the real one."""
    from sam2_serve.common.auth import DEFAULT_KEY_ENV, ApiKeys

    secret = _secret()
    (placeholder,) = secret["stringData"].values()
    with pytest.raises(ValueError, match="use at least"):
        ApiKeys.load({"required": True}, environ={DEFAULT_KEY_ENV: placeholder})
    text = (K8S / "base" / "secret.yaml").read_text()
    assert f"kubectl create secret generic {secret['metadata']['name']} --from-literal=" in text
    with pytest.raises(ValueError, match="no API key was found"):  # and without the variable at all
        ApiKeys.load({"required": True}, environ={})
