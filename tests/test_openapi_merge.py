"""The OpenAPI merge is pure: no I/O, no asyncio (the fetching and caching live in ``gateway.openapi``)."""

from __future__ import annotations

import subprocess
import sys

from gateway.config import from_env
from gateway.openapi_merge import FetchError, merge


def test_the_merge_module_imports_no_io() -> None:
    code = "import sys, gateway.openapi_merge; print(sorted({'asyncio', 'socket', 'h11'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_merge_namespaces_a_service_and_lists_one_that_is_down() -> None:
    a, b = from_env({"GATEWAY_SERVICES": "a,b", "A_URL": "http://127.0.0.1:1", "B_URL": "http://127.0.0.1:2"}).routes
    doc = {
        "openapi": "3.0.3",
        "paths": {"/api/items": {"get": {"operationId": "list", "responses": {"200": {
            "description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}}}},
        "components": {"schemas": {"Item": {"type": "object"}}},
    }
    merged = merge([(a, doc), (b, FetchError("connection refused"))], lambda route, path: True)
    op = merged["paths"]["/api/a/items"]["get"]
    assert op["operationId"] == "a.list"
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/a.Item"
    assert merged["components"]["schemas"] == {"a.Item": {"type": "object"}}
    assert merged["info"]["x-gateway-services"] == {
        "a": {"available": True, "error": None},
        "b": {"available": False, "error": "connection refused"},
    }
