"""/docs (Swagger UI) and /redoc in headless Chromium, on an application with an API key, offline.

An application of this module's own (``sam2-docs``, route prefix ``/docs-app``, key from a file, ``required``)
runs in the session's Serve instance beside the shared one (whose auth is off). Swagger UI must render from the
service's own files, and "Try it out" on ``GET /v1/models`` must be refused (401) before Authorize and reach the
model after it, with the key as ``Authorization: Bearer``. Every request either page makes must go to the server.
"""

from __future__ import annotations

import secrets

import pytest

from tests.integration.conftest import assert_healthy
from tests.integration.test_browser import TIMEOUT_MS, browser  # noqa: F401 (browser: the Chromium fixture)

pytestmark = pytest.mark.integration

APP, PREFIX = "sam2-docs", "/docs-app"
KEY = secrets.token_hex(24)


@pytest.fixture(scope="module")
def docs_app(serve_app, tiny_checkpoint, tmp_path_factory):
    """Base URL of an application with an API key, deployed for this module and deleted after it."""
    from ray import serve

    from sam2_serve.deployments.app import build_app

    key_file = tmp_path_factory.mktemp("docs-secret") / "api-key"
    key_file.write_text(KEY + "\n")
    small = {"num_cpus": 0.05, "num_replicas": 1}
    args = {"model": "sam2.1-hiera-tiny", "checkpoint": str(tiny_checkpoint), "device": "cpu",
            "cache_bytes": 16 << 20, "auth": {"api_key_env": None, "api_key_file": str(key_file), "required": True},
            "encoder": small, "decoder": small, "ingress": small,
            "tracker": {**small, "hydra_overrides": ["++model.image_size=256"], "max_sessions": 1}}
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_app[0] + PREFIX
    serve.delete(APP)


@pytest.fixture
def tab(browser, docs_app):  # noqa: F811 (browser: the imported fixture)
    """A fresh browser tab recording script errors, and every request that reaches the network layer in
    ``tab.sent`` (one the page's Content-Security-Policy blocks never gets there); any for another address is
    aborted, so that the test cannot pass by reaching it."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.sent, page.errors = [], []

    def network(route):
        page.sent.append(route.request.url)
        route.continue_() if route.request.url.startswith(docs_app + "/") else route.abort()

    page.route("**/*", network)
    page.on("pageerror", lambda e: page.errors.append(f"page error: {e}"))
    page.on("console", lambda m: page.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    yield page
    context.close()


def _assert_stayed_home(page, base: str) -> None:
    foreign = [u for u in page.sent if not u.startswith(base + "/")]
    assert foreign == [], f"the page reached outside the server: {foreign}"
    assert any(u.endswith(".js") for u in page.sent), page.sent  # the record works: the bundle went through it


def test_swagger_try_it_out_with_the_api_key(tab, docs_app):
    tab.goto(docs_app + "/docs")
    tab.wait_for_selector(".swagger-ui .info .title")
    assert "sam2-serve" in tab.inner_text(".swagger-ui .info .title")
    op = "#operations-default-models_v1_models_get"
    tab.wait_for_selector(op)
    assert tab.locator(".opblock").count() >= 10  # every /v1 operation is listed
    assert tab.locator(f"{op} .authorization__btn").count() == 1  # the lock: this route takes the key

    tab.click(f"{op} .opblock-summary")
    tab.click(f"{op} .try-out__btn")
    with tab.expect_response("**/v1/models") as refused:  # no key yet
        tab.click(f"{op} .execute")
    assert refused.value.status == 401 and refused.value.request.header_value("authorization") is None
    tab.wait_for_selector(f"{op} .live-responses-table tbody .response-col_status")
    assert "401" in tab.inner_text(f"{op} .live-responses-table tbody .response-col_status")

    tab.click(".auth-wrapper .authorize")  # the page's Authorize button: the bearer scheme's dialog
    tab.wait_for_selector(".auth-container input")
    assert "bearerAuth" in tab.inner_text(".auth-container")
    tab.fill(".auth-container input", KEY)
    tab.click(".auth-btn-wrapper .authorize")
    tab.click(".auth-btn-wrapper .btn-done")

    with tab.expect_response("**/v1/models") as answered:
        tab.click(f"{op} .execute")
    assert answered.value.request.header_value("authorization") == f"Bearer {KEY}"
    assert answered.value.status == 200, answered.value.text()
    (info,) = answered.value.json()
    assert info["name"] == "sam2.1-hiera-tiny" and info["device"] == "cpu", info
    tab.wait_for_function(f"""() => document.querySelector('{op} .live-responses-table tbody .response-col_status')
                                        ?.innerText.includes('200')""")
    assert "sam2.1-hiera-tiny" in tab.inner_text(f"{op} .live-responses-table")
    assert tab.evaluate("JSON.stringify(localStorage)").find(KEY) < 0, "the key must not be persisted"
    assert tab.errors == ["console error: Failed to load resource: the server responded with a status of 401 "
                          "(Unauthorized)"], tab.errors  # the refused try, logged by the browser
    _assert_stayed_home(tab, docs_app)
    assert_healthy(docs_app)


def test_redoc_renders_offline(tab, docs_app):
    tab.goto(docs_app + "/redoc")
    tab.wait_for_selector(".api-content h1")
    assert "sam2-serve" in tab.inner_text(".api-content h1")
    assert tab.get_by_text("/v1/models").count() >= 1
    assert tab.get_by_text("bearerAuth").count() >= 1  # the security scheme is documented
    # ReDoc's sidebar always asks for its vendor's logo from a CDN: the page's policy blocks it before it is sent.
    assert [e for e in tab.errors if "cdn.redoc.ly" not in e or "Content Security Policy" not in e] == [], tab.errors
    _assert_stayed_home(tab, docs_app)
