"""Extras (docs/extras.md): the merged OpenAPI document, the dashboard and
the stats behind it, against real backends over loopback (the docs page, Swagger
UI: test_swagger_ui.py).

Backends: the FastAPI examples under uvicorn (what users run), and stdlib
servers serving hand-written OpenAPI documents whose names collide on purpose.
The pages are checked in a real headless Chromium (Debian's ``chromium``) that
may resolve no host at all: whatever it shows came from the gateway.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.openapi import FETCH_TIMEOUT_S
from tests.backends import backend, free_port, raw_server
from tests.integration.helpers import get_json, request, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
LITERAL_KEYS = {"example", "default", "enum", "const", "value"}
# Where keys are names, not keywords (a response named "default", a property named "$ref").
NAME_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "responses", "content",
             "encoding", "headers", "examples", "links", "callbacks"}


# ------------------------------------------------------------------ backends


@contextmanager
def uvicorn_app(module: str) -> Iterator[str]:
    """One of the FastAPI examples under uvicorn, in a thread, on a loopback port."""
    import importlib

    import uvicorn

    app = importlib.import_module(module).app
    with warnings.catch_warnings():
        # service1's /api/echo route shares one operation id across its methods;
        # FastAPI says so once, when it first builds (and caches) the document.
        warnings.simplefilter("ignore", UserWarning)
        app.openapi()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, http="h11", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 10), f"{module} did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class DocServer:
    """A stdlib server that serves ``doc`` as JSON at ``path`` and counts the fetches."""

    def __init__(self, doc: dict[str, Any], path: str = "/openapi.json") -> None:
        self.doc = doc
        self.path = path
        self.hits = 0
        self.delay_s = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != outer.path:
                    body, status = b'{"detail": "Not Found"}', 404
                else:
                    outer.hits += 1
                    if outer.delay_s:
                        time.sleep(outer.delay_s)  # behaviour: a slow backend
                    body, status = json.dumps(outer.doc).encode(), 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> DocServer:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def shop_doc(flavour: str) -> dict[str, Any]:
    """A hand-written OpenAPI 3.0 document; every flavour uses the same names."""
    ok = {"description": "OK"}
    schemas: dict[str, Any] = {
        "Item": {
            "type": "object",
            "properties": {
                f"{flavour}_only": {"type": "string"},
                "$ref": {"type": "string", "description": "a property that happens to be named $ref"},
                "owner": {"$ref": "#/components/schemas/Owner"},
            },
        },
        "Owner": {"type": "object", "properties": {"name": {"type": "string"}}},
        "Error": {"type": "object", "properties": {"detail": {"type": "string"}}},
        "Cat": {"type": "object", "properties": {"kind": {"type": "string"}, "purrs": {"type": "boolean"}}},
        "Dog": {"type": "object", "properties": {"kind": {"type": "string"}, "barks": {"type": "boolean"}}},
        "Pet": {
            "oneOf": [{"$ref": "#/components/schemas/Cat"}, {"$ref": "#/components/schemas/Dog"}],
            "discriminator": {"propertyName": "kind", "mapping": {"cat": "#/components/schemas/Cat", "dog": "Dog"}},
        },
    }
    if flavour == "shop":
        # "shop" + "_" + "b_Item" would be "shop_b" + "_" + "Item": namespacing must not collide.
        schemas["b_Item"] = {"type": "object", "properties": {"from_shop": {"type": "boolean"}}}
    items_schema = {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{flavour} shop", "version": "1.0"},
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}],
        "tags": [{"name": "items", "description": f"{flavour} items"}],
        "paths": {
            "/api/items": {
                "parameters": [{"$ref": "#/components/parameters/Limit"}],
                "servers": [{"url": "http://elsewhere.invalid"}],
                "get": {
                    "tags": ["items"],
                    "operationId": "list_items",
                    "responses": {
                        "200": {
                            "description": "the items",
                            "content": {"application/json": {
                                "schema": items_schema,
                                "example": [{"$ref": "an example payload, not a reference"}],
                            }},
                        },
                        "404": {"$ref": "#/components/responses/NotFound"},
                    },
                },
                "post": {
                    "operationId": "list_items",  # a duplicate in the backend's own document
                    "security": [],
                    "requestBody": {"$ref": "#/components/requestBodies/NewItem"},
                    "responses": {"201": {"$ref": "#/paths/~1api~1items/get/responses/200"}},
                },
            },
            "/api/items/{id}": {
                "get": {
                    "tags": ["items"],
                    "operationId": "get_item",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {
                        "200": {"description": "a pet", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Pet"}}}},
                        "default": {"description": "trouble", "content": {"application/json": {
                            "schema": {"$ref": "https://schemas.invalid/Error.json"}}}},
                    },
                },
            },
            "/internal/metrics": {"get": {"operationId": "internal_metrics", "responses": {"200": ok}}},
        },
        "components": {
            "schemas": schemas,
            "parameters": {"Limit": {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 10}}},
            "responses": {"NotFound": {"description": "no such item", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}},
            "requestBodies": {"NewItem": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Item"}}}}},
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "OAuth": {"type": "oauth2", "flows": {"password": {"tokenUrl": "/api/token", "scopes": {}}}},
            },
        },
    }


# --------------------------------------------------------- document checks


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"non-local $ref {ref!r}"
    node: Any = doc
    for raw in ref[2:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"$ref {ref!r} does not resolve (at {token!r})"
        node = node[token]
    return node


def references(node: Any, names_map: bool = False) -> Iterator[str]:
    """Every Reference Object's ``$ref`` (example payloads are data, not references)."""
    if isinstance(node, list):
        for item in node:
            yield from references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if names_map:
                yield from references(value)
            elif key == "$ref" and isinstance(value, str):
                yield value
            elif key in LITERAL_KEYS or (key == "examples" and isinstance(value, list)):
                continue
            else:
                yield from references(value, names_map=key in NAME_MAPS and isinstance(value, dict))


def check_document(doc: dict[str, Any], *, with_refs: bool = True) -> None:
    """What every merged document must be: refs resolve, names unique, the gateway is the server."""
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "/"}]
    refs = list(references(doc))
    assert refs or not with_refs, "a merged document without a single reference proves nothing"
    for ref in refs:
        resolve(doc, ref)
    op_ids = []
    schemes = doc.get("components", {}).get("securitySchemes", {})
    declared_tags = {t["name"] for t in doc.get("tags", [])}
    for path, item in doc["paths"].items():
        assert path.startswith("/"), path
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            op = item.get(method)
            if op is None:
                continue
            op_ids.append(op.get("operationId"))
            assert "servers" not in op
            for requirement in op.get("security", []):
                for name in requirement:
                    assert name in schemes, f"{method} {path}: security scheme {name!r} is not declared"
            for tag in op.get("tags", []):
                assert tag in declared_tags, f"{method} {path}: tag {tag!r} is not declared"
        assert "servers" not in item
    assert len(op_ids) == len(set(op_ids)), f"operation ids are not unique: {op_ids}"
    for schema in doc.get("components", {}).get("schemas", {}).values():
        for target in (schema.get("discriminator") or {}).get("mapping", {}).values():
            if target.startswith("#"):
                resolve(doc, target)
            else:
                assert target in doc["components"]["schemas"], target


def openapi(port: int) -> dict[str, Any]:
    status, headers, body = request(port, "GET", "/api/gateway/openapi.json")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


# ------------------------------------------------------------ merged document


def test_merged_document_of_the_fastapi_examples(gateway_factory):
    """Extras: `/api/<rest>` appears as `/api/<name>/<rest>`; component names namespaced per
    service so two services never collide; every `$ref` resolves; `servers` is the gateway."""
    with uvicorn_app("examples.service1") as s1, uvicorn_app("examples.service2") as s2:
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2", SERVICE1_URL=s1, SERVICE2_URL=s2)
        doc = openapi(gw.port)
        check_document(doc)
        assert doc["openapi"] == "3.1.0"
        assert doc["info"]["x-gateway-services"] == {
            "service1": {"available": True, "error": None},
            "service2": {"available": True, "error": None},
        }
        paths = doc["paths"]
        for path in ("/api/service1/orders", "/api/service1/orders/{order_id}", "/api/service1/echo",
                     "/api/service2/notifications/send", "/api/service2/notifications"):
            assert path in paths
        backend_paths = [p for p in paths if not p.startswith("/api/gateway/") and p != "/health"]
        assert all(p.startswith(("/api/service1/", "/api/service2/")) for p in backend_paths), backend_paths
        schemas = doc["components"]["schemas"]
        # Both FastAPI apps define HTTPValidationError and ValidationError: both kept, apart.
        for name in ("HTTPValidationError", "ValidationError"):
            assert f"service1.{name}" in schemas and f"service2.{name}" in schemas
        assert "service1.Order" in schemas and "service2.Notification" in schemas
        assert not [n for n in schemas if "." not in n]
        create = paths["/api/service1/orders"]["post"]
        assert create["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/service1.OrderIn"}
        assert create["tags"] == ["service1"]
        assert create["operationId"] == "service1.create_order_api_orders_post"
        # The paths are the gateway's: each one without parameters answers through it.
        for path, item in paths.items():
            if path.startswith("/api/service") and "get" in item and "{" not in path:
                status, _, body = request(gw.port, "GET", path)
                assert status == 200, (path, body)


def test_colliding_names_are_namespaced_and_every_reference_rewritten(gateway_factory):
    """Extras: component and tag names namespaced per service so two services never collide
    (not even `shop` + `b_Item` against `shop_b` + `Item`), and every `$ref` resolves."""
    with DocServer(shop_doc("shop")) as a, DocServer(shop_doc("shop_b")) as b:
        gw = gateway_factory(GATEWAY_SERVICES="shop,shop_b", SHOP_URL=a.url, SHOP_B_URL=b.url)
        doc = openapi(gw.port)
    check_document(doc)
    assert doc["openapi"] == "3.0.3"
    schemas = doc["components"]["schemas"]
    assert "shop_only" in schemas["shop.Item"]["properties"]
    assert "shop_b_only" in schemas["shop_b.Item"]["properties"]
    assert schemas["shop.b_Item"]["properties"] == {"from_shop": {"type": "boolean"}}
    assert schemas["shop.Item"]["properties"]["owner"] == {"$ref": "#/components/schemas/shop.Owner"}
    assert schemas["shop.Item"]["properties"]["$ref"]["type"] == "string"  # a property name, kept
    assert schemas["shop_b.Pet"]["discriminator"]["mapping"] == {
        "cat": "#/components/schemas/shop_b.Cat", "dog": "shop_b.Dog"}
    for kind, name in (("parameters", "Limit"), ("responses", "NotFound"), ("requestBodies", "NewItem"),
                       ("securitySchemes", "ApiKey")):
        assert {f"shop.{name}", f"shop_b.{name}"} <= set(doc["components"][kind])
    assert doc["components"]["securitySchemes"]["shop.OAuth"]["flows"]["password"]["tokenUrl"] == "/api/shop/token"

    paths = doc["paths"]
    assert {"/api/shop/items", "/api/shop/items/{id}", "/api/shop_b/items", "/api/shop_b/items/{id}"} <= set(paths)
    assert not [p for p in paths if "internal" in p], "a path outside /api is not reachable: left out"
    items = paths["/api/shop/items"]
    assert items["parameters"] == [{"$ref": "#/components/parameters/shop.Limit"}]
    get, post = items["get"], items["post"]
    assert get["tags"] == ["shop: items"] and post["tags"] == ["shop"]
    assert get["operationId"] == "shop.list_items" and post["operationId"] == "shop.list_items_2"
    assert get["security"] == [{"shop.ApiKey": []}], "the backend's global security moves onto its operations"
    assert post["security"] == [], "an operation's own (empty) security stays"
    media = get["responses"]["200"]["content"]["application/json"]
    assert media["example"] == [{"$ref": "an example payload, not a reference"}], "examples are data"
    assert get["responses"]["404"] == {"$ref": "#/components/responses/shop.NotFound"}
    assert post["responses"]["201"] == {"$ref": "#/paths/~1api~1shop~1items/get/responses/200"}
    external = paths["/api/shop/items/{id}"]["get"]["responses"]["default"]["content"]["application/json"]["schema"]
    assert "$ref" not in external and "does not resolve" in external["description"]
    tags = {t["name"]: t for t in doc["tags"]}
    assert tags["shop: items"]["description"] == "shop items"
    assert tags["shop_b: items"]["description"] == "shop_b items"
    assert {"shop", "shop_b", "gateway"} <= set(tags)


def test_file_routes_base_paths_and_shadowed_paths(gateway_factory, tmp_path):
    """Extras: a path the gateway cannot reach is left out; a routes-file route maps by its own
    prefix and base path; `<NAME>_OPENAPI_PATH` says where the document is."""
    billing = {
        "openapi": "3.1.0", "info": {"title": "billing", "version": "2"},
        "paths": {
            "/v1/invoices": {"get": {"operationId": "invoices", "responses": {"200": {"description": "OK"}}}},
            "/v1": {"get": {"operationId": "root", "responses": {"200": {"description": "OK"}}}},
            "/v2/legacy": {"get": {"operationId": "legacy", "responses": {"200": {"description": "OK"}}}},
        },
    }
    service1 = {
        "openapi": "3.1.0", "info": {"title": "s1", "version": "1"},
        "paths": {
            "/api/orders": {"get": {"operationId": "orders", "responses": {"200": {"description": "OK"}}}},
            "/api/admin/users": {"get": {"operationId": "users", "responses": {"200": {"description": "OK"}}}},
        },
    }
    with DocServer(billing, "/spec/openapi.json") as bill, DocServer(service1) as s1:
        routes = tmp_path / "routes.toml"
        routes.write_text(
            f'[[route]]\nprefix = "/api/billing"\nupstream = "{bill.url}/v1"\n'
            f'[[route]]\nprefix = "/api/service1/admin"\nname = "admin"\nupstream = "{bill.url}/v1"\n'
        )
        gw = gateway_factory(SERVICE1_URL=s1.url, GATEWAY_CONFIG=str(routes), BILLING_OPENAPI_PATH="/spec/openapi.json",
                             ADMIN_OPENAPI_PATH="/spec/openapi.json")
        doc = openapi(gw.port)
    check_document(doc, with_refs=False)
    paths = set(doc["paths"])
    assert {"/api/billing/invoices", "/api/billing", "/api/service1/orders"} <= paths
    assert not [p for p in paths if "legacy" in p], "outside the route's base path: unreachable"
    # /api/service1/admin/* belongs to the longer route: service1's /api/admin/users is not reachable.
    assert "/api/service1/admin/users" not in paths
    assert "/api/service1/admin/invoices" in paths
    assert doc["paths"]["/api/billing/invoices"]["get"]["operationId"] == "billing.invoices"
    assert doc["paths"]["/api/service1/admin/invoices"]["get"]["operationId"] == "admin.invoices"


def test_a_backend_that_is_down_is_listed_unavailable_never_an_error(gateway_factory):
    """Extras: `info["x-gateway-services"]` maps each service to `{"available", "error"}`: a backend that is
    down is listed unavailable, never an error of the document; the wait is bounded by the fetch timeout."""
    def hang(conn: socket.socket) -> None:
        conn.recv(65536)
        time.sleep(5)  # behaviour: a backend that never answers (within the fetch timeout)

    def garbage(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"this is not HTTP\r\n\r\n")
        conn.close()

    with uvicorn_app("examples.service1") as s1, raw_server(hang) as hung, raw_server(garbage) as bad, \
            backend() as echo:
        gw = gateway_factory(
            GATEWAY_SERVICES="service1,refused,hung,bad,echo",
            SERVICE1_URL=s1, REFUSED_URL=f"http://127.0.0.1:{free_port()}", HUNG_URL=f"http://127.0.0.1:{hung}",
            BAD_URL=f"http://127.0.0.1:{bad}", ECHO_URL=echo.url,
        )
        started = time.monotonic()
        doc = openapi(gw.port)
        elapsed = time.monotonic() - started
    assert elapsed < 1.75 * FETCH_TIMEOUT_S, f"the first request waited {elapsed:.1f}s (fetch timeout {FETCH_TIMEOUT_S}s)"
    check_document(doc)
    services = doc["info"]["x-gateway-services"]
    assert services["service1"] == {"available": True, "error": None}
    for name, words in (("refused", "refused"), ("hung", "within 2s"), ("bad", "cannot get"),
                        ("echo", "not an OpenAPI 3 document")):
        assert services[name]["available"] is False
        assert words in services[name]["error"], services[name]
    assert "/api/service1/orders" in doc["paths"]
    assert not [p for p in doc["paths"] if p.startswith(("/api/refused", "/api/hung", "/api/bad", "/api/echo"))]


def test_document_is_cached_and_refreshed_off_the_request_path(gateway_factory):
    """Extras: fetched off the request path with a timeout and cached at most 30 s: requests are
    served from the cache while a background refresh picks up changes, even from a slow backend."""
    with DocServer(shop_doc("shop")) as shop:
        gw = gateway_factory(SERVICE1_URL=shop.url)
        cache = gw.server.gw.openapi
        gw.call(lambda: setattr(cache, "refresh_s", 0.3))  # instead of 25 s, to watch it happen
        assert "/api/service1/items" in openapi(gw.port)["paths"]
        assert shop.hits == 1
        openapi(gw.port)
        assert shop.hits <= 2  # from the cache (the refresher may have run once meanwhile)

        shop.doc["paths"]["/api/new"] = {"get": {"responses": {"200": {"description": "OK"}}}}
        assert wait_for(lambda: "/api/service1/new" in openapi(gw.port)["paths"], 5), \
            "the background refresh did not pick up the change"

        shop.delay_s = 1.5 * FETCH_TIMEOUT_S  # now the backend is slow: requests must not wait for it

        def served_at_once_until_unavailable() -> dict[str, Any] | None:
            started = time.monotonic()
            doc = openapi(gw.port)
            assert time.monotonic() - started < FETCH_TIMEOUT_S / 2, "a request waited for a refresh"
            return None if doc["info"]["x-gateway-services"]["service1"]["available"] else doc

        doc = wait_for(served_at_once_until_unavailable, 4 * FETCH_TIMEOUT_S)
        assert doc, "the refresh never timed out"
        assert "within 2s" in doc["info"]["x-gateway-services"]["service1"]["error"]


def test_openapi_endpoint_is_get_and_head_only(gateway_factory):
    """Routing: gateway-owned endpoints answer GET and HEAD only; anything else is 405."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    status, headers, body = request(gw.port, "HEAD", "/api/gateway/openapi.json")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, _, _ = request(gw.port, "POST", "/api/gateway/openapi.json", body=b"{}")
    assert status == 405


# ----------------------------------------------------------- pages and stats


def _links(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', html)


def test_dashboard_is_one_self_contained_page(gateway_factory):
    """Extras: `/api/gateway/` is a single page, no build step, no CDN: inline script and style only."""
    gw = gateway_factory(SERVICE1_URL=f"http://127.0.0.1:{free_port()}")
    status, headers, body = request(gw.port, "GET", "/api/gateway/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    assert all(link.startswith(("/api/gateway/", "/health", "data:")) for link in _links(page)), _links(page)
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # a namespace, not a fetch
    for endpoint in ("/api/gateway/status", "/api/gateway/services", "/api/gateway/stats", "/api/gateway/recent"):
        assert endpoint in page


def test_stats_per_service_rate_errors_and_latency(gateway_factory):
    """Extras: per-service request rate, error rate, p50/p99 upstream latency and gateway-added latency."""
    with backend() as be:
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2", SERVICE1_URL=be.url,
                             SERVICE2_URL=f"http://127.0.0.1:{free_port()}")
        for _ in range(3):
            assert request(gw.port, "GET", "/api/service1/echo")[0] == 200
        assert request(gw.port, "GET", "/api/service1/status/500")[0] == 500
        assert request(gw.port, "GET", "/api/service1/status/404")[0] == 404  # the client's error, not the backend's
        status, stats = get_json(gw.port, "/api/gateway/stats")
    assert status == 200
    assert stats["window_s"] > 0
    s1, s2 = stats["services"]["service1"], stats["services"]["service2"]
    assert (s1["requests"], s1["errors"], s1["error_rate"]) == (5, 1, 0.2)
    assert s1["total"] == {"requests": 5, "errors": 1}
    assert s1["rate_per_s"] > 0
    for key in ("upstream_ms", "gateway_ms"):
        q = s1[key]
        assert q["p50"] is not None and 0 <= q["p50"] <= q["p99"], q
        assert q["mean"] > 0
    assert set(s1["pool"]) == {"idle", "busy", "waiting"}
    assert (s2["requests"], s2["error_rate"]) == (0, None)
    assert s2["upstream_ms"] == s2["gateway_ms"] == {"p50": None, "p99": None, "mean": None}


# ------------------------------------------------------------- real browser

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to test the pages",
)


def chromium(url: str, tmp_path: Path, *args: str, budget_ms: int = 4000) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no network of its own: it may resolve no host, so all it shows came from the gateway."""
    profile = tmp_path / "chromium-profile"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}",
        "--window-size=1280,900", f"--virtual-time-budget={budget_ms}", *args, url,
    ]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def demo_traffic(port: int) -> list[str]:
    """A little of everything: successes, a client error, a backend that is down, an unknown route."""
    ids = []
    plan = [
        ("GET", "/api/service1/orders", None), ("GET", "/api/service1/orders/1", None),
        ("POST", "/api/service1/orders", b'{"item": "book", "quantity": 2}'),
        ("GET", "/api/service1/orders/99", None),
        ("POST", "/api/service2/notifications/send", b'{"to": "a@b.c", "message": "hi"}'),
        ("GET", "/api/service2/notifications", None), ("GET", "/api/billing/invoices", None),
        ("GET", "/api/nowhere", None), ("GET", "/api/service1/orders", None),
    ]
    for n, (method, path, body) in enumerate(plan):
        rid = f"dashboard-test-{n}"
        headers = {"X-Request-ID": rid}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request(port, method, path, body=body, headers=headers)
        ids.append(rid)
    return ids


@needs_chromium
def test_dashboard_in_headless_chromium(gateway_factory, tmp_path):
    """Extras: the dashboard, in a real browser against a running gateway with traffic, shows the routes,
    each service, pool state and the recent requests with their status."""
    with uvicorn_app("examples.service1") as s1, uvicorn_app("examples.service2") as s2:
        gw = gateway_factory(GATEWAY_SERVICES="service1,service2,billing", SERVICE1_URL=s1, SERVICE2_URL=s2,
                             BILLING_URL=f"http://127.0.0.1:{free_port()}")
        ids = demo_traffic(gw.port)
        dom = chromium(f"{gw.url}/api/gateway/", tmp_path, "--dump-dom").stdout
        shot = tmp_path / "dashboard.png"
        chromium(f"{gw.url}/api/gateway/", tmp_path, f"--screenshot={shot}", budget_ms=9000)
    assert 'id="gw-status" class="pill ok">ok<' in dom
    rows = dict(re.findall(r'<tr data-service="([^"]+)">(.*?)</tr>', dom, re.S))
    assert list(rows) == ["service1", "service2", "billing"]
    assert "/api/service1 → " + s1 in rows["service1"]
    assert "bad_gateway 502" in rows["billing"], "the down backend's last error"
    assert re.search(r'data-field="pool">1 / 0 / 0<', rows["service1"]), "pool: one idle connection"
    recent = dict(re.findall(r'<tr data-request-id="([^"]+)">(.*?)</tr>', dom, re.S))
    assert set(ids) <= set(recent), "every request of the traffic is listed"
    assert ">201<" in recent["dashboard-test-2"] and ">404<" in recent["dashboard-test-3"]
    assert ">502<" in recent["dashboard-test-6"] and "bad_gateway" in recent["dashboard-test-6"]
    assert "/api/service2/notifications/send" in recent["dashboard-test-4"]
    assert not [r for r in recent if not r.startswith("dashboard-test-") and "/api/gateway/" in recent[r]], \
        "the page's own polling is hidden by default"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS"):
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
