"""The client's data types: SDK-style constructors and attributes, the wire form, and mask decoding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from sam2_serve import Concept, Frame, Image, Region, Video
from sam2_serve.client.types import as_image_bytes, decode_mask, decode_rle


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (120, 97), (540, 960)])
def test_rle_decoder_equals_pycocotools(shape):
    rng = np.random.default_rng(shape[0])
    mask = rng.random(shape) < 0.3
    mask[: shape[0] // 2, : shape[1] // 3] = True  # long runs (multi-group varints) next to short ones
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    got = decode_rle({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    assert got.dtype == bool and got.shape == shape
    assert np.array_equal(got, mask)
    assert np.array_equal(decode_rle({"size": list(shape), "counts": [shape[0] * shape[1]]}), np.zeros(shape, bool))


def test_rle_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="cover"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})


def test_png_mask_decoding():
    mask = np.zeros((3, 4), bool)
    mask[1, 2:] = True
    region = Region(mask=mask)
    assert np.array_equal(decode_mask(region.to_prompt(video=True)["mask"]), mask)
    assert np.array_equal(np.asarray(region.mask_pil()) == 255, mask)


def test_frame_index_through_proto_path():
    frame = Frame(regions=[Region(point=[0.1, 0.2, 0.0], concepts=[Concept(name="1", value=1.0)], track_id="1")])
    assert frame.index == 0 and frame.proto.frame_info.index == 0
    frame.proto.frame_info.index = 7
    assert frame.index == 7
    frame.index = 3.0
    assert frame.proto.frame_info.index == 3
    with pytest.raises(ValueError):
        frame.index = 1.5
    with pytest.raises(AttributeError):
        frame.proto.frame_info.nonsense = 1
    assert frame.to_prompt() == {"index": 3, "regions": [
        {"point": [0.1, 0.2, 0.0], "concepts": [{"name": "1", "value": 1.0}], "track_id": "1"}]}


def test_region_wire_forms():
    assert Region(box=[0.1, 0.2, 0.3, 0.4]).to_prompt() == {"box": [0.1, 0.2, 0.3, 0.4]}
    neg = Region(point=[0.2, 0.3], concepts=[Concept(name="0", value=0.0)])
    assert neg.point == (0.2, 0.3, 0.0)
    assert neg.to_prompt() == {"point": [0.2, 0.3, 0.0], "concepts": [{"name": "0", "value": 0.0}]}
    with pytest.raises(ValueError):
        Region(box=[1, 2, 3])
    # a mask prompt only goes to video calls (image predict takes points and boxes)
    assert "mask" not in Region(mask=np.ones((2, 2), bool)).to_prompt()
    out = Region.from_json({"mask": {"rle": {"size": [1, 3], "counts": [1, 2]}}, "score": 0.5, "box": None,
                            "track_id": "7", "concepts": [{"name": "1", "value": 0.5}], "area": 2})
    assert out.track_id == "7" and out.area == 2 and out.concepts == [Concept("1", 0.5)]
    assert out.mask.tolist() == [[False, True, True]]


def test_image_and_video_constructors(tmp_path):
    pil = PILImage.new("RGB", (5, 4), (10, 20, 30))
    img = Image.from_pil(pil)
    assert img.to_pil().size == (5, 4) and img.to_numpy()[0, 0].tolist() == [10, 20, 30]
    assert Image(bytes=img.bytes).bytes == img.bytes
    assert Image(base64=img.to_base64_str()).bytes == img.bytes
    path = tmp_path / "x.png"
    path.write_bytes(img.bytes)
    assert as_image_bytes(path) == img.bytes and as_image_bytes(pil)[:4] == b"\x89PNG"
    assert Video(bytes=b"abc").bytes == b"abc"
    with pytest.raises(ValueError, match="not fetched"):
        Image(url="https://example.com/x.jpg").to_base64_str()


def test_client_is_light():
    """Importing the client (and its CLI) loads neither ray, torch, sam2 nor PyAV."""
    code = ("import sys, sam2_serve, sam2_serve.client.cli, sam2_serve.client.render; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'sam2', 'av', 'pycocotools')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_client_side_mistakes_are_caught_before_sending():
    from sam2_serve import Model

    model = Model("http://127.0.0.1:9")  # nothing listens there: these must fail before any request
    with pytest.raises(ValueError, match="exactly one of image or image_id"):
        model.predict(regions=[Region(point=[0.5, 0.5])])
    with pytest.raises(ValueError, match="exactly one of image or image_id"):
        model.segment_anything(image=b"x", image_id="y")
    with pytest.raises(TypeError, match="image must be"):
        model.predict(image=3.5, regions=[])
    with pytest.raises(TypeError, match="video must be"):
        model.generate(video=[1, 2], frames=[])
    with pytest.raises(ValueError, match="no regions"):
        model.generate(video=b"v", frames=[Frame(index=2)])
    with pytest.raises(ValueError, match="not a session"):
        model.delete_session({"id": "x"})
    with pytest.raises(ValueError, match="a point is"):
        Region(point=[0.1])
