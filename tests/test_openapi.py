"""The OpenAPI merge (docs/extras.md, The merged document), pure: hypothesis documents with
awkward names, merged without a socket. Served over loopback: tests/integration/test_extras.py.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import from_env
from gateway.openapi import merge
from tests.integration.test_extras import check_document

names = st.text(alphabet="abcAB_.-~/0", min_size=1, max_size=6)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """An OpenAPI document whose schemas refer to each other under awkward names."""
    keys = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    def ref(k: str) -> dict[str, str]:
        return {"$ref": "#/components/schemas/" + k.replace("~", "~0").replace("/", "~1")}

    schemas = {k: {"type": "object", "properties": {"to": ref(draw(st.sampled_from(keys))), k: {"type": "string"}}}
               for k in keys}
    paths = {f"/api/{i}": {"get": {"operationId": draw(st.sampled_from(["op", "op_2", "x"])), "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": ref(draw(st.sampled_from(keys)))}}}}}}
        for i in range(draw(st.integers(0, 3)))}
    return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths,
            "components": {"schemas": schemas}}


@settings(max_examples=150, deadline=None)
@given(a=documents(), b=documents(), c=documents())
def test_merge_never_collides_and_every_reference_resolves(a, b, c):
    """Extras: component names are namespaced per service so two services never collide (whatever the
    names: `a` + `b_X` vs `a_b` + `X`), operation ids stay unique, and every `$ref` resolves."""
    routes = from_env({"GATEWAY_SERVICES": "a,a_b,ab"}).routes
    doc = merge(list(zip(routes, (a, b, c), strict=True)), lambda route, path: True)
    check_document(doc, with_refs=False)
    merged = doc["components"]["schemas"]
    assert len(merged) == sum(len(d["components"]["schemas"]) for d in (a, b, c))
    for route, original in zip(routes, (a, b, c), strict=True):
        for key, _schema in original["components"]["schemas"].items():
            assert key in merged[f"{route.name}.{key}"]["properties"], "each schema kept under its service"
        assert {f"/api/{route.name}/{p[5:]}" for p in original["paths"]} <= set(doc["paths"])
