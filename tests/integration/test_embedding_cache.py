"""A click on an image seen before costs a decoder pass, not an encoder pass, on whichever ingress replica."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def encoder_images(deployment_handle) -> int:
    return deployment_handle("ImageEncoder").stats.remote().result(timeout_s=60)["images_encoded"]


@pytest.fixture(scope="module")
def fresh_image() -> bytes:
    """An image no other test sends (so the first request must encode)."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_cached_clicks_skip_the_encoder(base_url, http, deployment_handle, fresh_image):
    body = {"image": {"base64": base64.b64encode(fresh_image).decode()}, "regions": [{"point": [0.5, 0.5]}]}
    before = encoder_images(deployment_handle)
    first = http.post(f"{base_url}/v1/predict", json=body, timeout=120)
    assert first.status_code == 200, first.text
    assert encoder_images(deployment_handle) == before + 1
    image_id = first.json()["image_id"]
    # Same bytes again, the image_id form, other prompts: two ingress replicas serve these (test app), and none
    # of them runs the encoder.
    for i in range(6):
        again = http.post(f"{base_url}/v1/predict", json=body, timeout=120)
        by_id = http.post(f"{base_url}/v1/predict", timeout=120, json={
            "image": {"image_id": image_id}, "regions": [{"point": [0.1 + 0.1 * i, 0.3]}]})
        assert again.status_code == 200 and by_id.status_code == 200, (again.text, by_id.text)
        assert again.json()["image_id"] == by_id.json()["image_id"] == image_id
    assert encoder_images(deployment_handle) == before + 1


def test_embed_then_predict_by_id(base_url, http, deployment_handle):
    rng = np.random.default_rng(11)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(buf, format="JPEG")
    before = encoder_images(deployment_handle)
    r = http.post(f"{base_url}/v1/embed", files={"image": ("x.jpg", buf.getvalue())}, timeout=120)
    assert r.status_code == 200, r.text
    emb = r.json()
    assert (emb["width"], emb["height"]) == (80, 64)
    r = http.post(f"{base_url}/v1/predict", timeout=120,
                  json={"image": {"image_id": emb["image_id"]}, "dict_inputs": {"box": [0.1, 0.1, 0.9, 0.9]}})
    assert r.status_code == 200, r.text
    assert encoder_images(deployment_handle) == before + 1


def test_concurrent_first_requests_encode_once(handle, deployment_handle):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    before = encoder_images(deployment_handle)
    responses = [handle.predict.remote(image=image, regions=[{"point": [0.5, 0.5]}]) for _ in range(4)]
    results = [r.result(timeout_s=120) for r in responses]
    assert len({r.image_id for r in results}) == 1
    # Two ingress replicas may each start one encode before the cache has it; never one per request.
    assert encoder_images(deployment_handle) - before <= 2


def test_models_endpoint(base_url, http, tiny_checkpoint):
    import hashlib

    r = http.get(f"{base_url}/v1/models", timeout=60)
    assert r.status_code == 200
    [info] = r.json()
    # encoder_backend: openvino in the shared app's args, so every integration test encodes through it.
    assert info == {"name": "sam2.1-hiera-tiny", "device": "cpu", "dtype": "float32", "image_size": 1024,
                    "checkpoint_sha256": hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest(),
                    "encoder_backend": "openvino"}


def test_openapi_documents_the_api(base_url, http):
    spec = http.get(f"{base_url}/openapi.json", timeout=60).json()
    assert "/v1/predict" in spec["paths"] and "/v1/embed" in spec["paths"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/PredictRequest"
    assert "RegionPrompt" in spec["components"]["schemas"]
    assert http.get(f"{base_url}/docs", timeout=60).status_code == 200


def test_a_click_on_an_evicted_image_is_a_404_even_right_after_use(base_url, http, deployment_handle):
    """Ingress replicas keep references to their last few embeddings and decode on them while the shared cache
    confirms; the cache stays the authority: once it dropped the image, a click by id is the usual 404."""
    rng = np.random.default_rng(23)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 72, 3), dtype=np.uint8)).save(buf, format="PNG")
    image = {"base64": base64.b64encode(buf.getvalue()).decode()}
    image_id = http.post(f"{base_url}/v1/embed", json={"image": image}, timeout=120).json()["image_id"]
    click = {"image": {"image_id": image_id}, "regions": [{"point": [0.5, 0.5]}]}
    # several clicks, so that every ingress replica of the test app has used the embedding
    masks = [http.post(f"{base_url}/v1/predict", json=click, timeout=120) for _ in range(6)]
    assert all(r.status_code == 200 for r in masks), [r.text for r in masks]
    assert len({r.json()["regions"][0]["mask"]["png"] for r in masks}) == 1
    deployment_handle("EmbeddingCache").discard.remote(image_id).result(timeout_s=30)
    for _ in range(4):
        r = http.post(f"{base_url}/v1/predict", json=click, timeout=120)
        assert r.status_code == 404 and "send the image again" in r.json()["error"]["message"], r.text
    again = http.post(f"{base_url}/v1/predict", json={"image": image, "regions": click["regions"]}, timeout=120)
    assert again.status_code == 200 and again.json()["regions"] == masks[0].json()["regions"]
    assert http.post(f"{base_url}/v1/predict", json=click, timeout=120).status_code == 200
