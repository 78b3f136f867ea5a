"""The page's Live tab in headless Chromium, its camera being Chromium's fake one fed from a clip of bedroom.mp4
(``--use-file-for-fake-video-capture``, a .y4m written here with PyAV): frames stream to WS /v1/live, a click
starts an object, every later frame comes back with its mask drawn over that very frame (the canvas's pixels are
the frame the page sent, tinted where the service's mask is), the same frames and prompt sent again give the same
masks, and removal and stop work."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from sam2_serve.common.masks import decode_png
from sam2_serve.testing import assert_same_mask, decode_frames
from tests.integration.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, Page, iou, tinted
from tests.integration.test_live import Live, live_streams, wait_released

pytestmark = pytest.mark.integration

AFTER_PROMPT = 3  # frames tracked with the object before the checks


@pytest.fixture(scope="module")
def camera_clip(bedroom_path, tmp_path_factory):
    """12 bedroom frames at 320x180 as YUV4MPEG2 (I420), what Chromium's fake camera plays (in a loop)."""
    import av

    path = tmp_path_factory.mktemp("camera") / "bedroom.y4m"
    with av.open(str(path), mode="w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for rgb in decode_frames(bedroom_path, 12):
            small = np.asarray(Image.fromarray(rgb).resize((320, 180)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(small, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def camera_browser(camera_clip):
    from pathlib import Path

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium chromium-driver` "
                    "(bash scripts/setup.sh does it when run as root), or set SAM2_SERVE_CHROMIUM to its path")
    from playwright.sync_api import sync_playwright

    args = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-video-capture={camera_clip}"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        yield b
        b.close()


class Socket:
    """What the page sends and receives on its WebSocket: frames (PNG bytes, in order) and JSON messages."""

    def __init__(self, ws):
        self.url, self.frames, self.sent, self.received = ws.url, [], [], []
        ws.on("framesent", self._sent)
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload)))

    def _sent(self, payload):
        if isinstance(payload, (bytes, bytearray)):
            self.frames.append(bytes(payload))
        else:
            self.sent.append(json.loads(payload))

    def answer(self, kind: str, index: int) -> dict:
        return next(m for m in reversed(self.received) if m["type"] == kind and m["index"] == index)


def _frames_done(pg) -> int:
    return int(pg.get_attribute("#live-progress", "data-frames"))


def _wait_frames(pg, n: int) -> None:
    """Until the page has drawn ``n`` frames (polled here: the page's CSP forbids the eval that
    ``wait_for_function`` needs, and the test keeps that CSP)."""
    waited = 0
    while _frames_done(pg) < n:
        assert waited < TIMEOUT_MS, f"{_frames_done(pg)} frames after {waited} ms; status: {pg.inner_text('#status')}"
        pg.wait_for_timeout(200)
        waited += 200


def _in_thread(fn, *args):
    """Playwright's sync API runs an event loop in this thread, where Serve refuses blocking calls: use another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def test_webcam_tracking(camera_browser, base_url, deployment_handle):
    before = _in_thread(live_streams, deployment_handle)
    page = Page(camera_browser, base_url)
    pg = page.page
    try:
        pg.click("#tab-live")
        pg.select_option("#live-format", "png")  # exact pixels: the test compares them
        with pg.expect_websocket() as opened:
            pg.click("#live-start")
        socket = Socket(opened.value)
        assert socket.url.endswith("/v1/live?mask_format=png"), socket.url
        _wait_frames(pg, 2)
        assert "error" not in (pg.get_attribute("#status", "class") or ""), pg.inner_text("#status")
        assert pg.eval_on_selector("#live-canvas", "c => [c.width, c.height]") == [320, 180]

        page.click_fraction("#live-canvas", 0.5, 0.55)
        pg.wait_for_selector('#live-canvas[data-masks="1"]')
        prompt = next(m for m in socket.sent if m["type"] == "prompt")
        (region,) = prompt["regions"]
        assert region["track_id"] == "1" and np.allclose(region["point"], [0.5, 0.55], atol=0.01), prompt
        k = next(m for m in socket.received if m["type"] == "prompt")["index"]
        _wait_frames(pg, k + 1 + AFTER_PROMPT)

        # The canvas now: the frame the page sent, tinted where the service's mask for that frame is.
        shown, data_url = pg.evaluate("() => { const c = document.querySelector('#live-canvas');"
                                      " return [Number(c.dataset.frame), c.toDataURL('image/png')]; }")
        after = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
        assert len(socket.frames) > shown, f"{len(socket.frames)} frames seen sent, frame {shown} drawn"
        sent = np.asarray(Image.open(io.BytesIO(socket.frames[shown])).convert("RGB"))
        mask = decode_png(socket.answer("frame", shown)["regions"][0]["mask"]["png"])
        assert shown > k and 0.005 < mask.mean() < 0.995, (shown, k, mask.mean())
        drawn = tinted(sent, after)
        assert iou(drawn, mask) > 0.9, iou(drawn, mask)
        assert np.array_equal(after[~mask], sent[~mask]), "pixels outside the mask changed"

        pg.click("#live-remove-object")
        done = _frames_done(pg)
        _wait_frames(pg, done + 2)
        assert pg.get_attribute("#live-canvas", "data-masks") == "0"
        pg.click("#live-stop")
        pg.wait_for_selector("#live-start:not([disabled])")
        assert "Stopped" in pg.inner_text("#status"), pg.inner_text("#status")
        page.check_clean()
    finally:
        page.close()

    # The same frames and prompt over a socket of the test's own: the same masks (the page's are the service's).
    live = Live(base_url, "?mask_format=png")
    live.ready()
    for i in range(k + 1 + AFTER_PROMPT):
        answer = live.ask(socket.frames[i])
        if i == k:
            answer = live.ask({"type": "prompt", "regions": prompt["regions"]})
        if i >= k:
            page_answer = socket.answer(answer["type"], i)
            assert_same_mask(decode_png(answer["regions"][0]["mask"]["png"]),
                             decode_png(page_answer["regions"][0]["mask"]["png"]), f"frame {i}")
    live.close()
    _in_thread(wait_released, deployment_handle, before)  # the page's stream and this one are released
