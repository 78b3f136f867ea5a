"""Security properties of the shared application: no server-side fetching, logs without content, safe loading.

Authentication, configured limits and faults run on an application of their own (test_faults.py); the
mechanism of authentication is unit-tested in tests/unit/test_auth.py.
"""

from __future__ import annotations

import ast
import base64
import io
import secrets
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import assert_healthy

ROOT = Path(__file__).resolve().parents[2]
# The server: every module of the package but the HTTP client (sam2_serve/client) and the tests' support module.
SERVICE_CODE = [p for p in sorted((ROOT / "sam2_serve").rglob("*.py"))
                if "client" not in p.relative_to(ROOT / "sam2_serve").parts[:1] and p.name != "testing.py"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection: the service must never open one."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.connections.append(conn.recv(512))
            except OSError:
                self.connections.append(b"")
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


# ---- no server-side fetching ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_urls_are_never_fetched(base_url, http, listener):
    url = f"http://127.0.0.1:{listener.port}/secret.jpg"
    point = [{"point": [0.5, 0.5]}]
    playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{url}\n#EXT-X-ENDLIST\n").encode()
    concat = f"ffconcat version 1.0\nfile {url}\n".encode()
    cases = [
        ("/v1/predict", {"image": {"url": url}, "regions": point}, "image.url"),
        ("/v1/predict", {"image": {"base64": url}, "regions": point}, "base64"),
        ("/v1/predict", {"image": url, "regions": point}, "image"),
        ("/v1/embed", {"image": {"url": url}}, "image.url"),
        ("/v1/segment_anything", {"image": {"url": url}}, "image.url"),
        ("/v1/generate", {"video": {"url": url}, "frames": [{"index": 0, "regions": point}]}, "video.url"),
        ("/v1/sessions", {"video": {"url": url}}, "video.url"),
        # Playlists that make FFmpeg open other URLs or files (HLS, concat): read as data only, never followed.
        ("/v1/generate", {"video": {"base64": b64(playlist)}, "frames": [{"index": 0, "regions": point}]}, "video"),
        ("/v1/sessions", {"video": {"base64": b64(concat)}}, "video"),
    ]
    for path, body, needle in cases:
        r = http.post(base_url + path, json=body, timeout=60)
        assert r.status_code == 400, (path, body, r.text)
        assert needle in r.json()["error"]["message"] or needle == "video", r.text
    r = http.post(f"{base_url}/v1/predict", files={"image": ("x.m3u8", playlist)}, data={"regions": str(point)},
                  timeout=60)
    assert r.status_code == 400, r.text
    time.sleep(0.5)
    assert listener.connections == [], listener.connections
    assert_healthy(base_url)


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_service_code_has_no_http_client():
    """No module of the service can fetch a URL; only the model loader downloads, from the operator's
    configured Hugging Face repo (never a client-given address)."""
    clients = ("requests", "httpx", "aiohttp", "urllib.request", "urllib3", "http.client", "socket", "pycurl")
    found = {}
    for path in SERVICE_CODE:
        bad = {m for m in _imported_modules(path) if m in clients or m.startswith(tuple(c + "." for c in clients))}
        hub = {m for m in _imported_modules(path) if m.startswith("huggingface_hub")}
        if hub and path.name != "loader.py":
            bad |= hub
        if bad:
            found[str(path.relative_to(ROOT))] = sorted(bad)
    assert not found, found
    assert SERVICE_CODE, "no service code found"


def test_checkpoints_load_with_weights_only():
    """Every ``torch.load`` of the service passes ``weights_only=True`` (no unpickling of arbitrary objects);
    tests/unit/test_loader.py shows a pickle payload in a checkpoint is refused."""
    calls = []
    for path in SERVICE_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((path.name, node.lineno, ok))
    assert calls, "torch.load not found: the loader moved?"
    assert all(ok for *_, ok in calls), calls
    # Nothing unpickles client data: no pickle/marshal/dill loads anywhere in the service.
    for path in SERVICE_CODE:
        mods = _imported_modules(path)
        assert not mods & {"pickle", "marshal", "dill", "cloudpickle", "shelve"}, (path, mods)


# ---- logs: request ids and sizes, never content ----------------------------------------------------------------------


def _log_text() -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    parts = []
    for path in logs.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ""):
            try:
                parts.append(path.read_text(errors="replace"))
            except OSError:
                pass
    return "\n".join(parts)


@pytest.mark.integration
def test_logs_carry_ids_and_sizes_never_content(base_url, http):
    token = secrets.token_hex(16)
    noise = np.random.default_rng(int(token[:8], 16)).integers(0, 255, (48, 64, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    image_b64 = b64(buf.getvalue())
    garbage = b"not-an-image-" + token.encode() + bytes(range(256))
    requests_sent = [
        ("/v1/embed", {"json": {"image": {"base64": image_b64}}}, 200),
        ("/v1/predict", {"json": {"image": {"base64": b64(garbage)}, "regions": [{"point": [0.5, 0.5]}]}}, 400),
        ("/v1/predict", {"files": {"image": ("x.jpg", garbage)}, "data": {"regions": '[{"point": [0.5, 0.5]}]'}}, 400),
        ("/v1/predict", {"json": {"image": {"base64": image_b64, "note": token}, "regions": []}}, 400),
        ("/v1/generate", {"json": {"video": {"base64": b64(garbage)}, "frames": []}}, 400),
        ("/v1/predict", {"data": b"{" + token.encode(), "headers": {"content-type": "application/json"}}, 400),
    ]
    ids = []
    for path, kwargs, status in requests_sent:
        r = http.post(base_url + path, timeout=300, **kwargs)
        assert r.status_code == status, (path, r.text)
        ids.append((r.headers["x-request-id"], len(r.request.body)))
    deadline = time.monotonic() + 30
    while True:  # replica log files are written asynchronously to this process
        text = _log_text()
        lines = {rid: [ln for ln in text.splitlines() if f"request {rid} POST" in ln] for rid, _ in ids}
        if all(lines.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for rid, size in ids:
        assert lines[rid], f"no log line for request {rid}"
        assert any(f"body {size} bytes in" in ln for ln in lines[rid]), lines[rid]
    for secret in (token, image_b64[len(image_b64) // 2:][:40], b64(garbage)[16:56], garbage[:20].decode()):
        assert secret not in text, f"request content found in the logs: {secret[:20]}..."
