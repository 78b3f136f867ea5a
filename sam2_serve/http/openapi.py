"""The OpenAPI document (``/openapi.json``) and its pages (``/docs``: Swagger UI, ``/redoc``: ReDoc).

FastAPI's document, plus what it cannot see: the request bodies that routes parse themselves (JSON or multipart,
see ``sam2_serve.http.bodies``), and the API key that ``GuardedRoute`` checks (a bearer security scheme on every
guarded route, so that Swagger UI's **Authorize** button sends ``Authorization: Bearer <key>`` with "Try it out").

The pages are FastAPI's (``get_swagger_ui_html``, ``get_redoc_html``) with their scripts and styles served by this
app from the Swagger UI and ReDoc bundles that the ``fastapi-offline`` package ships (under ``DOCS_STATIC``), not
from a CDN, so they work in an air-gapped cluster. Like the browser page, they carry a Content-Security-Policy
that lets them load and send nothing outside this origin (ReDoc would otherwise fetch its vendor's logo).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.security import HTTPBearer
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from sam2_serve.common import schemas

BODY_MODELS: list[type] = [schemas.PredictRequest, schemas.EmbedRequest, schemas.SegmentAnythingRequest,
                           schemas.GenerateRequest, schemas.SessionCreateRequest, schemas.SessionPromptRequest,
                           schemas.PropagateRequest]

# Where the Swagger UI / ReDoc files are served (apart from /static, the browser page's folder).
DOCS_STATIC = "/docs-static"
# validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io for a badge.
# persistAuthorization stays off: a key typed into Authorize lives in the tab's memory only, never localStorage.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "persistAuthorization": False}
# The pages' own inline script is allowed by its hash (added per response); the bundles style elements inline
# (React, styled-components) and ReDoc runs its search index in a blob: worker.
DOCS_CSP = ("default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")

BEARER = HTTPBearer(scheme_name="bearerAuth", auto_error=False, description=(
    "The service's API key, sent as `Authorization: Bearer <key>` (SECURITY.md). Required when the service is "
    "configured with keys (`auth:` in the application's args, e.g. from the SAM2_SERVE_API_KEY variable)."))


def docs_app(**kwargs) -> FastAPI:
    """``FastAPI(**kwargs)`` with ``/docs`` and ``/redoc`` served from this app's own files (``add_docs_routes``)."""
    app = FastAPI(docs_url=None, redoc_url=None, **kwargs)
    add_docs_routes(app)
    return app


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    html = page.body.decode()
    hashes = " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
                      for js in re.findall(r"<script>(.*?)</script>", html, re.S))
    page.headers.update({"Content-Security-Policy": DOCS_CSP.format(hashes=hashes),
                         "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
    return page


def add_docs_routes(app: FastAPI) -> None:
    """``GET /docs``, ``GET /redoc`` and ``DOCS_STATIC`` (their files): plain routes, open like ``/openapi.json``
    (no data in them). URLs carry the ASGI ``root_path``, so the pages work behind a Serve route prefix."""
    static = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=str(static)), name="docs-static")

    async def swagger(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_csp(get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png", swagger_ui_parameters=SWAGGER_UI_PARAMETERS))

    async def redoc(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_csp(get_redoc_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png", with_google_fonts=False))

    app.add_route("/docs", swagger, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route("/redoc", redoc, methods=["GET", "HEAD"], include_in_schema=False)


def body_doc(model: type, file_field: str | None = "image") -> dict:
    """OpenAPI of a route's body: ``model`` as JSON or, for a route taking a file, a multipart form with the file
    (``file_field``) and the other fields."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if file_field is not None:
        content["multipart/form-data"] = {"schema": {"type": "object", "required": [file_field], "properties": {
            file_field: {"type": "string", "format": "binary"},
            "options": {"type": "string", "description": f"the other fields of {model.__name__} as a JSON object; "
                                                          "or send them as separate form fields"}}}}
    return {"requestBody": {"required": True, "content": content}}


def guarded_paths(app: FastAPI) -> set[str]:
    """Paths whose routes check the API key: every ``GuardedRoute`` except its ``OPEN_PATHS`` (the rule the
    guard itself applies, so the document cannot drift from what is enforced)."""
    from sam2_serve.http.guard import GuardedRoute

    return {r.path for r in app.routes if isinstance(r, GuardedRoute) and r.path not in GuardedRoute.OPEN_PATHS}


def add_security(schema: dict, paths: set[str], required: bool) -> None:
    """Declare the bearer scheme and put it on the operations of ``paths``, with a documented 401.

    ``required`` False (no key configured): the scheme is optional (``{}`` is an alternative), as the service
    then accepts requests with or without a key.
    """
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER.scheme_name] = (
        BEARER.model.model_dump(mode="json", by_alias=True, exclude_none=True))
    security = [{BEARER.scheme_name: []}] + ([] if required else [{}])
    unauthorized = {"description": "The API key is missing or not valid (WWW-Authenticate: Bearer).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, operations in schema.get("paths", {}).items():
        if path in paths:
            for operation in operations.values():
                operation["security"] = security
                operation.setdefault("responses", {})["401"] = unauthorized


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` add ``BODY_MODELS`` to FastAPI's components and the bearer scheme to the guarded
    routes (computed once, on first request; ``app.state.ingress.api_keys`` tells whether a key is required)."""
    fastapi_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = fastapi_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODY_MODELS:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            add_security(schema, guarded_paths(app), app.state.ingress.api_keys.enabled)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
