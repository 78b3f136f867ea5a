"""/docs, /redoc and /openapi.json of the ingress's real FastAPI app, in process (no Ray).

The pages must load every script, style and icon from this app (an air-gapped cluster has no CDN), and the
document must declare the API key as a bearer scheme exactly on the routes that check it, so that Swagger UI's
Authorize button sends it. The same pages in headless Chromium: tests/integration/test_docs_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import pytest

from sam2_serve.http.openapi import BEARER, DOCS_STATIC

KEY = "docs-key-" + "k" * 23
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _Refs(HTMLParser):
    """Every src/href of a page, and the text of its inline scripts."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.scripts.append(data)


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


@pytest.mark.parametrize("root_path", ["", "/behind/a/prefix"])
@pytest.mark.parametrize("page, wanted", [("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
                                          ("/redoc", {"redoc.standalone.js", "favicon.png"})])
def test_docs_pages_load_only_local_files(ingress_app, monkeypatch, root_path, page, wanted):
    monkeypatch.setenv("SAM2_SERVE_API_KEY", KEY)  # the pages and their files need no key
    client = ingress_app(root_path=root_path)
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:200]
    assert not re.search(r"https?://|//cdn|fonts\.googleapis", r.text), "the page names an address elsewhere"
    found = _refs(r.text)
    prefix = f"{root_path}{DOCS_STATIC}/"
    assert found.refs and all(ref.startswith(prefix) for ref in found.refs), found.refs
    assert {ref[len(prefix):] for ref in found.refs} == wanted
    for ref in found.refs:
        f = client.get(ref)  # the full path: Starlette strips root_path when routing, as behind Serve's prefix
        suffix = ref[ref.rindex("."):]
        assert f.status_code == 200 and CONTENT_TYPES[suffix] in f.headers["content-type"], (ref, f.headers)
        # The real bundles (Swagger UI ~1.5 MB, ReDoc ~1.1 MB), not stubs; the icon is small.
        assert len(f.content) > (100_000 if suffix != ".png" else 500), (ref, len(f.content))
    # The document they load is this app's, under the same prefix.
    spec_urls = re.findall(r"""(?:url: |spec-url=)["']([^"']+)""", r.text)
    assert spec_urls == [f"{root_path}/openapi.json"], spec_urls
    assert client.get(spec_urls[0]).status_code == 200


def test_swagger_ui_sends_nothing_elsewhere(ingress_app):
    """Swagger UI would post the document to validator.swagger.io for its badge unless validatorUrl is null, and
    keep an authorized key in localStorage with persistAuthorization."""
    script = "".join(_refs(ingress_app().get("/docs").text).scripts)
    assert re.search(r'"validatorUrl":\s*null', script), script
    assert re.search(r'"persistAuthorization":\s*false', script), script


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_have_a_content_security_policy(ingress_app, page):
    """Nothing outside this origin may be loaded or contacted; the one inline script runs by its hash."""
    r = ingress_app(root_path="/p").get(page)
    policy = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["img-src"] == "'self' data:" and policy["object-src"] == "'none'"
    assert "unsafe" not in policy["script-src"] and "*" not in r.headers["content-security-policy"]
    inline = _refs(r.text).scripts
    hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'" for js in inline}
    assert set(policy["script-src"].split()) == {"'self'"} | hashes
    assert len(inline) == (1 if page == "/docs" else 0)
    assert r.headers["x-content-type-options"] == "nosniff"


def _operations(schema: dict):
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_bearer_scheme_on_every_guarded_route(ingress_app, monkeypatch):
    monkeypatch.setenv("SAM2_SERVE_API_KEY", KEY)
    client = ingress_app()
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {BEARER.scheme_name: {
        "type": "http", "scheme": "bearer", "description": BEARER.model.description}}
    ops = list(_operations(schema))
    assert {p for p, _, _ in ops} >= {"/v1/predict", "/v1/segment_anything", "/v1/embed", "/v1/models",
                                     "/v1/generate", "/v1/sessions", "/v1/sessions/{session_id}"}
    for path, method, op in ops:
        assert op["security"] == [{BEARER.scheme_name: []}], (path, method)  # required: a key is configured
        assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
        # What the document says is what is enforced: each of these answers 401 without the key.
        r = client.request(method, re.sub(r"\{[^}]+\}", "abc", path), json={})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (path, method, r.text)
    assert "ErrorResponse" in schema["components"]["schemas"]
    # Open routes: not in the document (so no security on them), and open indeed.
    assert not {"/healthz", "/docs", "/redoc", "/openapi.json", "/"} & set(schema["paths"])
    for path in ("/healthz", "/docs", "/redoc", "/openapi.json", "/", f"{DOCS_STATIC}/swagger-ui.css"):
        assert client.get(path).status_code == 200, path


def test_without_keys_the_scheme_is_optional(ingress_app, monkeypatch):
    monkeypatch.delenv("SAM2_SERVE_API_KEY", raising=False)
    client = ingress_app()
    schema = client.get("/openapi.json").json()
    assert BEARER.scheme_name in schema["components"]["securitySchemes"]
    for path, method, op in _operations(schema):
        assert op["security"] == [{BEARER.scheme_name: []}, {}], (path, method)
    assert client.post("/v1/embed", json={}).status_code == 400  # no key needed: on to validation


def test_guarded_paths_follow_the_guard(ingress_app, monkeypatch):
    """A route added as open to the guard (OPEN_PATHS) would lose its security in the document too."""
    from sam2_serve.http.guard import GuardedRoute
    from sam2_serve.http.openapi import guarded_paths

    monkeypatch.setenv("SAM2_SERVE_API_KEY", KEY)
    app = ingress_app().app
    paths = guarded_paths(app)
    assert "/v1/models" in paths and "/healthz" not in paths
    monkeypatch.setattr(GuardedRoute, "OPEN_PATHS", GuardedRoute.OPEN_PATHS | {"/v1/models"})
    assert guarded_paths(app) == paths - {"/v1/models"}


def test_every_reference_resolves(ingress_app):
    """A ``$ref`` into a schema's own ``$defs`` (pydantic's inline form) dangles once the schema is placed in
    the document: ReDoc then shows only "Something went wrong"."""
    schema = ingress_app().get("/openapi.json").json()

    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(schema))
    assert "#/components/schemas/FrameOut" in found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schema["components"]["schemas"], ref
