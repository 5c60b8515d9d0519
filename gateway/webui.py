"""The gateway's web pages: the dashboard (``/api/gateway/``) and the API docs
(``/api/gateway/docs``). Every byte comes from ``gateway/static`` in this
package, never from another host (docs/extras.md), and nothing is built.

- ``dashboard.html``: one self-contained page (inline script and style) that
  polls the JSON endpoints.
- ``/api/gateway/docs``: Swagger UI 5 (``docs.html``, ``swagger-initializer.js``)
  for ``/api/gateway/openapi.json``. Swagger UI itself is npm's
  ``swagger-ui-dist``, vendored unmodified under ``static/swagger-ui/`` by
  ``scripts/fetch-swagger-ui`` (version, integrity and licence in its
  ``MANIFEST.json``); its files are served under ``/api/gateway/docs/``.

Every file is read once and kept; the names servable under
``/api/gateway/docs/`` are a fixed table, so nothing else on disk is reachable.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

HTML = b"text/html; charset=utf-8"
JS = b"text/javascript; charset=utf-8"
CSS = b"text/css; charset=utf-8"
PNG = b"image/png"
# Swagger UI's files change only with its version, which is in their URLs on
# the page (``?v=5.35.0``): a browser may keep them a day. The page and the
# initializer (the gateway's own) are revalidated on every load.
CACHE_VENDORED = (b"Cache-Control", b"public, max-age=86400")
CACHE_OWN = (b"Cache-Control", b"no-cache")

# name under /api/gateway/docs/ -> (file under gateway/static, content type)
DOCS_ASSETS: dict[bytes, tuple[str, bytes]] = {
    b"swagger-initializer.js": ("swagger-initializer.js", JS),
    b"swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", JS),
    b"swagger-ui.css": ("swagger-ui/swagger-ui.css", CSS),
    b"favicon-32x32.png": ("swagger-ui/favicon-32x32.png", PNG),
    b"favicon-16x16.png": ("swagger-ui/favicon-16x16.png", PNG),
    b"oauth2-redirect.html": ("swagger-ui/oauth2-redirect.html", HTML),
    b"oauth2-redirect.js": ("swagger-ui/oauth2-redirect.js", JS),
}

Asset = tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]]  # content type, body, extra headers


@functools.cache
def static(name: str) -> bytes:
    """A file of ``gateway/static``, read once (only fixed names are ever asked for)."""
    return resources.files("gateway").joinpath("static", *name.split("/")).read_bytes()


@functools.cache
def swagger_ui_version() -> str:
    return str(json.loads(static("swagger-ui/MANIFEST.json"))["version"])


def dashboard_page() -> bytes:
    return static("dashboard.html")


@functools.cache
def docs_page() -> Asset:
    page = static("docs.html").replace(b"{swagger_ui_version}", swagger_ui_version().encode("ascii"))
    return HTML, page, (CACHE_OWN,)


def docs_asset(name: bytes) -> Asset | None:
    """(content type, body, headers) of a file under ``/api/gateway/docs/``, or None."""
    entry = DOCS_ASSETS.get(name)
    if entry is None:
        return None
    path, ctype = entry
    return ctype, static(path), (CACHE_VENDORED if path.startswith("swagger-ui/") else CACHE_OWN,)
