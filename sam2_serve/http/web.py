"""The browser page: ``GET /`` (``sam2_serve/web/index.html``) and its files under ``/static`` (no build step, no CDN).

The page ships inside the package (package data), so a wheel serves it as the repository does. It only calls this
service's own ``/v1`` API (relative URLs), so it works offline and behind any proxy prefix. Its routes are plain
Starlette routes, outside ``GuardedRoute``: the page itself is public, and the API it calls keeps its API-key check
(the page sends the key the user types as ``Authorization: Bearer``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse
from starlette.staticfiles import StaticFiles


logger = logging.getLogger("ray.serve")
# $SAM2_SERVE_WEB_DIR serves another copy of the page (e.g. while editing it against a running service).
WEB_DIR = Path(os.environ.get("SAM2_SERVE_WEB_DIR") or Path(__file__).resolve().parent.parent / "web")

# Everything from this origin only: the page cannot load or send anything elsewhere, even if a file were changed
# to try. blob:/data: are the user's own files and decoded masks.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}


class _StaticFiles(StaticFiles):
    """StaticFiles with the page's security headers, revalidated on each load (ETag) so an upgrade shows at once."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(_HEADERS)
        return response


def add_web_routes(app: FastAPI, web_dir: Path = WEB_DIR) -> None:
    """Register ``GET /`` (the page) and mount ``/static`` (its scripts and styles) on ``app``.

    Without ``web_dir/index.html`` the API is served as usual and ``/`` answers 404 saying
    where the page should be (a missing page must not take the API down).
    """
    index = web_dir / "index.html"
    if not index.is_file():
        logger.warning("the browser page %s is missing: / answers 404 (the API is unaffected)", index)

        async def missing(_: Request):
            return PlainTextResponse(f"the browser page is not installed here ({index} is missing); reinstall "
                                     "sam2-serve, run from its repository, or set SAM2_SERVE_WEB_DIR", 404)

        app.add_route("/", missing, methods=["GET", "HEAD"], include_in_schema=False)
        return

    async def page(_: Request):
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=_HEADERS)

    app.add_route("/", page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/static", _StaticFiles(directory=web_dir), name="static")
