"""One table of the gateway's own endpoints (gateway/endpoints.py): the router,
the handlers, the OpenAPI document and docs/operations.md all follow it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from gateway import admin
from gateway.api import Router
from gateway.config import ConfigError, from_env
from gateway.endpoints import ENDPOINTS, OPERATIONAL, PUBLIC, RESERVED, Endpoint, markdown_table, shown_path
from gateway.openapi_merge import merge

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"


def test_docs_show_the_table() -> None:
    """docs/operations.md lists every endpoint with its access, exactly as the table says."""
    text = OPERATIONS.read_text()
    assert markdown_table() in text, (
        "docs/operations.md: replace the Endpoints table with the output of "
        "python -c 'from gateway.endpoints import markdown_table; print(markdown_table())'"
    )
    rows = dict(re.findall(r"^\| `([^`]+)` \| (public|operational) \|", text, re.M))
    assert rows == {shown_path(e): e.access for e in ENDPOINTS}


def test_every_entry_is_well_formed() -> None:
    names = [e.name for e in ENDPOINTS]
    assert len(names) == len(set(names))
    keys = [(e.path, e.prefix) for e in ENDPOINTS]
    assert len(keys) == len(set(keys)), "two entries on one path"
    for e in ENDPOINTS:
        assert e.access in (PUBLIC, OPERATIONAL)
        assert e.path == "/health" or e.path.startswith("/api/gateway")
        assert e.summary and "\n" not in e.summary and "|" not in e.summary


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_handler_exists(endpoint: Endpoint) -> None:
    module, _, attr = endpoint.handler.partition(".")
    target: object = importlib.import_module(f"gateway.{module}")
    for part in attr.split("."):
        target = getattr(target, part)
    assert callable(target)
    if module == "admin":
        assert admin._HANDLERS[endpoint.name] is target


def test_admin_serves_exactly_its_entries() -> None:
    assert set(admin._HANDLERS) == {e.name for e in ENDPOINTS if e.handler.startswith("admin.")}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_router_follows_the_table(endpoint: Endpoint) -> None:
    router = Router([])
    target = endpoint.path.encode() + (b"/x" if endpoint.prefix else b"")
    m = router.match(target)
    assert m is not None and m.route is None
    assert (m.endpoint, m.public) == (endpoint.name, endpoint.access == PUBLIC)
    assert m.rest == (b"/x" if endpoint.prefix else b"")


def test_openapi_lists_the_entries_with_a_media_type() -> None:
    paths = merge([], lambda route, path: False)["paths"]
    documented = {e.path: e for e in ENDPOINTS if e.openapi}
    assert set(paths) == set(documented)
    for path, e in documented.items():
        operation = paths[path]["get"]
        assert operation["summary"] == e.summary
        assert set(operation["responses"]["200"]["content"]) == {e.openapi}


def test_no_route_may_take_a_gateway_path(tmp_path: Path) -> None:
    """The routes file refuses every path of the table and what is below it, and nothing else."""
    assert RESERVED == ("/health", "/api/gateway")
    for endpoint in ENDPOINTS:
        for prefix in (endpoint.path.rstrip("/"), endpoint.path.rstrip("/") + "/x"):
            routes = tmp_path / "routes.toml"
            routes.write_text(f'[[route]]\nprefix = "{prefix}"\nupstream = "http://x:8000"\n')
            with pytest.raises(ConfigError, match="reserved for the gateway's own endpoints"):
                from_env({"GATEWAY_CONFIG": str(routes)})
    for prefix in ("/healthz", "/api/gatewayx", "/api"):
        routes = tmp_path / "routes.toml"
        routes.write_text(f'[[route]]\nprefix = "{prefix}"\nupstream = "http://x:8000"\n')
        assert [r.prefix for r in from_env({"GATEWAY_CONFIG": str(routes)}).routes][-1] == prefix
