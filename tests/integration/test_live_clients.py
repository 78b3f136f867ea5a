"""The live stream's clients and its API keys: ``Model.live`` (waiting for each answer, sending as fast as the
source runs, and driven by hand), ``sam2-serve live`` on a file, and a small application with an API key (refused
without it, accepted from the header or from an ``auth`` message as browsers send it)."""

from __future__ import annotations

import io
import json
import secrets

import numpy as np
import pytest
import requests
from PIL import Image as PILImage

from sam2_serve import AuthenticationError, ClientError, Frame, Model, Region
from sam2_serve.client.cli import main
from sam2_serve.client.render import read_frames
from sam2_serve.common.masks import decode_rle
from sam2_serve.common.videos import encode_video
from sam2_serve.testing import assert_same_mask, decode_frames
from tests.integration.test_live import Live, png

pytestmark = pytest.mark.integration

K = 4            # frames tracked per case
CLICK = Region(point=[0.5, 0.55], track_id="1")
KEY = secrets.token_hex(24)


@pytest.fixture(scope="module")
def clip16(bedroom_path, tmp_path_factory):
    """16 bedroom frames at 320x180 as H.264: as long as sam2's pointer window, so that /v1/generate on it tracks
    as a live stream does (both decode it with PyAV: the same pixels)."""
    frames = [np.asarray(PILImage.fromarray(f).resize((320, 180))) for f in decode_frames(bedroom_path, 16)]
    path = tmp_path_factory.mktemp("live") / "clip16.mp4"
    buf = io.BytesIO()
    encode_video(frames, buf)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def reference(base_url, clip16) -> list[dict]:
    """/v1/generate's first K frames with the click on frame 0: {track_id: mask} per frame."""
    with Model(base_url, timeout=600) as model:
        stream, out = model.generate(clip16, frames=[Frame(index=0, regions=[CLICK])]), []
        for frame in stream:
            out.append({r.track_id: r.mask for r in frame.regions})
            if len(out) == K:
                stream.close()
                return out


def _first(path, n):
    for i, rgb in enumerate(read_frames(path)):
        if i == n:
            return
        yield rgb


def test_model_live_equals_generate(base_url, clip16, reference):
    with Model(base_url, timeout=600) as model, model.live(_first(clip16, K), prompts={0: [CLICK]}) as live:
        got = list(live)
        summary = live.close()
    assert [(f.kind, f.index, f.skipped) for f in got] == [("frame", 0, []), ("prompt", 0, [])] + [
        ("frame", i, []) for i in range(1, K)]
    assert got[0].regions == []
    for frame in got[1:]:
        (region,) = frame.regions
        assert region.track_id == "1"
        assert_same_mask(region.mask, reference[frame.index]["1"], f"frame {frame.index}")
    assert summary == {"type": "closed", "id": None, "frames_received": K, "frames_tracked": K, "frames_skipped": 0}


def test_model_live_by_hand_errors_keep_the_stream(base_url, clip16):
    frames = list(_first(clip16, 3))
    with Model(base_url, timeout=600) as model:
        live = model.live()
        # No permessage-deflate: frames are PNG/JPEG already (deflating them cost 15 ms a frame in bench.live).
        assert live._ws.protocol.extensions == []
        assert live.send(frames[0]) == 0 and next(live).index == 0
        live.prompt([Region(point=[1.5, 0.5])])
        with pytest.raises(ClientError, match="outside") as info:
            next(live)
        assert info.value.code == "invalid_request"
        live.prompt([CLICK], id="click")
        answer = next(live)
        assert (answer.kind, answer.id, live.track_ids) == ("prompt", "click", ["1"])
        live.send(PILImage.fromarray(frames[1]))  # any image type
        assert [r.track_id for r in next(live).regions] == ["1"]
        live.remove("1")
        live.send(png(frames[2]))                 # encoded bytes as they are
        frame = next(live)
        assert (frame.index, frame.regions, live.track_ids) == (2, [], [])
        assert live.close()["frames_tracked"] == 3


def test_model_live_without_waiting_reports_skips(base_url, clip16):
    frames = list(_first(clip16, 8))
    with Model(base_url, timeout=600) as model, model.live(iter(frames), prompts={0: [CLICK]}, wait=False) as live:
        got = list(live)
        summary = live.close()
    answered = [f.index for f in got if f.kind == "frame"]
    skipped = [s for f in got for s in f.skipped]
    assert sorted(answered + skipped) == list(range(8)) and answered[-1] == 7, (answered, skipped)
    assert any(f.kind == "prompt" and f.index == 0 for f in got)
    assert summary["frames_skipped"] == len(skipped) and summary["frames_received"] == 8


def test_cli_live_on_a_file(base_url, clip16, tmp_path, capsys):
    out, jsonl = tmp_path / "overlay.mp4", tmp_path / "masks.jsonl"
    rc = main(["live", str(clip16), "--point", "0.5,0.55", "--max-frames", str(K), "-o", str(out), "--jsonl",
               str(jsonl), "--quiet", "--url", base_url])
    assert rc == 0, capsys.readouterr().err
    assert f"{K} frames sent, {K} tracked, 0 skipped" in capsys.readouterr().out
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [(x["type"], x["index"]) for x in lines] == [("frame", 0), ("prompt", 0)] + [("frame", i)
                                                                                           for i in range(1, K)]
    with Model(base_url, timeout=600) as model, model.live(_first(clip16, K), prompts={0: [CLICK]}) as live:
        expected = [f.raw for f in live]
    for line, want in zip(lines, expected):  # the same frames and prompt: the same masks
        assert [decode_rle(r["mask"]["rle"]).tolist() for r in line["regions"]] == \
            [decode_rle(r["mask"]["rle"]).tolist() for r in want["regions"]]
    assert len(decode_frames(out, 100)) == K
    rc = main(["live", str(tmp_path / "missing.mp4"), "--point", "0.5,0.5", "--url", base_url])
    assert rc == 1 and "missing.mp4" in capsys.readouterr().err


# ---- API keys ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(serve_app, tmp_path_factory):
    """Base URL of an ingress with an API key in front of the shared application's tracker (no model loads)."""
    from ray import serve

    from sam2_serve.deployments.ingress import SAM2Ingress

    key_file = tmp_path_factory.mktemp("live-secret") / "key"
    key_file.write_text(KEY + "\n")
    tracker = serve.get_deployment_handle("VideoTracker", app_name="sam2")
    ingress = serve.deployment(serve.ingress()(SAM2Ingress), name="SAM2Ingress",
                               ray_actor_options={"num_cpus": 0.05}).bind(
        encoder=None, decoder=None, cache=None, tracker=tracker,
        auth={"api_key_env": None, "api_key_file": str(key_file), "required": True})
    serve.run(ingress, name="sam2-live-auth", route_prefix="/live-auth")
    yield serve_app[0] + "/live-auth"
    serve.delete("sam2-live-auth")


def _refused(live: Live, needle: str) -> None:
    answer = live.recv()
    assert answer["type"] == "error" and answer["error"]["code"] == "unauthorized", answer
    assert needle in answer["error"]["message"], answer
    with pytest.raises(Exception):
        live.recv()
    assert live.ws.close_code == 1008


def test_api_key_header_or_first_message(keyed, clip16):
    frame = png(next(_first(clip16, 1)))
    _refused(Live(keyed), "Authorization: Bearer")
    _refused(Live(keyed, headers={"Authorization": "Bearer wrong-key-0123456789"}), "not valid")
    bad = Live(keyed)
    bad.send({"type": "auth", "api_key": "wrong-key-0123456789"})
    _refused(bad, "not valid")
    bad = Live(keyed)
    bad.send(frame)  # a frame before the key
    _refused(bad, "first message")
    for live in (Live(keyed, headers={"Authorization": f"Bearer {KEY}"}), Live(keyed)):
        if not live.ws.request.headers.get("Authorization"):
            live.send({"type": "auth", "api_key": KEY})  # a browser's way
        live.ready()
        assert live.ask(frame)["type"] == "frame"
        live.close()
    with pytest.raises(AuthenticationError, match="Authorization"):
        Model(keyed).live()
    with Model(keyed, api_key=KEY) as model, model.live() as live:
        live.send(frame)
        assert next(live).index == 0
    assert requests.get(f"{keyed}/healthz", timeout=30).status_code == 200
