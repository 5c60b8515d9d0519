"""The gateway's web pages: the dashboard (``/api/gateway/``) and the API docs
(``/api/gateway/docs``). Every byte comes from ``gateway/static`` in this
package, never from another host (CONTRACT.md, Extras), and nothing is built:
the files are served as they are.

- ``dashboard.html``: one self-contained page (inline script and style) that
  polls the JSON endpoints.
- ``docs.html`` with ``docs.js`` and ``docs.css`` (under ``/api/gateway/docs/``):
  an interactive viewer of ``/api/gateway/openapi.json``. Not Swagger UI: the
  ``swagger-ui-bundle`` package bundles Swagger UI 4.15, which cannot render
  the OpenAPI 3.1 documents FastAPI backends publish.
"""

from __future__ import annotations

import functools
from importlib import resources

HTML = b"text/html; charset=utf-8"
# The files under /api/gateway/docs/: a fixed list, so nothing else on disk is
# ever reachable through that prefix.
DOCS_ASSETS = {
    b"docs.js": b"text/javascript; charset=utf-8",
    b"docs.css": b"text/css; charset=utf-8",
}


@functools.cache
def static(name: str) -> bytes:
    """A file of ``gateway/static``, read once (only fixed names are ever asked for)."""
    return resources.files("gateway").joinpath("static", name).read_bytes()


def dashboard_page() -> bytes:
    return static("dashboard.html")


def docs_page() -> bytes:
    return static("docs.html")


def docs_asset(name: bytes) -> tuple[bytes, bytes] | None:
    """(content type, body) of a file under ``/api/gateway/docs/``, or None."""
    ctype = DOCS_ASSETS.get(name)
    if ctype is None:
        return None
    return ctype, static(name.decode("ascii"))
