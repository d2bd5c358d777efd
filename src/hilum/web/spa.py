"""Serve the web application (the study browser and viewer, built into web/dist) at /.

The app is static files built by Vite (``npm run build`` in ``web/``): an
``index.html`` and content-hashed files under ``assets/``. Everything under
``/api`` and ``/dicomweb`` belongs to the API routes and is never answered
here; every other GET is:

- a file of the build (``/assets/index-3f2a.js``): hashed files are cached for a
  year (their name changes with their content), others revalidated;
- otherwise a client route of the app (``/studies``, ``/viewer/<study>``,
  ``/s/<token>``): ``index.html``, which the app routes itself.

The files are public (no credentials needed to load the app; it then signs in
against ``/api/v1/auth``), so this is a middleware in front of the routes, not a
route: it needs no rule in :mod:`hilum.auth.policy` and leaves the API's 404 and
405 answers untouched. Without a build, ``/`` answers 503 with a page saying how
to build it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

API_PREFIXES = ("/api", "/dicomweb")
# Hashed build output: Vite names them <name>-<8+ char hash>.<ext> under assets/.
_HASHED = re.compile(r"^assets/.+-[A-Za-z0-9_-]{8,}\.[A-Za-z0-9]+$")
_IMMUTABLE = "public, max-age=31536000, immutable"
# index.html: always ask again (a new build must be picked up at once).
_NO_CACHE = "no-cache"
# The viewer decodes with WebAssembly and web workers; everything else is same-origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "frame-src 'self' blob:",
        "object-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)
_NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hilum: web app not built</title>
<style>body{background:#111;color:#ddd;font:16px system-ui,sans-serif;margin:4em auto;max-width:40em}
code{background:#222;padding:.1em .3em}</style></head>
<body><h1>The Hilum web application is not built</h1>
<p>This server runs, and its DICOMweb (<code>/dicomweb</code>) and management API
(<code>/api/v1</code>, <a href="/api/docs">/api/docs</a>) answer, but the browser app has not
been built. Build it with Node.js 20 or newer:</p>
<pre><code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code></pre>
<p>(<code>scripts/serve.sh</code> does this), or point <code>HILUM_WEB_DIST</code> at a built
<code>dist</code> folder, then reload this page.</p></body></html>
"""


def default_dist() -> Path:
    """Where the built app is: ``$HILUM_WEB_DIST``, else ``web/dist`` of the source tree."""
    configured = os.environ.get("HILUM_WEB_DIST")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "web" / "dist"


def _is_api(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


class SpaMiddleware:
    """Answer GET/HEAD outside /api and /dicomweb from the built app."""

    def __init__(self, app: ASGIApp, dist: Path | None = None) -> None:
        self.app = app
        self.dist = (dist or default_dist()).resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        response = self.respond(scope["path"])
        await response(scope, receive, send)

    def respond(self, path: str) -> Response:
        index = self.dist / "index.html"
        if not index.is_file():
            return _security_headers(HTMLResponse(_NOT_BUILT, status_code=503))
        relative = path.lstrip("/")
        if relative and relative != "index.html":
            candidate = (self.dist / relative).resolve()
            if candidate.is_relative_to(self.dist) and candidate.is_file():
                cache = _IMMUTABLE if _HASHED.match(relative) else _NO_CACHE
                return FileResponse(candidate, headers={"Cache-Control": cache})
            if relative.startswith("assets/"):
                # A missing build file (an old hash after an upgrade): no HTML in its place.
                return Response("not found", status_code=404, media_type="text/plain")
        response = FileResponse(index, media_type="text/html", headers={"Cache-Control": _NO_CACHE})
        return _security_headers(response)
