"""sam2_serve/http/web.py: the page's routes on a bare FastAPI app (no Ray): files, headers, and a missing page."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from sam2_serve.http.web import CSP, WEB_DIR, add_web_routes


def _client(web_dir=WEB_DIR) -> TestClient:
    app = FastAPI()
    add_web_routes(app, web_dir)

    @app.get("/v1/ping")
    def ping():
        return {"ok": True}

    return TestClient(app)


def test_page_and_files_are_served_with_headers():
    client = _client()
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (WEB_DIR / "index.html").read_text()
    assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        f = client.get(f"/static/{name}")
        assert f.status_code == 200 and ctype in f.headers["content-type"], (name, f.headers)
        assert f.content == (WEB_DIR / name).read_bytes()
        assert f.headers["content-security-policy"] == CSP and "etag" in f.headers
        assert client.get(f"/static/{name}", headers={"If-None-Match": f.headers["etag"]}).status_code == 304
    assert client.head("/").status_code == 200
    assert client.post("/").status_code == 405
    assert client.get("/v1/ping").json() == {"ok": True}  # the app's own routes are untouched


def test_nothing_outside_the_web_folder_is_served():
    client = _client()
    for path in ("/static/../http/web.py", "/static/%2e%2e/http/web.py", "/static/missing.js",
                 "/static/", "/index.html", "/web.py"):
        assert client.get(path).status_code == 404, path


def test_a_missing_page_leaves_the_api_up(tmp_path):
    client = _client(tmp_path)
    r = client.get("/")
    assert r.status_code == 404 and "SAM2_SERVE_WEB_DIR" in r.text and str(tmp_path) in r.text
    assert client.get("/v1/ping").json() == {"ok": True}
