"""Every predict input a user can get wrong: a clear 4xx naming what to fix, and the service stays healthy."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import assert_healthy

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(w: int, h: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_image(groceries_path) -> str:
    return b64(groceries_path.read_bytes())


@pytest.fixture(autouse=True)
def still_healthy(base_url):
    yield
    assert_healthy(base_url)


POINT = [{"point": [0.5, 0.5]}]

BAD_JSON = {
    "not an image": ({"image": {"base64": b64(b"hello, I am text")}, "regions": POINT}, 400, "not an image"),
    "truncated image": ("truncated", 400, "complete"),
    "empty image": ({"image": {"base64": ""}, "regions": POINT}, 400, "empty"),
    "invalid base64": ({"image": {"base64": "@@not base64@@"}, "regions": POINT}, 400, "base64"),
    "decompression bomb": ({"image": {"base64": b64(png(20000, 20000, "L"))}, "regions": POINT}, 413, "pixels"),
    "point outside [0, 1]": ("good", {"regions": [{"point": [1.5, 0.5]}]}, 400, "outside"),
    "negative point": ("good", {"regions": [{"point": [0.5, -0.01]}]}, 400, "outside"),
    "box xmax < xmin": ("good", {"regions": [{"box": [0.6, 0.1, 0.2, 0.5]}]}, 400, "xmax >= xmin"),
    "labels and points differ": ("good", {"dict_inputs": {"points": [[0.1, 0.1]], "labels": [1, 1]}}, 400, "labels"),
    "unknown mask_format": ("good", {"regions": POINT, "mask_format": "jpeg"}, 400, "mask_format"),
    "unknown field": ("good", {"regions": POINT, "multimask": True}, 400, "multimask"),
    "wrong type": ("good", {"regions": [{"point": "middle"}]}, 400, "regions.0.point"),
    "wrong type of flag": ("good", {"regions": POINT, "multimask_output": "perhaps"}, 400, "multimask_output"),
    "too many points": ("good", {"regions": [{"point": [0.5, 0.5]}] * 17}, 422, "limit is 16"),
    "both prompt forms": ("good", {"regions": POINT, "dict_inputs": {"points": [[0.1, 0.1]], "labels": [1]}},
                          400, "not both"),
    "no prompts": ("good", {"regions": []}, 400, "no prompts"),
    "name and value disagree": ("good", {"regions": [{"point": [0.5, 0.5], "concepts": [{"name": "0", "value": 1}]}]},
                                400, "disagree"),
    "boxes and points without track_id": ("good", {"regions": [{"box": [0, 0, 0.5, 0.5]}, {"box": [0.5, 0.5, 1, 1]},
                                                               {"point": [0.2, 0.2]}]}, 400, "track_id"),
    "unknown image_id": ({"image": {"image_id": "0123456789abcdef"}, "regions": POINT}, 404, "send the image again"),
    "no image": ({"regions": POINT}, 400, "image"),
    "both image forms": ({"image": {"base64": "aGk=", "image_id": "x"}, "regions": POINT}, 400, "exactly one"),
}


@pytest.mark.parametrize("name", list(BAD_JSON))
def test_bad_json_requests(name, base_url, http, good_image, groceries_path):
    spec = BAD_JSON[name]
    if spec[0] == "good":
        body, status, needle = {"image": {"base64": good_image}, **spec[1]}, spec[2], spec[3]
    elif spec[0] == "truncated":
        data = groceries_path.read_bytes()
        body, status, needle = {"image": {"base64": b64(data[: len(data) // 3])}, "regions": POINT}, spec[1], spec[2]
    else:
        body, status, needle = spec
    r = http.post(f"{base_url}/v1/predict", json=body, timeout=120)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle.lower() in err["message"].lower(), err
    assert err["code"] and err["request_id"]


@pytest.mark.parametrize("raw,needle", [
    (b"", "empty"),
    (b"{not json", "not valid JSON"),
    (b'{"image": {"base64": "aGk="}, "regions": [{"point": [NaN, 0.5]}]}', "finite"),
    (b"[1, 2, 3]", "object"),
])
def test_malformed_bodies(raw, needle, base_url, http):
    r = http.post(f"{base_url}/v1/predict", data=raw, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    assert needle.lower() in r.json()["error"]["message"].lower()


def test_wrong_content_type(base_url, http):
    r = http.post(f"{base_url}/v1/predict", data=b"abc", headers={"content-type": "text/plain"}, timeout=60)
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]


def test_body_over_the_limit(base_url, http):
    r = http.post(f"{base_url}/v1/predict", data=b"x" * (17 << 20), headers={"content-type": "application/json"},
                  timeout=120)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_multipart_without_image_and_with_bad_field(base_url, http, groceries_path):
    r = http.post(f"{base_url}/v1/predict", files={"regions": (None, json.dumps(POINT))}, timeout=60)
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    r = http.post(f"{base_url}/v1/predict", files={"image": ("g.jpg", groceries_path.read_bytes())},
                  data={"regions": json.dumps(POINT), "colour": "blue"}, timeout=60)
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]


def test_bad_requests_lose_nothing_for_good_ones(base_url, good_image):
    """Bad requests interleaved with good ones: every good one still gets its masks."""
    import requests

    good = {"image": {"base64": good_image}, "regions": POINT}
    bad = {"image": {"base64": good_image}, "regions": [{"point": [2, 2]}]}

    def send(body):
        return requests.post(f"{base_url}/v1/predict", json=body, timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, [good, bad] * 6))
    assert statuses == [200, 400] * 6


def test_handle_errors_are_domain_errors(handle, groceries_path):
    from sam2_serve.common.errors import InvalidImage, InvalidRequest

    with pytest.raises(InvalidImage):
        handle.predict.remote(image=b"nope", regions=POINT).result(timeout_s=60)
    with pytest.raises(InvalidRequest, match="outside"):
        handle.predict.remote(image=np.zeros((8, 8, 3), np.uint8), regions=[{"point": [3, 0]}]).result(timeout_s=60)
