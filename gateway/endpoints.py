"""The gateway's own endpoints, in one table.

Each entry is a path (an exact path, or with ``prefix`` that path and
everything below it), the function that answers it, who may use it and a
one-line summary. The router (``api.Router``) puts every entry in its trie
once, at start-up; ``admin.py`` dispatches to the handlers named here; the
merged OpenAPI document lists the entries with an ``openapi`` media type; and
docs/operations.md shows :func:`markdown_table` (a test keeps it in step).

Access: ``public`` endpoints answer every client; ``operational`` ones only
clients in ``GATEWAY_ADMIN_ALLOW``, others get 403 (docs/hardening.md). An
endpoint added later is operational unless it says otherwise. Pure data: no
imports from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PUBLIC = "public"
OPERATIONAL = "operational"


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # what the router reports (``Match.endpoint``)
    path: str
    handler: str  # ``module.function`` that answers it, in the gateway package
    summary: str
    access: str = OPERATIONAL
    prefix: bool = False  # the path and everything below it (``Match.rest`` is what is below)
    openapi: str | None = None  # media type, when the merged OpenAPI document lists it
    public: bool = field(init=False, repr=False, compare=False)  # access == PUBLIC, derived once

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", self.access == PUBLIC)


# An exact entry and a prefix entry may share a path: the exact one wins for
# the path itself (``/api/gateway/docs`` is the page, ``/api/gateway/docs/<file>``
# its files). The trailing slash of ``/api/gateway/`` is a segment of its own.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("health", "/health", "admin.health",
             "Gateway health: 200 when serving, 503 when starting or draining; never probes backends",
             PUBLIC, openapi="application/json"),
    Endpoint("status", "/api/gateway/status", "admin.status",
             "Gateway status, connections, requests per service", PUBLIC, openapi="application/json"),
    Endpoint("services", "/api/gateway/services", "admin.services",
             "Routes and passive backend state from real traffic", openapi="application/json"),
    Endpoint("stats", "/api/gateway/stats", "admin.stats",
             "Per-service request rate, error rate and latency over the last minute", openapi="application/json"),
    Endpoint("recent", "/api/gateway/recent", "admin.recent",
             "The last requests, newest first", openapi="application/json"),
    Endpoint("metrics", "/api/gateway/metrics", "admin.metrics", "Prometheus metrics", openapi="text/plain"),
    Endpoint("openapi", "/api/gateway/openapi.json", "admin.openapi",
             "This document: every backend's OpenAPI document, merged", PUBLIC, openapi="application/json"),
    Endpoint("docs", "/api/gateway/docs", "admin.docs", "Swagger UI for the OpenAPI document", PUBLIC),
    Endpoint("docs_asset", "/api/gateway/docs", "admin.docs_asset",
             "Swagger UI's files (a fixed list in gateway/webui.py); anything else is 404", PUBLIC, prefix=True),
    Endpoint("dashboard", "/api/gateway/", "admin.dashboard", "The live dashboard"),
    Endpoint("dashboard_redirect", "/api/gateway", "protocol.ClientConnection._redirect",
             "308 to /api/gateway/, the query kept"),
    # Everything else under /api/gateway is the gateway's too: a 404 of its own,
    # never forwarded (``gateway`` is a reserved service name); it tells nobody anything.
    Endpoint("not_found", "/api/gateway", "admin.not_found",
             "Anything else under /api/gateway: 404, never forwarded", PUBLIC, prefix=True),
)

BY_NAME: dict[str, Endpoint] = {e.name: e for e in ENDPOINTS}
# The paths no route may take, nor anything below them: /health and /api/gateway.
RESERVED: tuple[str, ...] = tuple(
    dict.fromkeys(
        e.path.rstrip("/") for e in ENDPOINTS
        if not any(o.path != e.path and e.path.startswith(o.path.rstrip("/") + "/") for o in ENDPOINTS)
    )
)


def is_reserved(prefix: str) -> bool:
    """Whether a route prefix (no trailing slash) is, or is below, a gateway endpoint path."""
    return any(prefix == path or prefix.startswith(path + "/") for path in RESERVED)


def shown_path(endpoint: Endpoint) -> str:
    """The path as the docs write it: a prefix entry as ``<path>/*``."""
    return endpoint.path.rstrip("/") + "/*" if endpoint.prefix else endpoint.path


def markdown_table() -> str:
    """The table in docs/operations.md ("Endpoints")."""
    lines = ["| path | access | summary |", "| --- | --- | --- |"]
    lines += [f"| `{shown_path(e)}` | {e.access} | {e.summary} |" for e in ENDPOINTS]
    return "\n".join(lines) + "\n"
