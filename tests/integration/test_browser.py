"""The browser page at / end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

A click on the picture must draw the service's mask over it: screenshots before and after are compared pixel by
pixel, and the pixels that took the mask's tint must be where the service's own mask for that click is. The video
flow opens a clip, clicks an object, tracks it (frames stream in) and downloads the masks, which must equal what
``/v1/generate`` returns for the same click. Every request the page makes must go to this server.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_serve.common.masks import decode_png
from sam2_serve.common.videos import encode_video
from tests.integration.conftest import assert_healthy
from sam2_serve.testing import decode_frames

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SAM2_SERVE_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google's services at start-up (refused here).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TINT = (30, 144, 255)     # web/draw.js PALETTE[0]: the first object's colour
ALPHA = 128 / 255         # web/draw.js TINT_ALPHA
CLIP_FRAMES = 6
TIMEOUT_MS = 120_000      # model work on a shared 2-core CPU: generous, never a pass/fail criterion


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium chromium-driver` "
                    "(bash scripts/setup.sh does it when run as root), or set SAM2_SERVE_CHROMIUM to its path")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A fresh browser tab on the page, recording every request it makes and every script error."""

    def __init__(self, browser, base_url: str):
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.goto(base_url + "/")

    def screenshot(self, selector: str, path: Path) -> np.ndarray:
        """RGB pixels of the element, from a screenshot of the page (the element is in the viewport)."""
        box = self.page.locator(selector).bounding_box()
        self.page.screenshot(path=str(path))
        shot = np.asarray(Image.open(path).convert("RGB"))
        x0, y0 = round(box["x"]), round(box["y"])
        return shot[y0:y0 + round(box["height"]), x0:x0 + round(box["width"])]

    def click_fraction(self, selector: str, fx: float, fy: float, shift: bool = False) -> None:
        box = self.page.locator(selector).bounding_box()
        if shift:
            self.page.keyboard.down("Shift")
        self.page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        if shift:
            self.page.keyboard.up("Shift")

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        foreign = [u for u in self.urls if not u.startswith((self.base_url + "/", "blob:", "data:"))]
        assert foreign == [], f"the page reached outside the server: {foreign}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, base_url):
    p = Page(browser, base_url)
    yield p
    p.close()


def tinted(before: np.ndarray, after: np.ndarray, color=TINT) -> np.ndarray:
    """Pixels that changed, and changed exactly as the mask's colour at ALPHA over the old pixel would."""
    b, a = before.astype(np.float32), after.astype(np.float32)
    expected = (1 - ALPHA) * b + ALPHA * np.asarray(color, np.float32)
    return (np.abs(a - expected).max(-1) <= 8) & (np.abs(a - b).max(-1) >= 12)


def shown(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) mask scaled to the on-screen size of its canvas, as the page shows it."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.BILINEAR)) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_page_and_static_files_need_no_network(base_url, http):
    r = http.get(base_url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:200]
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.refs += [v for k, v in attrs if k in ("src", "href") and v and v != "data:,"]  # data:, no icon

    parser = Refs()
    parser.feed(r.text)
    assert len(parser.refs) == 2, parser.refs  # the script and the stylesheet
    files = {"/": r.text}
    for ref in parser.refs:
        assert not re.match(r"^([a-z]+:|//|/)", ref), f"{ref}: the page's links must be relative to it"
        f = http.get(f"{base_url}/{ref}", timeout=30)
        assert f.status_code == 200, (ref, f.status_code)
        files[ref] = f.text
    # The script is app.js and the ES modules it imports, each a file of the same folder: ./<name>.js.
    modules, pending = {}, ["app.js"]
    while pending:
        name = pending.pop()
        if name in modules:
            continue
        f = http.get(f"{base_url}/static/{name}", timeout=30)
        assert f.status_code == 200 and "javascript" in f.headers["content-type"], (name, f.status_code, f.headers)
        modules[name] = files[f"static/{name}"] = f.text
        for spec in re.findall(r"""^\s*import\b[^;]*?\bfrom\s*["']([^"']+)["']""", f.text, re.M):
            assert re.fullmatch(r"\./[\w-]+\.js", spec), f"{name} imports {spec}: only ./<name>.js of its folder"
            pending.append(spec[2:])
    for name, text in files.items():
        assert not re.search(r"https?://|wss?://", text), f"{name} names an address outside the server"
    js = "\n".join(modules.values())
    assert js.count("fetch(") == 1, "every request goes through api()"
    paths = re.findall(r"""\bapi\(\s*[`"']([^`"']*)""", js)
    assert len(paths) >= 6 and all(p.startswith("v1/") for p in paths), paths  # relative to the page
    assert http.get(f"{base_url}/static/missing.js", timeout=30).status_code == 404
    assert http.get(f"{base_url}/static/../deployments/web.py", timeout=30).status_code == 404
    assert "/" not in {p for p in http.get(f"{base_url}/openapi.json", timeout=30).json()["paths"]}


def test_click_draws_the_mask(page, base_url, http, truck_path, tmp_path):
    pg = page.page
    pg.set_input_files("#image-file", str(truck_path))
    pg.wait_for_selector("#image-canvas[data-image-id]")
    assert pg.eval_on_selector("#image-canvas", "c => [c.width, c.height]") == [1800, 1200]
    before = page.screenshot("#image-canvas", tmp_path / "before.png")

    with pg.expect_request("**/v1/predict") as sent:
        page.click_fraction("#image-canvas", 0.45, 0.55)
    pg.wait_for_selector('#image-canvas:not([data-masks="0"])')
    after = page.screenshot("#image-canvas", tmp_path / "after.png")
    assert before.shape == after.shape

    request = sent.value.post_data_json
    image_id = pg.eval_on_selector("#image-canvas", "c => c.dataset.imageId")
    assert request["image"] == {"image_id": image_id} and len(request["regions"]) == 1
    x, y = request["regions"][0]["point"]
    assert abs(x - 0.45) < 0.01 and abs(y - 0.55) < 0.01, (x, y)
    # The service's own mask for the click the page sent, scaled to the canvas as shown.
    r = http.post(f"{base_url}/v1/predict", json=request, timeout=120)
    assert r.status_code == 200, r.text
    expected = shown(decode_png(r.json()["regions"][0]["mask"]["png"]), after.shape[:2])
    assert 0.005 < expected.mean() < 0.995, "the test needs a mask that is neither empty nor full"

    drawn = tinted(before, after)
    assert drawn.mean() > 0.5 * expected.mean(), f"{drawn.sum()} tinted pixels; the mask covers {expected.sum()}"
    assert iou(drawn, expected) > 0.85, iou(drawn, expected)

    # Clear removes the mask: the picture is back to the image alone.
    pg.click("#image-clear")
    pg.wait_for_selector('#image-canvas[data-masks="0"]')
    cleared = page.screenshot("#image-canvas", tmp_path / "cleared.png")
    assert tinted(before, cleared).mean() < 0.001
    page.check_clean()


def test_box_negative_point_and_undo(page, truck_path):
    pg = page.page
    pg.set_input_files("#image-file", str(truck_path))
    pg.wait_for_selector("#image-canvas[data-image-id]")
    box = pg.locator("#image-canvas").bounding_box()
    with pg.expect_request("**/v1/predict") as sent:
        pg.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
        pg.mouse.down()
        pg.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.6 * box["height"], steps=5)
        pg.mouse.up()
    regions = sent.value.post_data_json["regions"]
    assert len(regions) == 1 and np.allclose(regions[0]["box"], [0.2, 0.3, 0.5, 0.6], atol=0.01), regions
    pg.wait_for_selector('#image-canvas:not([data-masks="0"])')
    with pg.expect_request("**/v1/predict") as sent:
        page.click_fraction("#image-canvas", 0.3, 0.4, shift=True)
    regions = sent.value.post_data_json["regions"]
    assert [("box" in g, g.get("concepts")) for g in regions] == [
        (True, None), (False, [{"name": "0", "value": 0}])], regions
    with pg.expect_request("**/v1/predict") as sent:
        pg.click("#image-undo")
    assert len(sent.value.post_data_json["regions"]) == 1
    pg.wait_for_selector("#status:not(.busy)")
    assert "error" not in pg.get_attribute("#status", "class"), pg.inner_text("#status")
    page.check_clean()


def test_evicted_embedding_is_encoded_again(page, deployment_handle, truck_path):
    """The server dropped the image's embedding (LRU, or a restart): the next click encodes it again and draws."""
    pg = page.page
    pg.set_input_files("#image-file", str(truck_path))
    pg.wait_for_selector("#image-canvas[data-image-id]")
    image_id = pg.get_attribute("#image-canvas", "data-image-id")
    cache = deployment_handle("EmbeddingCache")
    # Playwright's sync API runs an event loop in this thread, where Serve refuses blocking calls: use another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: cache.discard.remote(image_id).result(timeout_s=30)).result()
        assert pool.submit(lambda: cache.get.remote(image_id).result(timeout_s=30)).result() is None
    with pg.expect_response("**/v1/embed") as again:
        page.click_fraction("#image-canvas", 0.45, 0.55)
    assert again.value.status == 200 and again.value.json()["image_id"] == image_id
    pg.wait_for_selector('#image-canvas:not([data-masks="0"])')
    pg.wait_for_selector("#status:not(.busy)")
    assert "Mask in" in pg.inner_text("#status"), pg.inner_text("#status")
    page.errors = [e for e in page.errors if "status of 404" not in e]  # the browser logs the first answer
    page.check_clean()


def test_segment_anything_button(page, truck_path, tmp_path):
    """Random test weights need low thresholds to keep masks (as with upstream); the page's fields set them."""
    pg = page.page
    pg.set_input_files("#image-file", str(truck_path))
    pg.wait_for_selector("#image-canvas[data-image-id]")
    before = page.screenshot("#image-canvas", tmp_path / "before.png")
    pg.fill("#amg-points", "4")
    pg.fill("#amg-iou", "0")
    pg.fill("#amg-stability", "0")
    with pg.expect_response("**/v1/segment_anything") as answer:
        pg.click("#segment-anything")
    body = answer.value.json()
    assert answer.value.status == 200 and len(body["regions"]) >= 1, body
    pg.wait_for_selector(f'#image-canvas[data-masks="{len(body["regions"])}"]')
    after = page.screenshot("#image-canvas", tmp_path / "after.png")
    assert (np.abs(after.astype(int) - before).max(-1) >= 12).mean() > 0.005, "no mask was drawn"
    assert f"{len(body['regions'])} mask(s)" in pg.inner_text("#status")
    # A bad parameter: the server's message is shown, nothing is drawn over.
    pg.fill("#amg-points", "0")
    pg.click("#segment-anything")
    pg.wait_for_selector("#status.error")
    assert "points_per_side" in pg.inner_text("#status")
    # The browser itself logs the refused request ("Failed to load resource ... 400"); nothing else may fail.
    page.errors = [e for e in page.errors if "status of 400" not in e]
    page.check_clean()


def test_api_key_is_sent_and_kept_for_the_tab(page, truck_path):
    """The key typed in the page goes out as ``Authorization: Bearer`` on API calls and survives a reload of the
    tab (sessionStorage), never as part of a URL. (The shared app has authentication off; tests/integration/
    test_faults.py checks that the page loads without a key where it is on.)"""
    pg = page.page
    key = "k" * 24
    pg.fill("#api-key", key)
    pg.reload()
    assert pg.input_value("#api-key") == key
    with pg.expect_request("**/v1/embed") as sent:
        pg.set_input_files("#image-file", str(truck_path))
    assert sent.value.headers["authorization"] == f"Bearer {key}"
    pg.wait_for_selector("#image-canvas[data-image-id]")
    assert all(key not in url for url in page.urls)
    page.check_clean()


def test_wrong_files_are_explained(page, tmp_path):
    """A file that is not a picture or not a video: a visible message, and the page stays usable."""
    pg = page.page
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image")
    pg.set_input_files("#image-file", str(bogus))
    pg.wait_for_selector("#status.error")
    assert "cannot show this image" in pg.inner_text("#status")
    assert pg.is_disabled("#segment-anything")
    pg.click("#tab-video")
    bogus = tmp_path / "clip.mp4"
    bogus.write_bytes(b"\x00" * 4096)
    with pg.expect_response("**/v1/sessions") as answer:
        pg.set_input_files("#video-file", str(bogus))
    assert answer.value.status == 400
    pg.wait_for_selector("#status.error")
    assert answer.value.json()["error"]["message"] in pg.inner_text("#status")
    assert pg.is_disabled("#video-track")
    page.errors = [e for e in page.errors if "status of 400" not in e]  # the browser logs the refused upload
    page.check_clean()


@pytest.fixture(scope="module")
def clip_file(bedroom_path, tmp_path_factory) -> Path:
    """CLIP_FRAMES bedroom frames at 320x180 as H.264/MP4, as a user's file."""
    frames = [np.asarray(Image.fromarray(f).resize((320, 180))) for f in decode_frames(bedroom_path, CLIP_FRAMES)]
    path = tmp_path_factory.mktemp("browser") / "bedroom_clip.mp4"
    buf = io.BytesIO()
    encode_video(frames, buf)
    path.write_bytes(buf.getvalue())
    return path


def test_video_click_track_download(page, base_url, http, clip_file, tmp_path):
    pg = page.page
    pg.click("#tab-video")
    with pg.expect_response("**/v1/sessions") as opened:
        pg.set_input_files("#video-file", str(clip_file))
    assert opened.value.status == 200, opened.value.text()
    session_id = opened.value.json()["session_id"]
    try:
        _video_flow(page, base_url, http, clip_file, tmp_path)
    finally:
        http.delete(f"{base_url}/v1/sessions/{session_id}", timeout=30)  # the cap per replica is small


def _video_flow(page, base_url, http, clip_file, tmp_path):
    pg = page.page
    pg.wait_for_selector('#video-canvas[width="320"]')
    pg.wait_for_selector("#status:not(.busy)")
    assert f"{CLIP_FRAMES} frames" in pg.inner_text("#status"), pg.inner_text("#status")
    assert "cannot decode" not in pg.inner_text("#status"), "Chromium did not decode the H.264 clip"
    before = page.screenshot("#video-canvas", tmp_path / "before.png")
    assert before.std() > 10, "the first frame of the video is not shown"

    with pg.expect_request("**/prompts") as sent:
        page.click_fraction("#video-canvas", 0.5, 0.6)
    prompt = sent.value.post_data_json
    assert prompt["index"] == 0 and prompt["regions"][0]["track_id"] == "1"
    pg.wait_for_selector('#video-canvas:not([data-masks="0"])')
    after = page.screenshot("#video-canvas", tmp_path / "after.png")
    drawn = tinted(before, after)
    assert drawn.mean() > 0.01, f"{drawn.sum()} tinted pixels on the prompted frame"

    pg.click("#video-track")
    pg.wait_for_selector(f'#video-progress[data-frames="{CLIP_FRAMES}"]')
    pg.wait_for_selector("#video-track:not([disabled])")  # the stream ended
    assert f"Tracked {CLIP_FRAMES} frames" in pg.inner_text("#status"), pg.inner_text("#status")
    pg.wait_for_selector(f'#video-canvas[data-frame="{CLIP_FRAMES - 1}"]:not([data-masks="0"])')

    with pg.expect_download() as dl:
        pg.click("#video-download")
    saved = tmp_path / "masks.json"
    dl.value.save_as(saved)
    doc = json.loads(saved.read_text())
    assert (doc["width"], doc["height"], doc["num_frames"]) == (320, 180, CLIP_FRAMES)
    assert [f["index"] for f in doc["frames"]] == list(range(CLIP_FRAMES))

    # The same click through /v1/generate: the masks the page saved are the service's.
    body = {"video": {"base64": base64.b64encode(clip_file.read_bytes()).decode()},
            "frames": [{"index": 0, "regions": prompt["regions"]}]}
    with http.post(f"{base_url}/v1/generate", json=body, stream=True, timeout=300) as r:
        assert r.status_code == 200, r.text
        reference = [json.loads(line) for line in r.iter_lines() if line]
    assert len(reference) == CLIP_FRAMES
    for got, ref in zip(doc["frames"], reference):
        assert [g["track_id"] for g in got["regions"]] == ["1"]
        mask, ref_mask = decode_png(got["regions"][0]["mask"]["png"]), decode_png(ref["regions"][0]["mask"]["png"])
        assert mask.shape == (180, 320) and 0.005 < mask.mean() < 0.995
        assert iou(mask, ref_mask) > 0.95, (got["index"], iou(mask, ref_mask))
    page.check_clean()
    assert_healthy(base_url)
