"""The Python client (``sam2_serve``) against the real shared application: each call gives what the HTTP API and the
handle give for the same prompt, the hosted SDK's documentation examples run unchanged but for the imports and the
``Model(...)`` line, and a client mistake is a ``ClientError`` carrying the server's message."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from sam2_serve.common.masks import decode_png
from sam2_serve.common.videos import encode_video
from sam2_serve import ClientError, Concept, Frame, Image, Model, Region, Video
from tests.integration.conftest import assert_healthy
from sam2_serve.testing import KEEP_ALL
from sam2_serve.testing import decode_frames

pytestmark = pytest.mark.integration

CLIP_FRAMES = 6


@pytest.fixture(scope="session")
def short_clip(bedroom_path) -> bytes:
    """The first frames of bedroom.mp4 at 320x180 as H.264/MP4: a small upload, tracked in about a second."""
    from PIL import Image as PILImage

    frames = [np.asarray(PILImage.fromarray(f).resize((320, 180))) for f in decode_frames(bedroom_path, CLIP_FRAMES)]
    buf = io.BytesIO()
    encode_video(frames, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(base_url):
    with Model(base_url, timeout=600) as m:
        yield m


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _not_trivial(mask: np.ndarray, shape: tuple[int, int]) -> None:
    assert mask.dtype == bool and mask.shape == shape
    assert 0.001 < mask.mean() < 0.999, f"mask covers {mask.mean():.3%} of the image"


def test_predict_equals_http_and_handle(model, base_url, http, handle, groceries_path, groceries_rgb):
    h, w = groceries_rgb.shape[:2]
    prompt = [Region(point=[0.45, 0.5, 0.0], concepts=[Concept(name="1", value=1.0)]),
              Region(point=[0.2, 0.3, 0.0], concepts=[Concept(name="0", value=0.0)])]
    regions = model.predict(image=Image(bytes=groceries_path.read_bytes()), regions=prompt, multimask_output=True)
    assert (regions.width, regions.height) == (w, h) and len(regions) == 3

    body = {"image": {"base64": _b64(groceries_path.read_bytes())}, "multimask_output": True, "mask_format": "png",
            "regions": [{"point": [0.45, 0.5], "concepts": [{"name": "1"}]},
                        {"point": [0.2, 0.3], "concepts": [{"name": "0"}]}]}
    r = http.post(f"{base_url}/v1/predict", json=body, timeout=600)
    assert r.status_code == 200, r.text
    over_http = r.json()
    assert over_http["image_id"] == regions.image_id
    by_handle = handle.predict.remote(image=groceries_path.read_bytes(), regions=body["regions"],
                                      multimask_output=True).result(timeout_s=600)
    for got, raw, ref in zip(regions, over_http["regions"], by_handle.regions):
        _not_trivial(got.mask, (h, w))
        assert np.array_equal(got.mask, decode_png(raw["mask"]["png"]))
        assert np.array_equal(got.mask, ref.mask)
        assert got.score == pytest.approx(raw["score"]) and got.box == pytest.approx(raw["box"])

    # the cached embedding, by id: the same masks without sending the image again
    again = model.predict(image_id=regions.image_id, regions=prompt, multimask_output=True)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(again, regions))
    assert model.embed(groceries_path)["image_id"] == regions.image_id


def test_segment_anything_equals_http(model, base_url, http, groceries_path, groceries_rgb):
    params = dict(points_per_side=4, **KEEP_ALL)
    regions = model.segment_anything(image=groceries_path, **params)
    r = http.post(f"{base_url}/v1/segment_anything", json={"image": {"base64": _b64(groceries_path.read_bytes())},
                                                            "mask_format": "png", **params}, timeout=600)
    assert r.status_code == 200, r.text
    raw = r.json()["regions"]
    assert len(regions) == len(raw) == 16
    for got, ref in zip(regions, raw):
        _not_trivial(got.mask, groceries_rgb.shape[:2])
        assert np.array_equal(got.mask, decode_png(ref["mask"]["png"]))
        assert (got.score, got.stability_score, got.area) == pytest.approx(
            (ref["score"], ref["stability_score"], ref["area"]))
        assert got.area == got.mask.sum() and list(got.point[:2]) == pytest.approx(ref["point"])


def test_generate_equals_http(model, base_url, http, short_clip):
    frame0 = Frame(index=1, regions=[Region(point=[0.5, 0.6], track_id="a"),
                                     Region(box=[0.1, 0.1, 0.4, 0.5], track_id="b")])
    frames = list(model.generate(video=Video(bytes=short_clip), frames=[frame0], start_frame=1, max_frames=3))
    body = {"video": {"base64": _b64(short_clip)}, "start_frame": 1, "max_frames": 3, "mask_format": "png",
            "frames": [{"index": 1, "regions": [{"point": [0.5, 0.6], "track_id": "a"},
                                                {"box": [0.1, 0.1, 0.4, 0.5], "track_id": "b"}]}]}
    with http.post(f"{base_url}/v1/generate", json=body, stream=True, timeout=600) as r:
        assert r.status_code == 200, r.text
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert [f.index for f in frames] == [x["index"] for x in lines] == [1, 2, 3]
    for frame, line in zip(frames, lines):
        assert frame.time == pytest.approx(line["time"])
        assert [g.track_id for g in frame.regions] == ["a", "b"]
        for got, ref in zip(frame.regions, line["regions"]):
            _not_trivial(got.mask, (180, 320))
            assert np.array_equal(got.mask, decode_png(ref["mask"]["png"]))
            assert got.score == pytest.approx(ref["score"])

    # list_dict_inputs (SAM2VideoPredictor.add_new_points_or_box's arguments), pixel coordinates
    same = list(model.generate(video=short_clip, list_dict_inputs=[{"points": [[160, 108]], "labels": [1],
                                                                    "obj_id": "a", "frame_idx": 1}],
                               start_frame=1, max_frames=3, denormalize_coord=False))
    assert [f.index for f in same] == [1, 2, 3] and all(f.regions[0].track_id == "a" for f in same)
    _not_trivial(same[0].regions[0].mask, (180, 320))


def test_session_calls(model, short_clip):
    session = model.create_session(Video(bytes=short_clip))
    try:
        assert (session.width, session.height, session.num_frames) == (320, 180, CLIP_FRAMES)
        frame = model.add_prompts(session, 0, [Region(point=[0.5, 0.6], track_id="a"),
                                               Region(box=[0.1, 0.1, 0.4, 0.5], track_id="b")])
        assert frame.index == 0 and [g.track_id for g in frame.regions] == ["a", "b"]
        for g in frame.regions:
            _not_trivial(g.mask, (180, 320))
        tracked = list(model.propagate(session.session_id, max_frames=3))
        assert [f.index for f in tracked] == [0, 1, 2]
        assert np.array_equal(tracked[0].regions[0].mask, frame.regions[0].mask)
        # a correction click (negative) on frame 2, then backward from there
        fixed = model.add_prompts(session, 2, [Region(point=[0.3, 0.3], concepts=[Concept("0", 0.0)],
                                                      track_id="a")], clear_old_points=False)
        assert fixed.index == 2
        back = list(model.propagate(session, start_frame=2, max_frames=3, reverse=True))
        assert [f.index for f in back] == [2, 1, 0]
        assert model.remove_object(session, "b")
        assert [g.track_id for g in next(iter(model.propagate(session, max_frames=1))).regions] == ["a"]
        assert model.session_info(session)["num_frames"] == CLIP_FRAMES
    finally:
        model.delete_session(session)
    with pytest.raises(ClientError) as info:
        model.session_info(session)
    assert info.value.status in (404, 410) and session.session_id in info.value.message


def test_hosted_sdk_examples_run_unchanged(base_url, groceries_path, short_clip):
    """The hosted SAM 2 model's documentation examples, verbatim except the imports and the Model line."""
    from PIL import Image as PILImage

    from sam2_serve import Concept, Frame, Image, Model, Region, Video  # was: the hosted SDK's imports

    model = Model(base_url)  # was: Model(url=..., pat=...)
    video = Video(bytes=short_clip)

    input_image = Image.from_pil(PILImage.open(groceries_path))
    prompt = [Region(point=[0.1, 0.2, 0.0], concepts=[Concept(name="1", value=1.0)]),
              Region(point=[0.2, 0.3, 0.0], concepts=[Concept(name="0", value=0.0)])]
    regions = model.predict(image=input_image, regions=prompt)
    by_regions = regions
    regions = model.predict(image=input_image, dict_inputs=dict(points=[[0.1, 0.2], [0.2, 0.3]], labels=[1, 0]))
    by_dict = regions
    regions = model.predict(image=input_image, regions=[Region(box=[0.1, 0.2, 0.3, 0.4])])
    by_box = regions
    # The documented call is `model.segment_anything(image=input_image)`; its default 32 x 32 grid took 108 s here
    # (1024 mask-decoder prompts on 2 CPU cores), so the grid is made smaller (the client sends parameters as given).
    regions = model.segment_anything(image=input_image, points_per_side=8)
    automatic = regions

    frame0 = Frame(regions=[Region(point=[0.1, 0.2, 0.0], concepts=[Concept(name="1", value=1.0)], track_id="1")])
    frame0.proto.frame_info.index = 0
    tracked = []
    for frame in model.generate(video=video, frames=[frame0]):
        for region in frame.regions:
            mask, track_id = region.mask, region.track_id
            tracked.append((frame.index, track_id, mask))

    shape = (534, 800)
    assert len(by_regions) == len(by_dict) == len(by_box) == 1
    _not_trivial(by_regions[0].mask, shape)
    _not_trivial(by_box[0].mask, shape)
    # the two prompt forms are the same prompt
    assert np.array_equal(by_regions[0].mask, by_dict[0].mask)
    assert isinstance(automatic, list) and automatic.image_id == by_box.image_id
    assert [(i, t) for i, t, _ in tracked] == [(i, "1") for i in range(CLIP_FRAMES)]
    for _, _, mask in tracked:
        _not_trivial(mask, (180, 320))


def test_client_mistakes_raise_client_error_with_the_servers_message(model, base_url, groceries_path, short_clip):
    with pytest.raises(ClientError) as info:
        model.predict(image=groceries_path, regions=[Region(point=[1.5, 0.5, 0.0])])
    err = info.value
    assert err.status == 400 and err.code == "invalid_request" and err.request_id
    assert "(1.5, 0.5) are outside [0, 1]" in err.message

    with pytest.raises(ClientError) as info:
        model.segment_anything(image=groceries_path, points_per_side=0)
    assert info.value.status == 400 and "points_per_side" in info.value.message

    with pytest.raises(ClientError) as info:  # raised by generate() itself, before any frame
        model.generate(video=short_clip, frames=[Frame(index=CLIP_FRAMES + 5, regions=[Region(point=[0.5, 0.5])])])
    assert info.value.status in (400, 422) and str(CLIP_FRAMES + 5) in info.value.message

    with pytest.raises(ClientError) as info:
        model.generate(video=b"not a video", frames=[Frame(regions=[Region(point=[0.5, 0.5])])])
    assert info.value.status == 400 and info.value.code == "invalid_video"
    assert_healthy(base_url)
